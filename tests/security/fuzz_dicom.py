"""Fuzzing the DICOM parser: ``studies.service.ingest`` and DICOMDIR import.

Every input is a mutation of a real file (written by pydicom: images of several
kinds, structured and PDF reports, a DICOMDIR). The harness checks after each
input that ingest answered instead of raising, and now and then that nothing was
left behind: no scratch file, no blob without its row, no file written outside
the store's folder.

Two drivers share it:

- ``make test`` runs a short, reproducible Hypothesis run (tests/security/test_dicom_fuzz.py);
- ``make fuzz`` runs this file: coverage-guided with atheris when it is installed
  (the ``fuzz`` extra), else a random-mutation loop, for ``--executions`` inputs,
  and prints how many ran.
"""
from __future__ import annotations

import argparse
import io
import random
import re
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT, ROOT / "tests", ROOT / "tests" / "plugins"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))



def _load() -> None:
    """Import the code under test (late, so that ``make fuzz`` can instrument it as it loads)."""
    global select, importer, service, synthetic, Instance, Report
    from sqlalchemy import select
    from core.studies import importer, service, synthetic
    from core.studies.models import Instance, Report


def _load_instrumented() -> None:
    import atheris

    # the parser only: instrumenting every module slows each run tenfold
    with atheris.instrument_imports(include=["pydicom.filereader", "pydicom.dataelem", "pydicom.values",
                                             "pydicom.fileset", "core.studies.dicom", "core.studies.header_scan",
                                             "core.studies.importer"]):
        _load()

DICOMDIR_SHARE = 20  # one input in this many is a DICOMDIR (the slower path: a whole import)
INTERESTING_LENGTHS = (0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)


# -- the seeds ------------------------------------------------------------------------------------

def seed_datasets() -> list:
    """Real files of the kinds a portal receives, small so that mutations reach every part."""
    spec = synthetic.StudySpec(patient_id="FUZZ-1", instances=1, rows=16, columns=16, study_date=date(2026, 1, 2))
    seeds = [synthetic.study(spec)[0],
             synthetic.study(synthetic.StudySpec(patient_id="FUZZ-2", modality="MR", frames=3, rows=8,
                                                 columns=8, instances=1))[0],
             synthetic.study(synthetic.StudySpec(patient_id="FUZZ-3", modality="US", photometric="RGB",
                                                 rows=8, columns=8, instances=1))[0],
             synthetic.study(synthetic.StudySpec(patient_id="FUZZ-4", jpeg=True, rows=16, columns=16,
                                                 instances=1))[0],
             synthetic.study(synthetic.StudySpec(patient_id="FUZZ-5", photometric="MONOCHROME1", rows=8,
                                                 columns=8, instances=1))[0],
             synthetic.text_report(spec, "Findings: none. Impression: normal."),
             synthetic.pdf_report(spec, synthetic.minimal_pdf("report"))]
    return seeds


def write_seeds(folder: Path) -> tuple[list[bytes], Path]:
    """The seed files' bytes, and a disc folder (DICOMDIR plus its files) for the DICOMDIR target."""
    from pydicom.fileset import FileSet

    files = synthetic.write(seed_datasets(), folder / "files")
    disc = folder / "disc"
    fileset = FileSet()
    for path in files[:3]:
        fileset.add(str(path))
    fileset.write(str(disc))
    return [path.read_bytes() for path in files], disc


# -- mutations ---------------------------------------------------------------------------------------

class Choices:
    """Where a mutation's random numbers come from: ``random.Random`` or a Hypothesis draw."""

    def __init__(self, below):
        self.below = below  # below(n) -> an int in [0, n)

    def pick(self, items):
        return items[self.below(len(items))]


