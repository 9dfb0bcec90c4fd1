"""The patient's "My exams" page with 200 studies (each with a signed report) for one
patient: p50/p95 in-process (ASGI, no network: the app's own cost) and through a real
``filmless serve`` process over loopback (what a browser sees), against the target
p95 ≤ 50 ms; asserts nothing.

    .venv/bin/python benchmarks/exams_page.py [--studies 200] [--requests 300]

The patient signs in the way a browser does (``POST /signin`` with the CSRF cookie), as an
account linked to the patient's record.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from common import (Filmless, Samples, cached_data, ingest_directly, machine, route_exists, table,  # noqa: E402
                    verdict, workspace)

EMAIL, PASSWORD = "bench.patient@example.org", "a bench patient's passphrase"
TARGET_P95_MS = 50.0
CSRF_COOKIE = "__Host-filmless_csrf"


def one_patient_studies(count: int = 200) -> list[Path]:
    """``count`` small studies (one 64×64 image and a signed text report each) of patient BENCH-MINE."""
    from datetime import date, timedelta

    from core.studies import synthetic

    def make(folder: Path) -> None:
        for index in range(count):
            spec = synthetic.StudySpec(patient_id="BENCH-MINE", family_name="Mine", given_name="Bench",
                                       accession_number=f"BM{index:05d}", instances=1,
                                       study_date=date(2026, 1, 1) - timedelta(days=7 * index),
                                       description=["CT CHEST", "MR KNEE", "CR HAND", "US ABDOMEN"][index % 4])
            datasets = synthetic.study(spec)
            datasets.append(synthetic.text_report(spec, f"Finding number {index}: no acute abnormality."))
            for number, ds in enumerate(datasets):
                ds.save_as(folder / f"{index:05d}-{number}.dcm", enforce_file_format=True)

    return sorted(cached_data(f"one-patient-{count}", make).glob("*.dcm"))


def make_patient_account(runtime) -> list[str]:
    """An account linked to patient BENCH-MINE; the UIDs of that patient's studies."""
    from sqlalchemy import select

    from core import clock
    from core.identity import service as identity
    from core.identity.models import PatientLink
    from core.studies.models import Patient, Study

    with runtime.sessions() as session:
        patient = session.scalar(select(Patient).where(Patient.patient_id == "BENCH-MINE"))
        account = identity.create_account(session, email=EMAIL, name="Bench Mine", how="staff", password=PASSWORD,
                                          email_verified=True)
        session.add(PatientLink(account_id=account.id, patient_ref=patient.id, relationship="self",
                                created_at=clock.now()))
        session.commit()
        return list(session.scalars(select(Study.study_uid).where(Study.patient_ref == patient.id)))


def _cookies(answer: httpx.Response, jar: dict) -> dict:
    # Read Set-Cookie ourselves: the __Host- cookies are Secure, which httpx will not send back
    # over the plain-HTTP loopback connection.
    for header in answer.headers.get_list("set-cookie"):
        name, _, value = header.split(";", 1)[0].partition("=")
        jar[name.strip()] = value.strip()
    return jar


async def sign_in(client: httpx.AsyncClient) -> None:
    jar = _cookies(await client.get("/signin"), {})
    answer = await client.post("/signin", data={"email": EMAIL, "password": PASSWORD,
                                                "csrf_token": jar[CSRF_COOKIE]},
                               headers={"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text[:300]}")
    client.cookies.clear()
    client.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in _cookies(answer, jar).items())


async def measure(client: httpx.AsyncClient, count: int, study_uids: list[str]) -> tuple[Samples, int]:
    await sign_in(client)
    for _ in range(10):
        (await client.get("/exams")).raise_for_status()
    samples = Samples()
    for _ in range(count):
        start = time.perf_counter()
        answer = await client.get("/exams", follow_redirects=False)
        samples.add(time.perf_counter() - start)
        if answer.status_code != 200:
            raise RuntimeError(f"/exams answered {answer.status_code}: {answer.text[:300]}")
    shown = set(re.findall(r"[0-9.]{20,64}", answer.text)) & set(study_uids)
    return samples, len(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    paths = one_patient_studies(args.studies)
    print(machine())
    print(f"one patient with {args.studies} studies (one 64×64 image and a signed report each); "
          f"{args.requests} sequential requests of /exams after 10 to warm up")

    if not route_exists("/exams"):
        print("Filmless has no /exams page yet (core/studies/routes.py): not measured")
        return

    with workspace("exams") as root:
        filmless = Filmless(root / "filmless")
        with filmless.runtime() as runtime:
            ingest_directly(runtime, paths)
            study_uids = make_patient_account(runtime)

        from core.app import create_app
        from core.site import load_site

        app = create_app(load_site(filmless.site_file))
        transport = httpx.ASGITransport(app=app)

        async def in_process():
            async with httpx.AsyncClient(transport=transport, base_url="https://bench") as client:
                return await measure(client, args.requests, study_uids)

        async def served():
            async with httpx.AsyncClient(base_url=filmless.url) as client:
                return await measure(client, args.requests, study_uids)

        results = [("in-process (ASGI, no network)", *asyncio.run(in_process()))]
        with filmless:
            results.append(("real server on loopback (one uvicorn process)", *asyncio.run(served())))

    table(f'"My exams" (/exams), one patient with {len(study_uids)} studies',
          ["how", "p50 ms", "p95 ms", "pages/s", "studies on the page", f"p95 against {TARGET_P95_MS:g} ms"],
          [[name, s.p50_ms, s.p95_ms, len(s) / sum(s.values), f"{shown}/{len(study_uids)}",
            verdict(s.p95_ms, TARGET_P95_MS, higher_is_better=False)] for name, s, shown in results])


if __name__ == "__main__":
    main()
