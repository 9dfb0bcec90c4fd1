"""Rendering frames as pictures (core/studies/render.py) from real stored files: formats and
sizes, windows, MONOCHROME1, colour, multi-frame, compressed and signed pixels, the
in-memory cache, translated refusals, and the HTTP side (ETag, 304, thumbnails)."""
from __future__ import annotations

import io
import uuid

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.encaps import encapsulate
from sqlalchemy import select
from support import ingest_file, make_site

from core import i18n
from core.studies import render, synthetic
from core.studies.models import Instance

TOKEN = "pacs-token-for-tests-0123"


@pytest.fixture
def site(tmp_path, database_url):
    return make_site(tmp_path, database=database_url, studies={"pacs_token": TOKEN})


def stored(session, runtime, tmp_path, datasets) -> list[Instance]:
    for path in synthetic.write(datasets, tmp_path / uuid.uuid4().hex):
        assert ingest_file(session, runtime, path).ok
    wanted = [str(ds.SOPInstanceUID) for ds in datasets]
    found = {i.sop_uid: i for i in session.scalars(select(Instance).where(Instance.sop_uid.in_(wanted)))}
    return [found[uid] for uid in wanted]


def one(session, runtime, tmp_path, **spec) -> tuple[Instance, pydicom.Dataset]:
    [dataset] = synthetic.study(synthetic.StudySpec(instances=1, **spec))
    [instance] = stored(session, runtime, tmp_path, [dataset])
    return instance, dataset


def picture(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_jpeg_and_png_at_their_size_or_fitted_in_a_viewport(session, runtime, tmp_path):
    instance, _dataset = one(session, runtime, tmp_path, rows=64, columns=32)
    jpeg = render.rendered(runtime, instance)
    assert jpeg.startswith(b"\xff\xd8") and Image.open(io.BytesIO(jpeg)).size == (32, 64)
    png = render.rendered(runtime, instance, fmt="png")
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).mode == "L"
    assert Image.open(io.BytesIO(render.rendered(runtime, instance, size=(100, 100)))).size == (50, 100)
    assert Image.open(io.BytesIO(render.rendered(runtime, instance, size=(16, 64)))).size == (16, 32)
    assert len(render.rendered(runtime, instance, quality=5)) < len(render.rendered(runtime, instance, quality=95))


def test_the_window_decides_the_grey_levels(session, runtime, tmp_path):
    instance, dataset = one(session, runtime, tmp_path)  # CT: HU = stored - 1024, file window 40/400
    hounsfield = dataset.pixel_array.astype(float) - 1024
    files_own = picture(render.rendered(runtime, instance, fmt="png"))
    assert np.array_equal(files_own, picture(render.rendered(runtime, instance, window=(40, 400), fmt="png")))
    narrow = picture(render.rendered(runtime, instance, window=(500, 2), fmt="png"))
    assert set(np.unique(narrow)) <= {0, 255}
    assert np.array_equal(narrow == 255, hounsfield > 500)
    wide = picture(render.rendered(runtime, instance, window=(1000, 4000), fmt="png"))
    assert not np.array_equal(wide, files_own) and wide.max() < 255
    sigmoid = picture(render.render_frame(runtime, instance, window=(1000, 4000), function="sigmoid", fmt="png"))
    assert not np.array_equal(sigmoid, wide)


def test_monochrome1_is_inverted(session, runtime, tmp_path):
    normal, _ = one(session, runtime, tmp_path, modality="CR", photometric="MONOCHROME2")
    inverted, _ = one(session, runtime, tmp_path, modality="CR", photometric="MONOCHROME1")
    light = picture(render.rendered(runtime, normal, fmt="png")).astype(int)
    dark = picture(render.rendered(runtime, inverted, fmt="png")).astype(int)
    assert np.array_equal(light + dark, np.full_like(light, 255))


def test_colour_stays_colour(session, runtime, tmp_path):
    instance, dataset = one(session, runtime, tmp_path, modality="OT", photometric="RGB")
    shown = picture(render.rendered(runtime, instance, fmt="png"))
    assert shown.shape == (64, 64, 3)
    assert np.array_equal(shown, dataset.pixel_array)
    assert not np.array_equal(shown[..., 0], shown[..., 1])


def test_each_frame_of_a_multiframe_image(session, runtime, tmp_path):
    instance, _ = one(session, runtime, tmp_path, modality="US", frames=3)
    first = picture(render.rendered(runtime, instance, 1, fmt="png"))
    second = picture(render.rendered(runtime, instance, 2, fmt="png"))
    assert first.shape == second.shape == (64, 64) and not np.array_equal(first, second)
    with pytest.raises(render.CannotRender):
        render.rendered(runtime, instance, 4)


