"""Measure page throughput and latency of the demo site: in-process (the app's own
cost) and through a real ``filmless serve`` process over loopback (what a browser
sees). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_pages.py [--requests 2000]
"""
import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
from support import demo_site_file, filmless, free_port, wait_for  # noqa: E402


def measure(get, paths, count):
    timings = {}
    for path in paths:
        get(path)  # warm up
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            answer = get(path)
            samples.append(time.perf_counter() - start)
            assert answer.status_code == 200, (path, answer.status_code)
        samples.sort()
        timings[path] = samples
    return timings


async def measure_asgi(app, paths, count):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        timings = {}
        for path in paths:
            await client.get(path)
            samples = []
            for _ in range(count):
                start = time.perf_counter()
                answer = await client.get(path)
                samples.append(time.perf_counter() - start)
                assert answer.status_code == 200, (path, answer.status_code)
            samples.sort()
            timings[path] = samples
    return timings


def report(title, timings):
    print(title)
    for path, samples in timings.items():
        total = sum(samples)
        print(f"  {path:<14} {len(samples) / total:8.0f} req/s   p50 {statistics.median(samples) * 1000:6.2f} ms"
              f"   p95 {samples[int(len(samples) * 0.95)] * 1000:6.2f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    paths = ["/", "/healthz", "/branding.css"]
    with tempfile.TemporaryDirectory() as folder:
        site_file = demo_site_file(Path(folder))
        assert filmless("--site", str(site_file), "migrate").returncode == 0

        from core.app import create_app
        from core.site import load_site

        in_process = asyncio.run(measure_asgi(create_app(load_site(site_file)), paths, args.requests))
        report(f"in-process (ASGI, no network), {args.requests} sequential requests per page", in_process)

        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "serve"], cwd=ROOT,
                                  env={**os.environ, "PORT": str(port)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            wait_for(f"http://127.0.0.1:{port}/healthz", server)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                served = measure(client.get, paths, args.requests)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        report(f"real server on loopback (one uvicorn process, keep-alive), {args.requests} requests per page", served)
        home_ratio = statistics.median(served["/"]) / statistics.median(in_process["/"])
        print(f"ratio served/in-process p50 for /: {home_ratio:.2f}")


if __name__ == "__main__":
    main()
