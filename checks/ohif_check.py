"""Does OHIF Viewer 3, pointed at a site's DICOMweb, list and show its studies?

``make ohif-check``: downloads the published OHIF build once (npm package ``@ohif/app``,
checked against the registry's sha512) into ``.cache/ohif/<version>/``, serves it on one
loopback port with an ``app-config.js`` whose DICOMweb data source is a real ``filmless serve``
on another (``studies.cors_origins`` holding the viewer's origin, the PACS token passed the way
OHIF takes one, ``?token=``), fills that site with generated studies and drives the viewer in
Debian's chromium: the study list shows every study, each study's viewport draws pixels, and no
DICOMweb request fails or is refused by CORS. Prints what it saw; exits 1 on any failure.
Screenshots go beside the download.

Not part of ``make test``: it needs the network the first time, and it checks a third party's
viewer rather than our code (the behaviour OHIF relies on has ordinary tests in tests/core).
"""
from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import http.server
import json
import shutil
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "benchmarks")]

from common import PACS_TOKEN, ROOT, Filmless, free_port, ingest_directly, workspace  # noqa: E402

VERSION = "3.13.2"
REGISTRY = "https://registry.npmjs.org/@ohif/app"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# WebGL through SwiftShader (no GPU here); without it OHIF falls back to its slower CPU rendering
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def viewer_build(version: str) -> Path:
    """The unpacked ``dist/`` of ``@ohif/app`` ``version``, downloaded and verified once."""
    cache = ROOT / ".cache" / "ohif" / version
    dist = cache / "dist"
    if (dist / "index.html").exists():
        return dist
    cache.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(f"{REGISTRY}/{version}", timeout=60) as answer:
        release = json.load(answer)["dist"]
    algorithm, expected = release["integrity"].split("-", 1)
    tarball = cache / f"app-{version}.tgz"
    if not tarball.exists():
        print(f"downloading {release['tarball']}", flush=True)
        with urllib.request.urlopen(release["tarball"], timeout=300) as answer, open(tarball.with_suffix(".part"), "wb") as out:
            shutil.copyfileobj(answer, out)
        tarball.with_suffix(".part").rename(tarball)
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        tarball.unlink()
        raise SystemExit(f"{tarball.name}: {algorithm} {digest} is not the registry's {expected}; removed it")
    unpacked = cache / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(unpacked, members=[m for m in archive.getmembers() if m.name.startswith("package/dist/")],
                           filter="data")
    (unpacked / "package" / "dist").rename(dist)
    shutil.rmtree(unpacked)
    return dist


def app_config(dicomweb: str) -> str:
    """OHIF's configuration: one DICOMweb data source, Filmless's."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "filmless",
        "configuration": {
            "friendlyName": "Filmless", "name": "filmless",
            "qidoRoot": dicomweb, "wadoRoot": dicomweb, "wadoUriRoot": dicomweb,
            "qidoSupportsIncludeField": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "imageRendering": "wadors", "thumbnailRendering": "wadors", "enableStudyLazyLoad": True,
            "staticWado": False, "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {"routerBasename": "/", "extensions": [], "modes": [], "showStudyList": True,
              "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
              "defaultDataSourceName": "filmless", "dataSources": [source]}
    return f"window.config = {json.dumps(config, indent=2)};\n"


class ViewerFiles(http.server.SimpleHTTPRequestHandler):
    """The build's files, our ``app-config.js``, and ``index.html`` for any other path (the
    viewer routes in the browser: /viewer?StudyInstanceUIDs=...)."""

    def __init__(self, *args, config: bytes, **kwargs):
        self.config = config
        super().__init__(*args, **kwargs)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.config)))
            self.end_headers()
            self.wfile.write(self.config)
            return
        if not (Path(self.directory) / path.lstrip("/")).is_file():
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, *args):
        pass


def studies(folder: Path) -> list[tuple[str, str, list[Path]]]:
    """(study UID, patient name as OHIF shows it, files) for studies of the common kinds."""
    from core.studies import synthetic

    specs = [
        synthetic.StudySpec(patient_id="OHIF-CT", family_name="Ohif", given_name="Ct", description="CT CHEST",
                            series=2, instances=12, rows=256, columns=256),
        synthetic.StudySpec(patient_id="OHIF-MR", family_name="Ohif", given_name="Mr", description="MR BRAIN",
                            modality="MR", body_part="HEAD", instances=8, rows=128, columns=128),
        synthetic.StudySpec(patient_id="OHIF-XA", family_name="Ohif", given_name="Cine", description="XA CINE",
                            modality="XA", body_part="HEART", instances=1, frames=10, rows=128, columns=128),
        synthetic.StudySpec(patient_id="OHIF-US", family_name="Ohif", given_name="Rgb", description="US ABDOMEN",
                            modality="US", body_part="ABDOMEN", instances=2, photometric="RGB", rows=120, columns=160),
        synthetic.StudySpec(patient_id="OHIF-CR", family_name="Ohif", given_name="Jpeg", description="CR CHEST",
                            modality="CR", instances=1, jpeg=True, rows=256, columns=256),
    ]
    made = []
    for spec in specs:
        target = folder / spec.patient_id
        target.mkdir(parents=True)
        made.append((spec.study_uid, f"{spec.family_name}, {spec.given_name}",
                     synthetic.write(synthetic.study(spec), target)))
    return made


DRAWN = 0.05  # a viewport with less of its area lit is taken for blank


def drawn_fraction(png: bytes) -> float:
    """The share of a screenshot's pixels that are not (near) black."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return 1 - sum(histogram[:16]) / max(1, sum(histogram))