ELEMENT_HEADER = re.compile(rb"[A-Z]{2}")


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of places that look like explicit-VR element headers: two capital letters after a tag."""
    return [match.start() - 4 for _, match in zip(range(400), ELEMENT_HEADER.finditer(data, 136))]


def mutate(data: bytes, seeds: list[bytes], choose: Choices, rounds: int | None = None) -> bytes:
    """A few random damages of the kinds hostile or broken senders produce."""
    out = bytearray(data)
    for _ in range(rounds if rounds is not None else 1 + choose.below(4)):
        if not out:
            out = bytearray(choose.pick(seeds))
        kind = choose.below(9)
        at = choose.below(len(out))
        if kind == 0:  # flip bits
            out[at] ^= 1 << choose.below(8)
        elif kind == 1:  # a length field set to an extreme value
            offsets = _element_offsets(bytes(out)) or [at]
            where = choose.pick(offsets)
            value = choose.pick(INTERESTING_LENGTHS)
            vr = bytes(out[where + 4:where + 6])
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
                out[where + 8:where + 12] = struct.pack("<I", value)
            else:
                out[where + 6:where + 8] = struct.pack("<H", value & 0xFFFF)
        elif kind == 2:  # cut short
            del out[at:]
        elif kind == 3:  # insert bytes
            out[at:at] = bytes(choose.below(256) for _ in range(1 + choose.below(16)))
        elif kind == 4:  # delete a run
            del out[at:at + 1 + choose.below(64)]
        elif kind == 5:  # a VR replaced by another
            offsets = _element_offsets(bytes(out)) or [at]
            where = choose.pick(offsets)
            out[where + 4:where + 6] = choose.pick([b"SQ", b"OB", b"UN", b"US", b"UL", b"PN", b"DA", b"XX"])
        elif kind == 6:  # a block of another seed spliced in
            other = choose.pick(seeds)
            start = choose.below(len(other))
            out[at:at] = other[start:start + 1 + choose.below(512)]
        elif kind == 7:  # a region zeroed
            out[at:at + 1 + choose.below(128)] = bytes(len(out[at:at + 1 + choose.below(128)]))
        else:  # a tag's group or element changed (sequence delimiters, private tags, file meta)
            offsets = _element_offsets(bytes(out)) or [at]
            where = choose.pick(offsets)
            out[where:where + 4] = choose.pick([b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\x02\x00\x10\x00",
                                                b"\x09\x00\x10\x00", b"\xe0\x7f\x10\x00", b"\x08\x00\x05\x00"])
    return bytes(out)


# -- the harness ------------------------------------------------------------------------------------

class Crash(AssertionError):
    """Ingest or import raised, or left something behind."""


@dataclass
class Harness:
    runtime: object = field(repr=False)
    workdir: Path
    disc: Path
    executions: int = 0
    outcomes: dict = field(default_factory=dict)

    @classmethod
    def build(cls, workdir: Path, database: str | None = None) -> "Harness":
        if "service" not in globals():
            _load()
        from support import make_site

        from core import db
        from core.app import build_runtime

        site = make_site(workdir / "site", database=database or f"sqlite:///{workdir / 'portal.db'}",
                         studies={"max_file_mb": 2})
        runtime = build_runtime(site)
        db.upgrade(runtime.engine, runtime.pm)
        seeds, disc = write_seeds(workdir / "seeds")
        harness = cls(runtime=runtime, workdir=workdir, disc=disc)
        harness.seeds = seeds
        harness.outside = harness._outside_listing()
        return harness

    def _outside_listing(self) -> set[str]:
        """Every file under the work folder that is not the store's, the database's or the inputs'."""
        skip = {self.workdir / "site", self.workdir / "inputs", self.workdir / "corpus"}
        return {str(path) for path in self.workdir.rglob("*")
                if not any(parent in skip for parent in (path, *path.parents)) and not path.name.startswith("portal.db")}

    def one(self, data: bytes, *, as_dicomdir: bool = False) -> str:
        """Feed one input; returns the outcome, raises ``Crash`` on a defect."""
        self.executions += 1
        inputs = self.workdir / "inputs"
        if as_dicomdir:
            disc = inputs / "disc"
            if disc.exists():
                shutil.rmtree(disc)
            shutil.copytree(self.disc, disc)
            (disc / "DICOMDIR").write_bytes(data)
            try:
                summary = importer.run(self.runtime, [disc / "DICOMDIR"], actor="fuzz", stream=io.StringIO())
            except Exception as exc:  # noqa: BLE001  (any exception is the defect being looked for)
                raise Crash(f"DICOMDIR import raised {exc!r}") from exc
            outcome = "dicomdir:refused" if summary.refused else "dicomdir:read"
        else:
            inputs.mkdir(parents=True, exist_ok=True)
            path = inputs / "input.dcm"
            path.write_bytes(data)
            with self.runtime.sessions() as session:
                try:
                    result = service.ingest(session, path, runtime=self.runtime, actor="fuzz", source="fuzz")
                except Exception as exc:  # noqa: BLE001
                    raise Crash(f"ingest raised {exc!r}") from exc
            if result.outcome not in ("stored", "duplicate", "refused"):
                raise Crash(f"ingest answered {result.outcome!r}")
            if result.outcome == "refused" and not (result.reason or "").strip():
                raise Crash("a refusal without a reason")
            outcome = result.outcome if result.outcome != "refused" else f"refused:{result.kind}"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome

    def check_nothing_left_behind(self) -> None:
        """No scratch file, no claim, no blob without its row, no file outside the store."""
        store = self.runtime.blobs
        leftovers = [p.name for p in store.scratch.glob("*")] if store.scratch.is_dir() else []
        if leftovers:
            raise Crash(f"scratch files left behind: {leftovers[:5]}")
        with self.runtime.sessions() as session:
            held = set(session.scalars(select(Instance.blob_key))) | set(
                session.scalars(select(Report.pdf_blob_key).where(Report.pdf_blob_key.is_not(None))))
        orphans = set(store.keys()) - held
        if orphans:
            raise Crash(f"blobs without rows: {sorted(orphans)[:5]}")
        written = self._outside_listing() - self.outside
        if written:
            raise Crash(f"files written outside the store: {sorted(written)[:5]}")

    def close(self) -> None:
        self.runtime.close()


