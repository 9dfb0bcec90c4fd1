"""Export of one CT study: Filmless ZIP (deflate levels 0, 1 and 6) and ISO against
Orthanc's ``GET /studies/{id}/archive``, with ``cp -r`` of the same blob files as the
physical limit. Prints the study's MB/s through each, the archive sizes, and the ratios
ZIP/Orthanc (target ≥ 5×) and ISO/cp (target ≥ 0.4) against their targets; asserts nothing.

    .venv/bin/python benchmarks/export_vs_orthanc.py [--instances 500] [--size 512] [--rounds 3]

The study is CT-like: a body-shaped section (fat, soft tissue, lungs, spine, table)
with scanner-like noise inside the scan circle and padding outside it, so that the
deflate figures are what real pixel data would give (all-zero pixels would flatter
them). Both stores get it through their real ingest. Filmless exports run as the
worker runs them (``exports.service.run`` of a real ``Export`` row, progress writes,
DICOMDIR, the final fsync and rename); Orthanc's archive is streamed to a file as a
browser would save it.

Every file either side holds is read once before the rounds, so every contender meets a
warm page cache; before each timed pass the script flushes the page cache's dirty pages
(``sync``, untimed), so no pass pays for the previous one's writes. The contenders take
turns within each round and the median of the rounds is reported, with the CPU time
(user + system) the work took in this process, ``cp`` and Orthanc: on a shared machine
wall times stretch with the load, CPU times much less.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import (Filmless, Orthanc, cached_data, ingest_directly, machine, post_to_orthanc,  # noqa: E402
                    table, total_size, verdict, workspace)

ZIP_TARGET, ISO_TARGET = 5.0, 0.4
ZIP_LEVELS = (0, 1, 6)
READ_CHUNK = 1 << 20


# -- the study ------------------------------------------------------------------------------------

def body_section(size: int, index: int, rng: np.random.Generator) -> np.ndarray:
    """One axial CT slice in stored values (HU + 1024, 12 bits): a body that changes a
    little from slice to slice, Gaussian noise of σ 12 HU everywhere inside the scan
    circle, and the scanner's padding (0) outside it."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    wobble = 0.02 * np.sin(index / 40)
    hu = np.full((size, size), -1000.0)  # air in the field of view
    body = ((x / (0.40 + wobble)) ** 2 + ((y - 0.02) / (0.28 + wobble)) ** 2) <= 1
    hu[body] = -100.0  # subcutaneous fat
    hu[((x / (0.37 + wobble)) ** 2 + ((y - 0.02) / (0.25 + wobble)) ** 2) <= 1] = 40.0  # soft tissue
    for side in (-1, 1):
        hu[(((x - side * 0.16) / 0.12) ** 2 + ((y + 0.01) / (0.16 + wobble)) ** 2) <= 1] = -850.0  # lungs
    spine = np.hypot(x, y - 0.18)
    hu[spine <= 0.045] = 700.0
    hu[spine <= 0.03] = 250.0  # marrow inside the cortex
    hu[(np.abs(y - 0.36) <= 0.012) & (np.abs(x) <= 0.45)] = 300.0  # the table
    hu += rng.normal(0.0, 12.0, hu.shape)
    stored = np.clip(hu + 1024.0, 0, 4095)
    stored[np.hypot(x, y) > 0.5] = 0  # outside the reconstructed circle
    return stored.astype(np.uint16)