def check(version: str, timeout_ms: int) -> list[str]:
    from playwright.sync_api import sync_playwright

    dist = viewer_build(version)
    shots = dist.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    problems: list[str] = []
    with workspace("ohif") as folder:
        viewer_port = free_port()
        viewer_origin = f"http://127.0.0.1:{viewer_port}"
        filmless = Filmless(folder / "site", studies={"pacs_token": PACS_TOKEN, "cors_origins": [viewer_origin]})
        made = studies(folder / "dicom")
        with filmless.runtime() as runtime:
            stored = ingest_directly(runtime, [path for _, _, paths in made for path in paths])
        print(f"Filmless {filmless.url}: {stored} instances in {len(made)} studies")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", viewer_port), functools.partial(
            ViewerFiles, directory=str(dist), config=app_config(f"{filmless.url}/dicomweb").encode()))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"OHIF {version} {viewer_origin}")
        with filmless, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            failed: list[str] = []
            page.on("response", lambda r: r.url.startswith(filmless.url) and r.status >= 400
                    and failed.append(f"{r.status} {r.request.method} {r.url}"))
            page.on("requestfailed", lambda r: r.url.startswith(filmless.url) and "ERR_ABORTED" not in (r.failure or "")
                    and failed.append(f"failed {r.method} {r.url}: {r.failure}"))
            page.on("console", lambda m: m.type == "error" and "CORS" in m.text and failed.append(f"console: {m.text}"))

            for uid, name, paths in made:
                page.goto(f"{viewer_origin}/viewer?StudyInstanceUIDs={uid}&token={PACS_TOKEN}")
                viewport = page.locator(".cornerstone-canvas").first
                fraction = 0.0
                try:
                    viewport.wait_for(timeout=timeout_ms)
                    for _ in range(timeout_ms // 500):
                        fraction = drawn_fraction(viewport.screenshot())
                        if fraction > DRAWN:
                            break
                        page.wait_for_timeout(500)
                except Exception as exc:
                    problems.append(f"{name}: no viewport ({exc.__class__.__name__})")
                    continue
                page.screenshot(path=str(shots / f"{name.split(', ')[1].lower()}.png"))
                print(f"{name}: viewport {fraction:.0%} drawn ({len(paths)} files)")
                if fraction <= DRAWN:
                    problems.append(f"{name}: the viewport stayed blank")
            # OHIF takes ?token= on its viewer route only: reach the list from there without a reload
            page.evaluate("history.pushState({}, '', '/'); dispatchEvent(new PopStateEvent('popstate'))")
            for _, name, _ in made:
                try:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=timeout_ms)
                except Exception:
                    problems.append(f"study list: {name!r} not shown")
            page.screenshot(path=str(shots / "study-list.png"))
            print(f"study list: {len(made) - len(problems)} of {len(made)} studies shown")

            browser.close()
        server.shutdown()
    problems += failed
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=VERSION, help="the @ohif/app release to check (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each page (default 60)")
    arguments = parser.parse_args()
    problems = check(arguments.version, int(arguments.timeout * 1000))
    for problem in problems:
        print(f"FAIL {problem}")
    print("OHIF check: " + ("failed" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