# -- make fuzz --------------------------------------------------------------------------------------

def _random_loop(harness: Harness, executions: int, seed: int) -> None:
    rng = random.Random(seed)
    choose = Choices(lambda n: rng.randrange(n) if n > 0 else 0)
    disc_bytes = (harness.disc / "DICOMDIR").read_bytes()
    for count in range(executions):
        if count % DICOMDIR_SHARE == 0:
            harness.one(mutate(disc_bytes, harness.seeds, choose), as_dicomdir=True)
        else:
            harness.one(mutate(choose.pick(harness.seeds), harness.seeds, choose))
        if count % 10_000 == 0:
            harness.check_nothing_left_behind()
            print(f"{count:>9} executions {dict(sorted(harness.outcomes.items()))}", flush=True)


def _atheris_loop(harness: Harness, executions: int, corpus: Path, started: float) -> None:
    import atheris

    corpus.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(harness.seeds):
        (corpus / f"seed-{index}.dcm").write_bytes(data)
    disc_bytes = (harness.disc / "DICOMDIR").read_bytes()
    (corpus / "seed-dicomdir").write_bytes(b"D" + disc_bytes)

    def test_one_input(data: bytes) -> None:
        # the first byte picks the target, so the fuzzer learns both
        if data[:1] == b"D":
            harness.one(data[1:], as_dicomdir=True)
        else:
            harness.one(data)
        if harness.executions % 10_000 == 0:
            harness.check_nothing_left_behind()
        if harness.executions == executions:  # libFuzzer's exit after its last run skips atexit
            _report(harness, started)

    atheris.Setup([sys.argv[0], f"-runs={executions}", "-max_len=65536", "-print_final_stats=1", str(corpus)],
                  test_one_input)
    atheris.Fuzz()


def _report(harness: Harness, started: float) -> None:
    harness.check_nothing_left_behind()
    seconds = time.monotonic() - started
    print(f"executions: {harness.executions} in {seconds:.0f} s ({harness.executions / max(seconds, 1e-9):.0f}/s); "
          f"outcomes: {dict(sorted(harness.outcomes.items()))}; nothing left behind", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-atheris", action="store_true", help="use the random-mutation loop")
    args = parser.parse_args(argv)
    use_atheris = not args.no_atheris
    try:
        _load_instrumented() if use_atheris else _load()  # coverage of pydicom and our reader guides atheris
    except ImportError:
        use_atheris = False
        _load()
    started = time.monotonic()
    memory = Path("/dev/shm")  # a million small files: in memory where the system offers it
    with tempfile.TemporaryDirectory(prefix="filmless-fuzz-", dir=memory if memory.is_dir() else None) as folder:
        harness = Harness.build(Path(folder))
        try:
            print(f"fuzzing ingest and DICOMDIR import with {'atheris' if use_atheris else 'random mutations'}",
                  flush=True)
            if use_atheris:
                _atheris_loop(harness, args.executions, Path(folder) / "corpus", started)
            else:
                _random_loop(harness, args.executions, args.seed)
                _report(harness, started)
        finally:
            harness.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
