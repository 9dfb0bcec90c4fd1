"""QIDO-RS by PatientID in a store of 10,000 studies: Filmless against Orthanc, the same
tiny studies (one 8×8 instance each, spread over 2,000 patients) in both stores. Prints
p50/p95 of the query and the ratio Orthanc/Filmless against the target (≥ 1: no
slower); asserts nothing.

    .venv/bin/python benchmarks/qido_vs_orthanc.py [--studies 10000] [--patients 2000] [--queries 300]

Filmless is filled through ``studies.service.ingest`` in a child process (no HTTP: the
fill is not what is measured) while Orthanc is filled through ``POST /instances``.
Orthanc answers through ``POST /tools/find`` (``Expand``: studies with their tags, as
QIDO returns) and, when its DICOMweb plugin is installed, ``GET /dicom-web/studies``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (DICOMWEB_PLUGIN, Filmless, Orthanc, Samples, cached_data, dicom_bytes,  # noqa: E402
                    ingest_directly, machine, open_runtime, post_to_orthanc, route_exists, table, timed, verdict,
                    workspace)

DICOM_JSON = {"Accept": "application/dicom+json"}


def tiny_studies(count: int = 10_000, patients: int = 2_000) -> list[Path]:
    """``count`` one-instance 8×8 studies spread evenly over ``patients`` patients (BENCH-00000…).

    pydicom takes ~3 ms to write even a tiny file, so one synthetic file is written with
    placeholder values of fixed length and each study is that file with its own UIDs, patient
    and accession number put in place of them (the lengths, and so the file, stay valid)."""
    from core.studies import synthetic

    token = random.randint(10**8, 10**9 - 1)  # new UIDs each time the data is made

    def uid(kind: int, index: int) -> str:
        return f"1.2.826.0.1.3680043.8.498.{token}.{kind}.{100_000 + index}"

    def make(folder: Path) -> None:
        (ds,) = synthetic.study(synthetic.StudySpec(instances=1, rows=8, columns=8, modality="CR",
                                                    description="CR CHEST", body_part="CHEST"))
        last = 899_999
        ds.PatientID, ds.PatientName = patient_id(99_999), "Bench99999^Tiny"
        ds.AccessionNumber = f"BT{last:06d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(1, last), uid(2, last)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(3, last)
        template = dicom_bytes(ds)
        for index in range(count):
            number = index % patients
            data = template
            for old, new in ((patient_id(99_999), patient_id(number)), ("Bench99999", f"Bench{number:05d}"),
                             (f"BT{last:06d}", f"BT{index:06d}"), *((uid(kind, last), uid(kind, index))
                                                                      for kind in (1, 2, 3))):
                data = data.replace(old.encode(), new.encode())
            (folder / f"{index:06d}.dcm").write_bytes(data)

    return sorted(cached_data(f"tiny-{count}-{patients}", make).glob("*.dcm"))


def patient_id(number: int) -> str:
    return f"BENCH-{number:05d}"


@contextmanager
def set_up_quickly(runtime):
    """For filling a store that is then measured (never while measuring): no fsync of blobs and
    SQLite commits without waiting for the disk. What is stored is the same; only a power cut
    during the set-up could lose it."""
    from sqlalchemy import event

    def unsynchronised(connection, _record):
        connection.execute("PRAGMA synchronous=OFF")

    real_fsync = os.fsync
    os.fsync = lambda descriptor: None
    sqlite = runtime.engine.dialect.name == "sqlite"
    if sqlite:
        event.listen(runtime.engine, "connect", unsynchronised)
        runtime.engine.dispose()  # pooled connections were opened without it
    try:
        yield runtime
    finally:
        os.fsync = real_fsync
        if sqlite:
            event.remove(runtime.engine, "connect", unsynchronised)
            runtime.engine.dispose()


def fill_filmless(site_file: Path, paths: list[Path]) -> None:
    with open_runtime(site_file) as runtime, set_up_quickly(runtime):
        ingest_directly(runtime, paths)


def measure(ways: list[tuple[str, object]], patients: list[str], expected: int,
            warm_up: int = 20) -> list[tuple[str, Samples, int]]:
    """Ask every way about each patient in turn, so that whatever else the machine is doing
    weighs on all of them alike."""
    for patient in patients[:warm_up]:
        for _name, query in ways:
            query(patient)
    samples = {name: Samples() for name, _query in ways}
    right = dict.fromkeys(samples, 0)
    for patient in patients:
        for name, query in ways:
            answer = timed(lambda: query(patient), samples[name])
            right[name] += len(answer.json()) == expected
    return [(name, samples[name], right[name]) for name, _query in ways]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    per_patient = args.studies // args.patients

    paths = tiny_studies(args.studies, args.patients)
    print(machine())
    print(f"{len(paths)} studies of one 8×8 instance over {args.patients} patients ({per_patient} each); "
          f"{args.queries} queries by PatientID, patients drawn at random, the servers asked in turn")

    filmless_ready = route_exists("/dicomweb/studies")
    if not filmless_ready:
        print("Filmless has no GET /dicomweb/studies yet (core/studies/dicomweb.py): only Orthanc is measured")
    patients = [patient_id(number) for number in random.Random(7).choices(range(args.patients), k=args.queries)]

    with workspace("qido") as root:
        filmless = Filmless(root / "filmless")
        started = time.perf_counter()
        # One child process: a second would mostly wait for SQLite's one writer.
        filler = multiprocessing.get_context("fork").Process(target=fill_filmless, args=(filmless.site_file, paths))
        filler.start()
        with Orthanc(root / "orthanc") as orthanc:
            orthanc_fill = post_to_orthanc(orthanc, paths, clients=2)
            print(f"  Orthanc filled in {orthanc_fill:.0f} s (POST /instances, 2 clients)", flush=True)
            filler.join()
            print(f"  Filmless filled in {time.perf_counter() - started:.0f} s (studies.service.ingest, no "
                  f"fsync, while Orthanc was filled)", flush=True)
            if filler.exitcode:
                raise RuntimeError("filling Filmless failed (see above)")
            with ExitStack() as stack:
                client = stack.enter_context(orthanc.lean_client())
                ways = [("Orthanc POST /tools/find (Expand)", lambda patient: client.post(
                    "/tools/find", json={"Level": "Study", "Query": {"PatientID": patient}, "Expand": True}))]
                if DICOMWEB_PLUGIN.exists():
                    ways.append(("Orthanc GET /dicom-web/studies", lambda patient: client.get(
                        "/dicom-web/studies", params={"PatientID": patient}, headers=DICOM_JSON)))
                if filmless_ready:
                    stack.enter_context(filmless)
                    ours = stack.enter_context(filmless.lean_client())
                    ways.append(("Filmless GET /dicomweb/studies", lambda patient: ours.get(
                        "/dicomweb/studies", params={"PatientID": patient}, headers=DICOM_JSON)))
                results = measure(ways, patients, per_patient)

    table(f"QIDO by PatientID, {len(paths)} studies in the store, {args.queries} sequential queries (loopback)",
          ["query", "p50 ms", "p95 ms", "queries/s", f"answers with {per_patient} studies"],
          [[name, s.p50_ms, s.p95_ms, len(s) / sum(s.values), f"{right}/{len(s)}"] for name, s, right in results])
    if not filmless_ready:
        print("\nratio Orthanc/Filmless: not measured (no Filmless QIDO-RS endpoint yet)")
        return
    ours = results[-1][1]
    table("Ratio Orthanc latency / Filmless latency (≥ 1: Filmless no slower)",
          ["against", "p50 ratio", "p95 ratio", ""],
          [[name, s.p50_ms / ours.p50_ms, s.p95_ms / ours.p95_ms,
            verdict(min(s.p50_ms / ours.p50_ms, s.p95_ms / ours.p95_ms), 1.0)]
           for name, s, _ in results[:-1]])


if __name__ == "__main__":
    main()
