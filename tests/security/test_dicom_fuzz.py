"""The DICOM parser under fuzzing, short and reproducible (``make fuzz`` runs the long
version): mutated real files and DICOMDIRs never make ingest or import raise, and
leave no scratch file, orphan blob or file outside the store behind."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fuzz_dicom import Choices, Harness, mutate

EXAMPLES = 150


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    built = Harness.build(tmp_path_factory.mktemp("fuzz"))
    yield built
    built.close()


def _choices(data) -> Choices:
    return Choices(lambda n: data.draw(st.integers(0, n - 1)) if n > 1 else 0)


@seed(20261123)
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_mutated_files_are_answered_never_raised(harness, data):
    choose = _choices(data)
    harness.one(mutate(choose.pick(harness.seeds), harness.seeds, choose))


@seed(20261123)
@settings(max_examples=EXAMPLES // 5, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_mutated_dicomdirs_are_answered_never_raised(harness, data):
    choose = _choices(data)
    harness.one(mutate((harness.disc / "DICOMDIR").read_bytes(), harness.seeds, choose), as_dicomdir=True)


def test_the_runs_met_every_kind_of_answer_and_left_nothing_behind(harness):
    """Runs after the two above (file order): a fuzz run that only ever met one outcome would
    prove little, so the mutations must have produced refusals of several kinds and stored files."""
    assert harness.executions >= EXAMPLES
    refusals = {outcome for outcome in harness.outcomes if outcome.startswith("refused:")}
    assert len(refusals) >= 3, harness.outcomes
    assert harness.outcomes.get("stored", 0) + harness.outcomes.get("duplicate", 0) > 0, harness.outcomes
    harness.check_nothing_left_behind()