def body_ct_study(count: int, size: int, series: int = 5) -> list[Path]:
    from core.studies import synthetic

    def make(folder: Path) -> None:
        rng = np.random.default_rng(6)
        spec = synthetic.StudySpec(patient_id="BENCH-EXPORT", family_name="Bench", given_name="Export",
                                   accession_number="BENCH-EXPORT-1", description="CT CHEST ABDOMEN",
                                   series=series, instances=count // series, rows=size, columns=size)
        datasets = synthetic.study(spec)
        for number, dataset in enumerate(datasets):
            dataset.PixelData = body_section(size, number % spec.instances, rng).tobytes()
        synthetic.write(datasets, folder)

    return sorted(cached_data(f"ct-body-{count}x{size}", make).glob("*.dcm"))


# -- measuring ------------------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    run: Callable[[], tuple[int, float, float | None]]  # bytes written, seconds, then seconds of an fsync/sync
    seconds: list[float] = field(default_factory=list)
    sync_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    size: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def durable_median(self) -> float | None:
        return statistics.median(s + f for s, f in zip(self.seconds, self.sync_seconds)) \
            if self.sync_seconds else None


def read_all(paths) -> int:
    """Read every file once (puts it in the page cache); the bytes read."""
    read = 0
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                read += len(chunk)
    return read


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process, its finished children (``cp``) and ``pids``
    (Orthanc): less sensitive than wall time to what else the machine runs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def fsync_seconds(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return time.perf_counter() - started


class FilmlessExports:
    """Exports of the study through ``exports.service``, as the worker runs them."""

    def __init__(self, runtime):
        from sqlalchemy import select

        from core.access import Principal
        from core.studies.models import Study

        self.runtime = runtime
        self.staff = Principal(kind="account", id="1", roles=frozenset({"staff"}))
        with runtime.sessions() as session:
            self.study_uids = list(session.scalars(select(Study.study_uid)))

    def run(self, format_name: str, *, zip_level: int = 0) -> Path:
        """The export's file, ready (the caller deletes it)."""
        from core.studies.exports import service
        from core.studies.exports.models import Export

        self.runtime.site.config.exports.zip_level = zip_level
        with self.runtime.sessions() as session:
            export, _ = service.ask(session, self.runtime, self.staff, format_name=format_name,
                                    study_uids=self.study_uids, language="en", acknowledged=True)
            session.commit()
            export_id = export.id
        status = service.run(self.runtime, export_id)
        with self.runtime.sessions() as session:
            export = session.get(Export, export_id)
            if status != "ready":
                raise RuntimeError(f"{format_name} export {status}: {export.error}")
            return service.file_of(self.runtime, export)

    def steps(self) -> list[list]:
        """The steps before any file is copied, each timed alone: the rows, the layout
        (pydicom FileSet records from the stored headers) and the DICOMDIR."""
        from sqlalchemy import select

        from core.studies.exports import layout, service
        from core.studies.exports.job import collection_paused
        from core.studies.models import Study

        timings = []
        with self.runtime.sessions() as session, collection_paused():  # as in a job
            refs = list(session.scalars(select(Study.id)))
            started = time.perf_counter()
            found = service.rows(session, refs, {})
            timings.append(["rows (one query)", time.perf_counter() - started])
            started = time.perf_counter()
            exists = all(self.runtime.blobs.exists(instance.blob_key) for instance, *_ in found)
            timings.append(["every blob exists", time.perf_counter() - started])
            started = time.perf_counter()
            _, file_set = layout.lay_out(found)
            timings.append(["lay_out (directory records per instance)", time.perf_counter() - started])
            target = service.folder(self.runtime) / "DICOMDIR.bench"
            started = time.perf_counter()
            layout.write_dicomdir(file_set, target)
            timings.append(["write_dicomdir", time.perf_counter() - started])
            timings.append([f"(DICOMDIR {target.stat().st_size // 1024} KB, all blobs there: {exists})", 0.0])
            target.unlink()
        return timings


def filmless_export(exports: FilmlessExports, format_name: str, zip_level: int = 0) -> tuple[int, float, None]:
    started = time.perf_counter()
    path = exports.run(format_name, zip_level=zip_level)
    seconds = time.perf_counter() - started  # the job fsyncs its file itself; deleting it is not timed
    size = path.stat().st_size
    path.unlink()
    return size, seconds, None


def orthanc_download(orthanc: Orthanc, path: str, target: Path) -> tuple[int, float, float]:
    """Stream ``path`` to ``target``; the bytes saved, the seconds, and those an fsync then takes."""
    started = time.perf_counter()
    with orthanc.client() as client, client.stream("GET", path) as answer:
        answer.raise_for_status()
        with open(target, "wb") as out:
            for chunk in answer.iter_raw(READ_CHUNK):
                out.write(chunk)
    seconds = time.perf_counter() - started
    return target.stat().st_size, seconds, fsync_seconds(target)


def copy_tree(source: Path, target: Path) -> tuple[int, float, float]:
    """``cp -r`` of the blob folder; the bytes copied, the seconds, and those a ``sync`` then takes."""
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(["sync"], check=True)
    synced = time.perf_counter() - started
    return sum(path.stat().st_size for path in target.rglob("*") if path.is_file()), seconds, synced


def measure(contenders: list[Contender], rounds: int, scratch: Path, pids: list[int]) -> None:
    for number in range(rounds):
        for contender in contenders:
            os.sync()  # every pass starts with no dirty pages of the one before
            cpu_before = cpu_seconds(pids)
            size, seconds, durable = contender.run()
            contender.cpu_seconds.append(cpu_seconds(pids) - cpu_before)
            contender.seconds.append(seconds)
            if durable is not None:
                contender.sync_seconds.append(durable)
            contender.size = size
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            print(f"  round {number + 1}: {contender.name} {contender.seconds[-1]:.2f} s", flush=True)


def profile(exports: FilmlessExports, format_name: str, zip_level: int, lines: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    path = exports.run(format_name, zip_level=zip_level)
    profiler.disable()
    path.unlink()
    print(f"\ncProfile of one {format_name} export (zip_level {zip_level}), by own time:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


def disk_of(path: Path) -> str:
    found = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)], capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--size", type=int, default=512, help="rows and columns (16-bit pixels)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes of every contender (median reported)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile of one ZIP and one ISO export")
    args = parser.parse_args()

    paths = body_ct_study(args.instances, args.size)
    size = total_size(paths)
    mb = size / 2**20
    print(machine())
    print(f"{len(paths)} CT instances {args.size}×{args.size}×16-bit, {mb:.0f} MB; ", end="")

    with workspace("export") as root:
        print(f"disk {disk_of(root)}", flush=True)
        scratch = root / "scratch"
        scratch.mkdir()
        server = Filmless(root / "filmless", exports={"path": str(root / "filmless" / "exports")})
        with server.runtime() as runtime, Orthanc(root / "orthanc", dicomweb=False) as orthanc:
            started = time.perf_counter()
            stored = ingest_directly(runtime, paths)
            print(f"  Filmless ingest: {stored} instances in {time.perf_counter() - started:.0f} s", flush=True)
            started = time.perf_counter()
            post_to_orthanc(orthanc, paths)
            with orthanc.client() as client:
                (study_id,) = client.get("/studies").json()
                held = client.get("/statistics").json()["CountInstances"]
            print(f"  Orthanc ingest: {held} instances in {time.perf_counter() - started:.0f} s", flush=True)

            blobs = Path(runtime.blobs.local_path("dicom"))
            warm = read_all(p for p in blobs.rglob("*") if p.is_file())
            warm += read_all(p for p in (root / "orthanc" / "storage").rglob("*") if p.is_file())
            print(f"  read {warm / 2**20:.0f} MB once (both stores) to warm the page cache", flush=True)

            exports = FilmlessExports(runtime)
            exports.run("zip").unlink()  # loads code and templates: not measured
            contenders = [Contender(f"Filmless ZIP, zip_level {level}",
                                    lambda level=level: filmless_export(exports, "zip", level))
                          for level in ZIP_LEVELS]
            contenders += [
                Contender("Orthanc GET /studies/{id}/archive",
                          lambda: orthanc_download(orthanc, f"/studies/{study_id}/archive", scratch / "a.zip")),
                Contender("Orthanc GET /studies/{id}/media (DICOMDIR)",
                          lambda: orthanc_download(orthanc, f"/studies/{study_id}/media", scratch / "m.zip")),
                Contender("Filmless ISO", lambda: filmless_export(exports, "iso")),
                Contender("cp -r of the blob files", lambda: copy_tree(blobs, scratch / "copy")),
            ]
            measure(contenders, args.rounds, scratch, [orthanc.process.pid])
            steps = exports.steps()
            if args.profile:
                profile(exports, "zip", 0, 25)
                profile(exports, "iso", 0, 25)

    rows = []
    for contender in contenders:
        durable = contender.durable_median
        rows.append([contender.name, contender.median, mb / contender.median,
                     f"{durable:.2f}" if durable is not None else "(included)",
                     f"{mb / durable:.1f}" if durable is not None else "",
                     statistics.median(contender.cpu_seconds),
                     f"{contender.size / 2**20:.1f}", f"{contender.size / size:.3f}"])
    table(f"Export of {mb:.0f} MB of DICOM, median of {args.rounds} rounds (warm page cache)",
          ["contender", "s", "MB/s", "s + fsync", "MB/s durable", "CPU s", "output MB", "output/study"], rows)
    table("Filmless steps before the files are copied", ["step", "s"], steps)

    by_name = {contender.name: contender for contender in contenders}
    ratios = []

    def ratio(label: str, ours: Contender, theirs: Contender, target: float) -> None:
        as_measured, alike = theirs.median / ours.median, theirs.durable_median / ours.median
        cpu = statistics.median(theirs.cpu_seconds) / statistics.median(ours.cpu_seconds)
        ratios.append([label, as_measured, verdict(as_measured, target), alike, verdict(alike, target), cpu])

    for level in ZIP_LEVELS:
        ratio(f"ZIP level {level} / Orthanc archive", by_name[f"Filmless ZIP, zip_level {level}"],
              by_name["Orthanc GET /studies/{id}/archive"], ZIP_TARGET)
    ratio("ISO / cp -r", by_name["Filmless ISO"], by_name["cp -r of the blob files"], ISO_TARGET)
    table("Ratios of throughput (Filmless's time includes the fsync of its file; 'like for like' adds an "
          "fsync of the archive, or a sync after cp, to the other side)",
          ["comparison", "as measured", "", "like for like", "", "CPU time"], ratios)


if __name__ == "__main__":
    main()
