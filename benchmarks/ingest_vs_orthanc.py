"""Ingest over HTTP: Filmless STOW-RS against Orthanc, on the same CT study, the same
machine, with 1 and with 4 concurrent clients. Every pass starts a fresh, empty store
and counts what it holds afterwards. Prints instances/s, MB/s and the ratio
Filmless/Orthanc against the targets (≥ 1.5× with 1 client, ≥ 2× with 4); asserts nothing.

    .venv/bin/python benchmarks/ingest_vs_orthanc.py [--instances 500] [--size 512] [--batch 10]

Orthanc is compared through its REST ``POST /instances`` (one file per request, always
there) and, when its DICOMweb plugin is installed (Debian ``orthanc-dicomweb``), through
its own STOW-RS ``POST /dicom-web/studies``.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (DICOMWEB_PLUGIN, Filmless, Orthanc, Throughput, ct_study, machine, multipart_related,  # noqa: E402
                    route_exists, run_clients, table, total_size, verdict, workspace)

TARGETS = {1: 1.5, 4: 2.0}
STOW = "application/dicom+json"


def stow_bodies(files: list[bytes], batch: int) -> list[tuple[bytes, str]]:
    return [multipart_related(files[start:start + batch]) for start in range(0, len(files), batch)]


def stow(client, body: tuple[bytes, str], path: str):
    content, content_type = body
    return client.post(path, content=content, headers={"Content-Type": content_type, "Accept": STOW})


def filmless_pass(folder: Path, bodies, clients: int, warm_up: bytes, processes: int) -> tuple[float, object, int]:
    with Filmless(folder, processes=processes) as server:
        with server.client() as client:
            stow(client, multipart_related([warm_up]), "/dicomweb/studies").raise_for_status()
        seconds, latency = run_clients(clients, bodies, lambda c, body: stow(c, body, "/dicomweb/studies"),
                                       server.client)
    with sqlite3.connect(folder / "portal.db") as db:
        held = db.execute("SELECT count(*) FROM instance").fetchone()[0] - 1
    return seconds, latency, held


def orthanc_pass(folder: Path, jobs, clients: int, warm_up: bytes, *, via_stow: bool) -> tuple[float, object, int]:
    with Orthanc(folder) as server:
        if via_stow:
            def send(client, body):
                return stow(client, body, "/dicom-web/studies")
            warm = multipart_related([warm_up])
        else:
            def send(client, data):
                return client.post("/instances", content=data, headers={"Content-Type": "application/dicom"})
            warm = warm_up
        with server.client() as client:
            send(client, warm).raise_for_status()
        seconds, latency = run_clients(clients, jobs, send, server.client)
        with server.client() as client:
            held = client.get("/statistics").json()["CountInstances"] - 1
    return seconds, latency, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--size", type=int, default=512, help="rows and columns (16-bit pixels)")
    parser.add_argument("--batch", type=int, default=10, help="instances per STOW request in the batched passes")
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--processes", type=int, default=2,
                        help="Filmless web processes in the passes with more than one client (one per core)")
    args = parser.parse_args()
    client_counts = [int(value) for value in args.clients.split(",")]

    paths = ct_study(args.instances, args.size)
    files = [path.read_bytes() for path in paths]
    size = total_size(paths)
    warm_up = ct_study(10, 64, series=1)[0].read_bytes()  # another study: loads code, not the measured data
    print(machine())
    print(f"{len(files)} CT instances {args.size}×{args.size}×16-bit, {size / 2**20:.0f} MB in all; "
          f"a fresh, empty store for every pass")

    filmless_ready = route_exists("/dicomweb/studies", "POST")
    if not filmless_ready:
        print("Filmless has no POST /dicomweb/studies yet (core/studies/dicomweb.py): only Orthanc is measured")
    orthanc_stow = DICOMWEB_PLUGIN.exists()

    singles, batched = stow_bodies(files, 1), stow_bodies(files, args.batch)
    many = f"Filmless STOW-RS, {args.processes} processes"
    passes = []  # (name, server, clients, per request, result)
    with workspace("ingest") as root:
        for clients in client_counts:
            plan = [("Orthanc POST /instances", "orthanc", 1, files, False)]
            if orthanc_stow:
                plan += [("Orthanc STOW-RS", "orthanc", 1, singles, True),
                         ("Orthanc STOW-RS", "orthanc", args.batch, batched, True)]
            if filmless_ready:
                plan += [("Filmless STOW-RS", "filmless", 1, singles, 1),
                         ("Filmless STOW-RS", "filmless", args.batch, batched, 1)]
                if clients > 1 and args.processes > 1:
                    plan += [(many, "filmless", 1, singles, args.processes),
                             (many, "filmless", args.batch, batched, args.processes)]
            for number, (name, server, per_request, jobs, how) in enumerate(plan):  # how: via STOW / processes
                folder = root / f"{server}-{clients}-{number}"
                print(f"  {name}, {per_request} per request, {clients} client(s)…", flush=True)
                if server == "filmless":
                    seconds, latency, held = filmless_pass(folder, jobs, clients, warm_up, how)
                else:
                    seconds, latency, held = orthanc_pass(folder, jobs, clients, warm_up, via_stow=how)
                passes.append((name, clients, per_request, Throughput(len(files), size, seconds, latency), held))

    rows = [[name, clients, per_request, result.per_second, result.mb_per_second, result.latency.p50_ms,
             result.latency.p95_ms, f"{held}/{len(files)}"]
            for name, clients, per_request, result, held in passes]
    table("Ingest over HTTP (loopback)", ["way in", "clients", "per request", "instances/s", "MB/s",
                                          "request p50 ms", "request p95 ms", "stored"], rows)

    if not filmless_ready:
        print("\nratio Filmless/Orthanc: not measured (no Filmless STOW-RS endpoint yet)")
        return
    ratios = []
    by_key = {(name, clients, per_request): result for name, clients, per_request, result, _ in passes}
    for clients in client_counts:
        target = TARGETS.get(clients, 2.0)
        comparisons = [("Filmless STOW-RS 1/request vs Orthanc POST /instances",
                        ("Filmless STOW-RS", clients, 1), ("Orthanc POST /instances", clients, 1)),
                       (f"Filmless STOW-RS {args.batch}/request vs Orthanc POST /instances",
                        ("Filmless STOW-RS", clients, args.batch), ("Orthanc POST /instances", clients, 1))]
        if orthanc_stow:
            comparisons += [("Filmless STOW-RS vs Orthanc STOW-RS, 1/request",
                             ("Filmless STOW-RS", clients, 1), ("Orthanc STOW-RS", clients, 1)),
                            (f"Filmless STOW-RS vs Orthanc STOW-RS, {args.batch}/request",
                             ("Filmless STOW-RS", clients, args.batch), ("Orthanc STOW-RS", clients, args.batch))]
        if clients > 1 and args.processes > 1:
            comparisons += [(f"{many}, 1/request vs Orthanc POST /instances",
                             (many, clients, 1), ("Orthanc POST /instances", clients, 1)),
                            (f"{many}, {args.batch}/request vs Orthanc POST /instances",
                             (many, clients, args.batch), ("Orthanc POST /instances", clients, 1))]
            if orthanc_stow:
                comparisons += [(f"{many} vs Orthanc STOW-RS, {args.batch}/request",
                                 (many, clients, args.batch), ("Orthanc STOW-RS", clients, args.batch))]
        for label, ours, theirs in comparisons:
            ratio = by_key[ours].per_second / by_key[theirs].per_second
            ratios.append([label, clients, ratio, target, verdict(ratio, target)])
    table("Ratio Filmless/Orthanc (instances/s)", ["comparison", "clients", "ratio", "target", ""], ratios)


if __name__ == "__main__":
    main()
