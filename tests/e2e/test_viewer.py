"""The image viewer in a real browser against a real ``filmless serve``: a patient's CT
stack, a multi-frame ultrasound clip, JPEG frames rendered by the server and a frame that
cannot be decoded, on a desktop and on a 360 px wide phone with touch gestures."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from support import ROOT, add_linked_patient, free_port, site_data, wait_for, write_site

from core import db
from core.app import build_runtime
from core.site import load_site

pytestmark = pytest.mark.slow

EMAIL = "viewer-patient@example.test"
PASSWORD = "a quiet walk along the river"


def make_patient_studies(runtime, folder: Path) -> dict:
    """A signed-up patient with a 10-slice CT, an 8-frame colour ultrasound clip, a JPEG series and
    a series whose file says JPEG but holds garbage, stored the way every way in stores them."""
    from pydicom.encaps import encapsulate

    from core.identity import service as identity
    from core.studies import service, synthetic

    with runtime.sessions() as session:
        account = identity.create_account(session, email=EMAIL, name="Vera Viewer", how="staff",
                                          password=PASSWORD, email_verified=True)
        add_linked_patient(session, account.id, issuer="E2E", patient_id="VIEW-1", family_name="Viewer",
                           given_name="Vera", birth_date=date(1975, 5, 6))
        session.commit()
        common = dict(patient_id="VIEW-1", issuer="E2E", family_name="Viewer", given_name="Vera",
                      birth_date=date(1975, 5, 6), description="CT CHEST")
        ct = synthetic.StudySpec(**common, instances=10)
        clip = synthetic.StudySpec(**common, study_uid=ct.study_uid, modality="US", instances=1, frames=8,
                                   photometric="RGB")
        jpeg = synthetic.StudySpec(**common, study_uid=ct.study_uid, modality="CR", instances=3, jpeg=True)
        broken = synthetic.StudySpec(**common, study_uid=ct.study_uid, modality="OT", instances=1, jpeg=True)
        datasets = {"ct": synthetic.study(ct), "us": synthetic.study(clip), "jpeg": synthetic.study(jpeg),
                    "broken": synthetic.study(broken)}
        for number, name in enumerate(["us", "jpeg", "broken"], start=2):
            for ds in datasets[name]:
                ds.SeriesNumber = number
        for ds in datasets["broken"]:
            ds.SeriesDescription = "UNREADABLE"
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a JPEG stream at all \xff\xd9"])
        for name, found in datasets.items():
            for path in synthetic.write(found, folder / name):
                assert service.ingest(session, path, runtime=runtime).outcome == "stored"
    return {"study": ct.study_uid, **{name: found[0].SeriesInstanceUID for name, found in datasets.items()}}


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer")
    site_file = write_site(folder, site_data(folder, plugins={}))
    runtime = build_runtime(load_site(site_file))
    try:
        db.upgrade(runtime.engine, runtime.pm)  # what `filmless migrate` does, without a second start-up
        uids = make_patient_studies(runtime, folder / "dicom")
    finally:
        runtime.close()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "serve"], cwd=ROOT,
                              env={**os.environ, "PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/healthz", server)
    yield url, uids
    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)


def sign_in(page, url: str) -> None:
    page.goto(url + "/signin")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form[action='/signin'] button[type=submit]").click()
    page.wait_for_url(url + "/")


CANVAS_PIXELS = """() => {
  const canvas = document.getElementById('viewer-canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, sum = 0;
  const grid = [];
  for (let i = 0; i < data.length; i += 4) { if (data[i] > 16) lit += 1; sum += data[i]; }
  for (let y = 1; y < 8; y += 1) for (let x = 1; x < 8; x += 1) {
    grid.push(data[(Math.floor(canvas.height * y / 8) * canvas.width + Math.floor(canvas.width * x / 8)) * 4]);
  }
  return {lit: lit / (data.length / 4), sum, grid};
}"""


def percent(label: str) -> int:
    return int(label.split()[-1].rstrip("%"))


def shown(page, index: int) -> None:
    """Wait until the frame at ``index`` (0-based) is on the canvas."""
    page.wait_for_function(f"() => document.getElementById('viewer').dataset.shown === '{index}'", timeout=10_000)


def test_desktop_scroll_window_cine_and_an_undecodable_frame(browser, viewer_server):
    url, uids = viewer_server
    context = browser.new_context(viewport={"width": 1100, "height": 800}, locale="en-US")
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text)
            if "Content Security Policy" in message.text else None)
    sign_in(page, url)

    page.goto(f"{url}/exams/{uids['study']}/viewer")
    shown(page, 0)
    assert page.locator("#viewer").get_attribute("data-kind") == "native"  # drawn from raw WADO-RS frames
    first = page.evaluate(CANVAS_PIXELS)
    assert first["lit"] > 0.2  # a real image, not a blank canvas
    assert page.locator("#viewer-image-label").inner_text() == "Image 1 of 10"
    assert page.locator("#viewer-window-label").inner_text() == "W 400 L 40"  # the file's own window
    assert "Vera Viewer" in page.locator(".viewer-overlay-top-left").inner_text()

    page.locator("#viewer-viewport").focus()
    page.keyboard.press("ArrowDown")
    shown(page, 1)
    second = page.evaluate(CANVAS_PIXELS)
    assert page.locator("#viewer-image-label").inner_text() == "Image 2 of 10"
    assert second["grid"] != first["grid"]

    box = page.locator("#viewer-canvas").bounding_box()
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*middle)
    page.mouse.wheel(0, 100)
    shown(page, 2)
    assert page.locator("#viewer-image-label").inner_text() == "Image 3 of 10"
    third = page.evaluate(CANVAS_PIXELS)
    assert third["grid"] != second["grid"]
    page.keyboard.press("End")
    shown(page, 9)
    assert page.locator("#viewer-slider").input_value() == "10"

    # window/level: drag right widens the window, down raises its centre
    before = page.evaluate(CANVAS_PIXELS)
    page.mouse.move(*middle)
    page.mouse.down()
    page.mouse.move(middle[0] + 120, middle[1] + 60, steps=6)
    page.mouse.up()
    page.wait_for_function("() => document.getElementById('viewer-window-label').textContent !== 'W 400 L 40'")
    after = page.evaluate(CANVAS_PIXELS)
    assert after["sum"] != before["sum"] and after["grid"] != before["grid"]
    assert page.locator("#viewer-preset").input_value() == "custom"
    page.select_option("#viewer-preset", "lung")
    page.wait_for_function("() => document.getElementById('viewer-window-label').textContent === 'W 1500 L -600'")
    page.keyboard.press("r")
    page.wait_for_function("() => document.getElementById('viewer-window-label').textContent === 'W 400 L 40'")

    # zoom with ctrl + wheel, and the help panel
    fitted = page.locator("#viewer-zoom-label").inner_text()
    page.mouse.move(*middle)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    assert percent(page.locator("#viewer-zoom-label").inner_text()) > percent(fitted)
    page.keyboard.press("?")
    assert page.locator("#viewer-help").is_visible()
    page.keyboard.press("Escape")
    assert page.locator("#viewer-help").is_hidden()

    # the ultrasound clip: colour frames, played as cine
    page.locator(f"[data-series='{uids['us']}']").click()
    shown(page, 0)
    assert page.locator("#viewer-image-label").inner_text() == "Image 1 of 8"
    assert page.locator("#viewer").get_attribute("data-kind") == "native"
    assert page.evaluate(CANVAS_PIXELS)["lit"] > 0.2
    page.locator("#viewer-viewport").focus()
    page.keyboard.press(" ")
    page.wait_for_function("() => Number(document.getElementById('viewer').dataset.shown) >= 3", timeout=10_000)
    page.keyboard.press(" ")
    assert page.locator("#viewer-play").get_attribute("aria-pressed") == "false"

    # JPEG frames are rendered by the server; a new window is asked of it again
    page.locator(f"[data-series='{uids['jpeg']}']").click()
    shown(page, 0)
    assert page.locator("#viewer").get_attribute("data-kind") == "rendered"
    rendered = page.evaluate(CANVAS_PIXELS)
    assert rendered["lit"] > 0.2
    assert page.locator("#viewer").get_attribute("data-window") == ""  # drawn with the server's own choice
    page.mouse.move(*middle)
    page.mouse.down()
    page.mouse.move(middle[0] - 100, middle[1] + 80, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.getElementById('viewer').dataset.window !== ''", timeout=10_000)
    assert page.evaluate(CANVAS_PIXELS)["sum"] != rendered["sum"]  # drawn again by the server
    assert page.locator("#viewer-window-label").inner_text().startswith("W ")

    # a file that says JPEG but holds garbage: a message, never a blank viewport
    page.locator(f"[data-series='{uids['broken']}']").click()
    page.wait_for_function("() => document.getElementById('viewer').dataset.state === 'error'", timeout=10_000)
    assert page.locator("#viewer-message").inner_text() == "This image cannot be displayed."
    assert page.locator("#viewer-message").is_visible()
    assert "series=" + uids["broken"] in page.url
    assert problems == []
    context.close()


def touch(client, kind: str, points: list[tuple[float, float]]) -> None:
    client.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
        {"x": x, "y": y, "id": number} for number, (x, y) in enumerate(points)]})


def test_phone_fits_and_answers_touch(browser, viewer_server):
    url, uids = viewer_server
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True, locale="es-ES")
    page = context.new_page()
    sign_in(page, url)
    page.goto(f"{url}/language/es?next=/exams/{uids['study']}/viewer")
    shown(page, 0)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = page.locator("#viewer-canvas").bounding_box()
    assert box["width"] >= 330 and box["x"] >= 0 and box["x"] + box["width"] <= 360
    assert box["height"] >= 240 and box["y"] + box["height"] <= 740  # seen without scrolling
    assert page.locator("#viewer-image-label").inner_text() == "Imagen 1 de 10"
    assert page.evaluate(CANVAS_PIXELS)["lit"] > 0.2
    for control in ("#viewer-play", "#viewer-zoom-in", "#viewer-reset", "#viewer-slider"):
        found = page.locator(control).bounding_box()
        assert found["x"] >= 0 and found["x"] + found["width"] <= 360, control

    cdp = context.new_cdp_session(page)
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    touch(cdp, "touchStart", [(centre_x, centre_y + 60)])  # a swipe up brings the next images
    for lift in range(1, 7):
        touch(cdp, "touchMove", [(centre_x, centre_y + 60 - lift * 10)])
    touch(cdp, "touchEnd", [])
    page.wait_for_function("() => Number(document.getElementById('viewer').dataset.shown) >= 2", timeout=10_000)

    zoom_before = page.locator("#viewer-zoom-label").inner_text()
    touch(cdp, "touchStart", [(centre_x - 30, centre_y), (centre_x + 30, centre_y)])  # pinch out
    for spread in range(1, 6):
        touch(cdp, "touchMove", [(centre_x - 30 - spread * 15, centre_y), (centre_x + 30 + spread * 15, centre_y)])
    touch(cdp, "touchEnd", [])
    assert percent(page.locator("#viewer-zoom-label").inner_text()) > percent(zoom_before)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    context.close()


PIXEL_RULES = """async () => {
  const { decodeNative, paint, autoWindow } = await import('/static/viewer/pixels.js');
  const { firstPart } = await import('/static/viewer/dicomweb.js');
  const grey = { rows: 1, columns: 4, samples: 1, planar: 0, photometric: 'MONOCHROME2', bitsAllocated: 16,
                 bitsStored: 12, highBit: 11, signed: true, slope: 1, intercept: 0, windows: [], aspect: 1 };
  // 12 bits stored, signed, with junk above the high bit; starting on an odd byte as a multipart part may
  const stored = new Uint16Array([0xFFFF, 0xA800, 0x07FF, 0x0000]);
  const odd = new Uint8Array(9);
  odd.set(new Uint8Array(stored.buffer), 1);
  const frame = decodeNative(grey, odd.subarray(1));
  const image = { data: new Uint8ClampedArray(16) };
  const reds = () => Array.from(image.data).filter((value, index) => index % 4 === 0);
  paint(frame, { center: 0, width: 100 }, image);
  const windowed = reds();
  paint(decodeNative({ ...grey, photometric: 'MONOCHROME1' }, new Uint8Array(stored.buffer)), { center: 0, width: 100 }, image);
  const inverted = reds();
  const ct = decodeNative({ ...grey, signed: false, bitsStored: 16, highBit: 15, slope: 2, intercept: -1024 },
                          new Uint8Array(new Uint16Array([0, 512, 1024, 2048]).buffer));
  const planar = decodeNative({ ...grey, columns: 2, samples: 3, photometric: 'RGB', planar: 1, bitsAllocated: 8,
                                bitsStored: 8, highBit: 7, signed: false }, new Uint8Array([1, 2, 3, 4, 5, 6]));
  const encoder = new TextEncoder();
  const body = new Uint8Array([...encoder.encode('--b0\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\n'),
                               9, 13, 10, 45, 45, ...encoder.encode('\\r\\n--b0--\\r\\n')]);
  const part = firstPart('multipart/related; type="application/octet-stream"; boundary="b0"', body.buffer);
  return { values: Array.from(frame.data), range: [frame.min, frame.max], windowed, inverted,
           ctWindow: autoWindow(ct), rgb: Array.from(planar.data), part: Array.from(part.bytes) };
}"""


def test_pixel_rules_in_the_browser(browser, viewer_server):
    """The decoding rules themselves, run by the browser on hand-made frames."""
    url, _uids = viewer_server
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/signin")
    found = page.evaluate(PIXEL_RULES)
    assert found["values"] == [-1, -2048, 2047, 0] and found["range"] == [-2048, 2047]
    assert found["windowed"] == [126, 0, 255, 129]  # PS3.3 C.11.2.1.2.1, centre 0 width 100
    assert found["inverted"] == [129, 255, 0, 126]  # MONOCHROME1: high values dark
    assert found["ctWindow"] == {"center": 1024, "width": 4096}  # rescaled: -1024 .. 3072
    assert found["rgb"] == [1, 3, 5, 2, 4, 6]  # colour planes interleaved
    assert found["part"] == [9, 13, 10, 45, 45]  # bytes that look like line ends and dashes stay
    context.close()