def test_compressed_and_signed_pixels(session, runtime, tmp_path):
    jpeg, dataset = one(session, runtime, tmp_path, jpeg=True)
    shown = picture(render.rendered(runtime, jpeg, fmt="png")).astype(int)
    expected = dataset.pixel_array.astype(float)
    expected = (expected - expected.min()) / (expected.max() - expected.min()) * 255
    assert np.abs(shown - expected).mean() < 4  # min/max window of a lossy 8-bit picture

    [signed] = synthetic.study(synthetic.StudySpec(instances=1, modality="MR"))
    values = np.linspace(-2000, 2000, 64 * 64).reshape(64, 64).astype(np.int16)
    signed.PixelRepresentation, signed.BitsStored, signed.HighBit = 1, 16, 15
    del signed.WindowCenter, signed.WindowWidth
    signed.PixelData = values.tobytes()
    [instance] = stored(session, runtime, tmp_path, [signed])
    grey = picture(render.rendered(runtime, instance, fmt="png"))
    assert grey[0, 0] == 0 and grey[-1, -1] == 255 and 120 <= grey[32, 0] <= 135


@pytest.mark.parametrize("layout", ["unsigned 12 of 16, high bits set", "signed 12 of 16", "signed 16",
                                    "8 bits", "implicit VR, 3 frames", "RGB", "JPEG"])
def test_frames_read_straight_from_the_file_are_the_values_pydicom_decodes(tmp_path, layout):
    [ds] = synthetic.study(synthetic.StudySpec(instances=1, modality="MR", rows=8, columns=6,
                                               frames=3 if "frames" in layout else 1,
                                               photometric="RGB" if layout == "RGB" else "MONOCHROME2",
                                               jpeg=layout == "JPEG"))
    count = ds.get("NumberOfFrames", 1) * 8 * 6
    raw = (np.arange(count, dtype=np.int16) - count // 2) * 37
    if layout.startswith("unsigned"):
        ds.PixelData = (raw.view(np.uint16) | 0xF000).tobytes()  # junk in the unused bits
    elif layout.startswith("signed"):
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, int(layout.split()[1]), int(layout.split()[1]) - 1
        ds.PixelData = raw.tobytes()
    elif layout == "8 bits":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = (raw % 256).astype(np.uint8).tobytes()
    elif layout.startswith("implicit"):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    [path] = synthetic.write([ds], tmp_path)
    frames = ds.get("NumberOfFrames", 1)
    for index in range(frames):
        with open(path, "rb") as handle:
            found = render.native_grey_frame(handle, index)
        if layout in ("RGB", "JPEG"):
            assert found is None  # left to pydicom's decoders
            continue
        expected = pydicom.pixels.pixel_array(str(path), index=index)
        assert found[0].dtype == expected.dtype and np.array_equal(found[0], expected), index
        assert found[1].Rows == 8 and "PixelData" not in found[1]
    with open(path, "rb") as handle:
        assert render.native_grey_frame(handle, frames) is None  # no such frame


def test_a_repeated_rendering_comes_from_the_cache(session, runtime, tmp_path):
    instance, _ = one(session, runtime, tmp_path)
    before = render.STATS["decodes"]
    first = render.rendered(runtime, instance, window=(40, 80), size=(32, 32))
    assert render.STATS["decodes"] == before + 1
    assert render.rendered(runtime, instance, window=(40, 80), size=(32, 32)) == first
    assert render.STATS["decodes"] == before + 1
    render.rendered(runtime, instance, window=(40, 81), size=(32, 32))
    assert render.STATS["decodes"] == before + 2

    small = render.RenderCache(max_bytes=4000)
    for number in range(5):
        small.put(("k", number), bytes(900))
    assert small.size <= 4000 and small.get(("k", 0)) is None and small.get(("k", 4)) is not None


def test_what_cannot_be_shown_says_why_in_the_readers_language(session, runtime, tmp_path):
    pdf = synthetic.pdf_report(synthetic.StudySpec(), synthetic.minimal_pdf("text"))
    [document] = stored(session, runtime, tmp_path, [pdf])
    with pytest.raises(render.CannotRender, match="not an image"):
        render.rendered(runtime, document)
    [broken] = synthetic.study(synthetic.StudySpec(instances=1, jpeg=True))
    broken.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + b"\x13" * 100 + b"\xff\xd9"])
    [instance] = stored(session, runtime, tmp_path, [broken])
    i18n.activate("es")
    with pytest.raises(render.CannotRender) as refusal:
        render.rendered(runtime, instance)
    assert refusal.value.message == i18n.gettext(
        "The image data of this frame is damaged or in a form that cannot be decoded.")
    assert refusal.value.message != "The image data of this frame is damaged or in a form that cannot be decoded."


