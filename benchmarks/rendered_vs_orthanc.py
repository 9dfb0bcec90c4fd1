"""A rendered 512×512 CT frame: Filmless WADO-RS ``/rendered`` against Orthanc's
``/instances/{id}/rendered`` (and its DICOMweb ``/rendered`` when the plugin is there),
the same instances in every store. Prints p50/p95 of the first request for each
instance and of repeated requests (each already rendered once), the ratio
Orthanc/Filmless against the target (≥ 1: no slower) and the repeated p50/p95
against 2 ms; asserts nothing. Filmless is measured twice: a store whose pictures
nothing rendered before, and one whose worker (``filmless worker``, run after the
ingest until its queue is empty) made each new image's default picture ahead, as it
does after every ingest.

    .venv/bin/python benchmarks/rendered_vs_orthanc.py [--instances 100] [--repeats 300] [--format jpeg]

Each way is asked through one keep-alive connection of the standard library's ``http.client``
(``common.LeanClient``: httpx's own work per answer would be counted as the server's) and has
a server of its own (two Orthanc processes, so that one way's requests never warm the other's
cache of DICOM files) and the ways are asked in turn, request by request,
so that whatever else the machine is doing weighs on all of them alike.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import pydicom  # noqa: E402

from common import (DICOMWEB_PLUGIN, PACS_TOKEN, ROOT, Filmless, Orthanc, Samples, ct_study,  # noqa: E402
                    ingest_directly, machine, route_exists, table, timed, verdict, workspace)

RENDERED = "/dicomweb/studies/{}/series/{}/instances/{}/rendered"
CACHED_TARGET_MS = 2.0
WARM = 20  # the repeated requests cycle over this many instances, each rendered once before


@dataclass
class Way:
    name: str
    urls: list[str]
    get: Callable
    first: Samples = field(default_factory=Samples)
    repeated: Samples = field(default_factory=Samples)
    conditional: Samples | None = None
    etags: dict = field(default_factory=dict)
    answer: str = ""


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def describe(content: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(content)) as picture:
        return f"{picture.format} {picture.width}×{picture.height}, {len(content) // 1024} KB"


def measure(ways: list[Way], repeats: int) -> None:
    """First request of each instance, then ``repeats`` more over the first ``WARM``, then the
    same with If-None-Match where answers carry an ETag; the ways in turn at every step."""
    for index in range(len(ways[0].urls)):
        for way in ways:
            answer = timed(lambda: way.get(way.urls[index]), way.first)
            way.etags[index] = answer.headers.get("etag")
            way.answer = way.answer or describe(answer.content)
    for number in range(repeats):
        for way in ways:
            timed(lambda: way.get(way.urls[number % WARM]), way.repeated)
    tagged = [way for way in ways if all(way.etags[index] for index in range(WARM))]
    for way in tagged:
        way.conditional = Samples()
    for number in range(repeats):
        for way in tagged:
            index = number % WARM
            timed(lambda: way.get(way.urls[index], {"If-None-Match": way.etags[index]}), way.conditional,
                  expect=(304,))


async def measure_asgi(app, urls: list[str], accept: str, repeats: int) -> Samples:
    """Repeated requests with no network: what the app itself costs for an already-rendered frame."""
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {PACS_TOKEN}", "Accept": accept}
    async with httpx.AsyncClient(transport=transport, base_url="https://bench", headers=headers) as client:
        for url in urls[:WARM]:
            (await client.get(url)).raise_for_status()
        samples = Samples()
        for number in range(repeats):
            start = time.perf_counter()
            answer = await client.get(urls[number % WARM])
            samples.add(time.perf_counter() - start)
            answer.raise_for_status()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100, help="distinct instances rendered once each")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    args = parser.parse_args()
    accept = f"image/{args.format}"

    paths = ct_study()[: max(args.instances, WARM)]  # the ingest benchmark's study (512×512×16-bit), cached
    print(machine())
    print(f"{len(paths)} CT instances 512×512×16-bit in each store; Accept: {accept}; one client per server, "
          f"keep-alive, loopback, the servers asked in turn")

    filmless_ready = route_exists(RENDERED.format("{}", "{}", "{}"))
    if not filmless_ready:
        print("Filmless has no WADO-RS /rendered yet (core/studies/dicomweb_render.py): only Orthanc is measured")
    dicomweb_paths = ["/dicom-web" + RENDERED.format(*uids(path))[len("/dicomweb"):] for path in paths]

    with workspace("rendered") as root, ExitStack() as stack:
        def orthanc_way(name: str, folder: str, urls_of) -> Way:
            orthanc = stack.enter_context(Orthanc(root / folder))
            with orthanc.client() as client:
                ids = [client.post("/instances", content=path.read_bytes(),
                                   headers={"Content-Type": "application/dicom"}).json()["ID"] for path in paths]
            orthanc.stop()  # a new process: its cache of DICOM files starts empty
            orthanc.start()
            return Way(name, urls_of(ids), stack.enter_context(orthanc.lean_client(headers={"Accept": accept})).get)

        ways = [orthanc_way("Orthanc /instances/{id}/rendered", "orthanc-rest",
                            lambda ids: [f"/instances/{i}/rendered" for i in ids])]
        if DICOMWEB_PLUGIN.exists():
            ways.append(orthanc_way("Orthanc /dicom-web/…/rendered", "orthanc-dicomweb", lambda ids: dicomweb_paths))
        filmless_ways = []
        if filmless_ready:
            urls = [RENDERED.format(*uids(path)) for path in paths]
            for name, ahead in (("Filmless /dicomweb/…/rendered", False),
                                ("Filmless, pictures made ahead by the worker", True)):
                filmless = Filmless(root / ("filmless-ahead" if ahead else "filmless"))
                with filmless.runtime() as runtime:
                    ingest_directly(runtime, paths)
                    if ahead:
                        seconds = work_off_queue(filmless, runtime, len(paths))
                        print(f"  the worker made {len(paths)} pictures ahead in {seconds:.1f} s (with its start)")
                stack.enter_context(filmless)
                filmless_ways.append(Way(name, urls,
                                         stack.enter_context(filmless.lean_client(headers={"Accept": accept})).get))
            ways += filmless_ways
        measure(ways, args.repeats)
        if filmless_ready:
            from core.app import create_app
            from core.site import load_site

            in_process = asyncio.run(measure_asgi(create_app(load_site(filmless.site_file)), urls, accept,
                                                  args.repeats))

    rows = []
    for way in ways:
        rows.append([way.name, "first", way.first.p50_ms, way.first.p95_ms, way.answer])
        rows.append([way.name, "repeated", way.repeated.p50_ms, way.repeated.p95_ms, ""])
        if way.conditional is not None:
            rows.append([way.name, "repeated, If-None-Match (304)", way.conditional.p50_ms, way.conditional.p95_ms,
                         ""])
    if filmless_ready:
        rows.append(["Filmless in-process (ASGI, no network)", "repeated", in_process.p50_ms, in_process.p95_ms, ""])
    table(f"Rendered frame latency ({len(ways[0].first)} first requests, {args.repeats} repeated)",
          ["server and path", "request", "p50 ms", "p95 ms", "answer"], rows)

    if not filmless_ready:
        print("\nratio Orthanc/Filmless and the 2 ms target: not measured (no Filmless /rendered endpoint yet)")
        return
    ratios = []
    for ours in filmless_ways:
        for theirs in ways[:-len(filmless_ways)]:
            for label, mine, other in (("first", ours.first, theirs.first),
                                       ("repeated", ours.repeated, theirs.repeated)):
                p50, p95 = other.p50_ms / mine.p50_ms, other.p95_ms / mine.p95_ms
                ratios.append([ours.name, f"{theirs.name}, {label}", p50, p95, verdict(min(p50, p95), 1.0)])
    table("Ratio Orthanc latency / Filmless latency (≥ 1: Filmless no slower)",
          ["Filmless", "against", "p50 ratio", "p95 ratio", ""], ratios)
    ours = filmless_ways[0]
    cached = [["loopback, repeated", ours.repeated],
              *([["loopback, If-None-Match (304)", ours.conditional]] if ours.conditional else []),
              ["in-process, repeated", in_process]]
    table(f"Filmless cached frame against {CACHED_TARGET_MS:g} ms", ["", "p50 ms", "p95 ms", ""],
          [[label, s.p50_ms, s.p95_ms, verdict(s.p95_ms, CACHED_TARGET_MS, higher_is_better=False)]
           for label, s in cached])


def work_off_queue(filmless: Filmless, runtime, pictures: int) -> float:
    """Run ``filmless worker`` until it has kept ``pictures`` pictures; the seconds it took."""
    started = time.perf_counter()
    kept = runtime.blobs.local_path("rendered")
    worker = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(filmless.site_file), "worker"],
                              cwd=ROOT, env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while (not kept.is_dir() or len(list(kept.rglob("*.jpg"))) < pictures) and worker.poll() is None:
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=60)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