def test_rendered_over_http_with_etag_and_thumbnails(app, session, runtime, tmp_path):
    spec = synthetic.StudySpec(instances=3)
    datasets = synthetic.study(spec)
    stored(session, runtime, tmp_path, datasets)
    pacs = TestClient(app, base_url="https://testserver", headers={"Authorization": f"Bearer {TOKEN}"})
    url = (f"/dicomweb/studies/{spec.study_uid}/series/{datasets[0].SeriesInstanceUID}"
           f"/instances/{datasets[0].SOPInstanceUID}")
    first = pacs.get(url + "/frames/1/rendered", params={"window": "40,400", "viewport": "32,32"})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert first.headers["cache-control"].startswith("private, max-age=")
    assert Image.open(io.BytesIO(first.content)).size == (32, 32)
    again = pacs.get(url + "/frames/1/rendered", params={"window": "40,400", "viewport": "32,32"},
                     headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and not again.content
    other = pacs.get(url + "/frames/1/rendered", params={"window": "-600,1500", "viewport": "32,32"})
    assert other.headers["etag"] != first.headers["etag"] and other.content != first.content
    png = pacs.get(url + "/rendered", headers={"Accept": "image/png, image/jpeg;q=0.9"})
    assert png.headers["content-type"] == "image/png"
    assert pacs.get(url + "/rendered", headers={"Accept": "image/gif"}).status_code == 406
    for bad in ({"window": "40"}, {"window": "40,0"}, {"window": "40,400,cubic"}, {"viewport": "0,10"},
                {"quality": "101"}):
        assert pacs.get(url + "/rendered", params=bad).status_code == 400, bad
    assert pacs.get(url + "/frames/2/rendered").status_code == 404
    for thumbnail in (f"/dicomweb/studies/{spec.study_uid}/thumbnail",
                      f"/dicomweb/studies/{spec.study_uid}/series/{datasets[0].SeriesInstanceUID}/thumbnail",
                      url + "/thumbnail"):
        answer = pacs.get(thumbnail)
        assert answer.status_code == 200 and max(Image.open(io.BytesIO(answer.content)).size) <= 200


def test_the_worker_makes_new_images_default_pictures_ahead_and_the_web_answers_with_them(app, session, runtime,
                                                                                         tmp_path):
    spec = synthetic.StudySpec(instances=2)
    images = synthetic.study(spec)
    [broken] = synthetic.study(synthetic.StudySpec(instances=1, jpeg=True, patient_id=spec.patient_id))
    broken.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + b"\x13" * 100 + b"\xff\xd9"])
    document = synthetic.pdf_report(spec, synthetic.minimal_pdf("text"))
    instances = stored(session, runtime, tmp_path, [*images, broken, document])
    queued = [task for task in runtime.huey.pending() if task.name == render.RENDER_AHEAD]
    assert sorted(id_ for task in queued for id_ in task.args[0]) == sorted(i.id for i in instances[:3])

    before = render.STATS["decodes"]
    assert sum(runtime.huey.execute(task) for task in queued) == 2  # the damaged one is left to explain itself
    assert sum(runtime.huey.execute(task) for task in queued) == 0  # kept already
    kept = [render.kept_picture(runtime, render.cache_key(i, 1, **render.DEFAULT_PICTURE)) for i in instances[:3]]
    assert kept[0] and kept[1] and kept[2] is None

    pacs = TestClient(app, base_url="https://testserver", headers={"Authorization": f"Bearer {TOKEN}"})
    def url(ds):
        return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    decodes = render.STATS["decodes"]
    first = pacs.get(url(images[0]) + "/rendered")
    assert first.status_code == 200 and first.content == kept[0]
    assert render.STATS["decodes"] == decodes  # the worker decoded it, the web process did not
    assert decodes > before

    folder = runtime.blobs.local_path("rendered")
    path = next(p for p in folder.rglob("*.jpg") if p.read_bytes() == kept[1])
    path.write_bytes(kept[1][: len(kept[1]) // 2])  # a machine that stopped while writing it
    again = pacs.get(url(images[1]) + "/frames/1/rendered")
    assert again.status_code == 200 and again.content == kept[1] and path.read_bytes() == kept[1]
    assert render.STATS["decodes"] == decodes + 1

    assert pacs.get(url(images[0]) + "/rendered", params={"window": "40,400"}).status_code == 200
    assert len(list(folder.rglob("*.jpg"))) == 2  # only default pictures are kept on disk
    assert pacs.get(url(broken) + "/rendered").status_code == 422
