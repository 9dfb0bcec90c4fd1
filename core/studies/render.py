"""Frames as pictures: JPEG or PNG of one frame, windowed and scaled, for DICOMweb's
``/rendered`` and ``/thumbnail`` and the patient pages' "view / download as JPG".

Pixels are decoded by pydicom's handlers (native, JPEG, JPEG-LS, JPEG 2000, RLE through
pylibjpeg and Pillow), then: Modality LUT (rescale), VOI (the asked window, else the
file's, else the frame's own range; linear or sigmoid), MONOCHROME1 inverted, colour
converted to RGB. Results are kept in a bounded in-memory LRU per runtime, so the
viewer's repeated requests cost no decoding.

A frame's default picture (what ``/rendered`` gives without parameters) is also kept on
disk beside the blobs (``rendered/``), where every web process finds it: the worker makes
it for each new image after ingest (``render_ahead``), so even the first request for it
decodes nothing. Instances never change (a SOP Instance UID is stored once), so a kept
picture never goes stale; deleting the folder only costs renderings.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from io import BytesIO
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.i18n import gettext as _
from core.studies.models import Instance

_log = logging.getLogger("filmless.render")

# Only ``sha256``, ``blob_key``, ``rows``, ``columns`` and ``frames`` of an instance are read here,
# so a query row with those columns serves as well as an ``Instance``.

CACHE_BYTES = 64 * 2**20
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
FUNCTIONS = ("linear", "sigmoid")
# Frames decoded since start-up: tests read it to tell a cache hit from a decode.
STATS = {"decodes": 0}
DEFAULT_PICTURE = dict(window=None, function="linear", size=None, fmt="jpeg", quality=90)
_DEFAULT_OPTIONS = (None, "linear", None, "jpeg", 90)  # DEFAULT_PICTURE as cache_key puts it
RENDER_AHEAD = "core.render_ahead"


class CannotRender(Exception):
    """A frame whose pixels cannot be decoded or shown; ``message`` says why, translated."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RenderCache:
    """Rendered pictures by key, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes, self.size = max_bytes, 0
        self._entries: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.max_bytes // 4:
            return  # one huge picture would push out everything else
        with self._lock:
            previous = self._entries.pop(key, None)
            self.size -= len(previous) if previous is not None else 0
            self._entries[key] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _key, dropped = self._entries.popitem(last=False)
                self.size -= len(dropped)


def cache_of(runtime) -> RenderCache:
    """The runtime's cache (made on first use; one per site, so two sites never share pictures)."""
    return runtime.cache("render_cache", RenderCache)


@contextmanager
def open_blob(runtime, instance: Instance) -> Iterator[BinaryIO]:
    handle = runtime.blobs.open(instance.blob_key)
    try:
        yield handle
    finally:
        handle.close()


def cache_key(instance: Instance, frame: int, window, function: str, size, fmt: str, quality: int) -> tuple:
    window = tuple(round(float(v), 4) for v in window) if window else None
    size = tuple(int(v) for v in size) if size else None
    return (instance.sha256, frame, window, function, size, fmt, quality if fmt == "jpeg" else 0)


def etag(key: tuple) -> str:
    """A strong validator of a rendering (its ``cache_key``): same stored file and same parameters,
    same picture."""
    return '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:32] + '"'


def rendered(runtime, instance: Instance, frame: int = 1, *, window: tuple[float, float] | None = None,
             size: tuple[int, int] | None = None, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Frame ``frame`` (1-based) of ``instance`` as JPEG or PNG bytes; ``window`` is (centre, width)
    in rescaled units, ``size`` the largest (width, height) to fit in. Raises ``CannotRender``."""
    return render_frame(runtime, instance, frame, window=window, size=size, fmt=fmt, quality=quality)


def full_picture(runtime, instance: Instance, frame: int = 1, *, window: tuple[float, float] | None = None,
                 quality: int = 92) -> bytes:
    """Frame ``frame`` as a JPEG at full resolution, not kept in the cache (exports make
    many pictures that are each asked for once). Raises ``CannotRender``."""
    pixels, dataset = decode(runtime, instance, frame)
    return encode(to_picture(pixels, dataset, window, "linear"), "jpeg", quality)


def render_frame(runtime, instance: Instance, frame: int = 1, *, window: tuple[float, float] | None = None,
                 function: str = "linear", size: tuple[int, int] | None = None, fmt: str = "jpeg",
                 quality: int = 90) -> bytes:
    """``rendered`` with the VOI function too (``linear`` or ``sigmoid``, DICOMweb's ``window``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    quality = min(max(int(quality), 1), 100)
    key = cache_key(instance, frame, window, function, size, fmt, quality)
    cache = cache_of(runtime)
    found = cache.get(key) or kept_picture(runtime, key)
    if found is not None:
        cache.put(key, found)
        return found
    data = _render(runtime, instance, frame, window, function, size, fmt, quality)
    cache.put(key, data)
    keep_picture(runtime, key, data)
    return data


def _render(runtime, instance, frame: int, window, function: str, size, fmt: str, quality: int) -> bytes:
    pixels, dataset = decode(runtime, instance, frame)
    picture = to_picture(pixels, dataset, window, function)
    if size:
        picture = fit(picture, size)
    return encode(picture, fmt, quality)


# -- default pictures kept on disk ----------------------------------------------------------------

def _kept_path(runtime, key: tuple):
    """Where the picture ``key`` is kept, if it is a default one and the blob store is on this
    machine (other pictures are only in memory: the parameters a viewer may send are endless)."""
    sha256, frame, *options = key
    if tuple(options) != _DEFAULT_OPTIONS or not sha256:
        return None
    return runtime.blobs.local_path(f"rendered/{sha256[:2]}/{sha256}-{frame}.jpg")


def kept_picture(runtime, key: tuple) -> bytes | None:
    """The kept default picture ``key``, or None. A file cut short (a machine that stopped
    while writing it) does not end as a JPEG does, and counts as none."""
    path = _kept_path(runtime, key)
    try:
        data = path.read_bytes() if path is not None else None
    except OSError:
        return None
    return data if data and data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9" else None


def keep_picture(runtime, key: tuple, data: bytes) -> None:
    """Keep a default picture for every process (no sync: a lost one is rendered again)."""
    path = _kept_path(runtime, key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{uuid.uuid4().hex}.part")
        partial.write_bytes(data)
        os.replace(partial, path)  # a reader sees the whole picture or none
    except OSError:  # a full disk costs a rendering later, never this answer
        _log.warning("could not keep the picture %s", path, exc_info=True)


def render_ahead(runtime, instance_ids: list[int]) -> int:
    """Make and keep the default picture of the first frame of each of ``instance_ids`` (the
    worker's ``core.render_ahead`` task, queued after ingest); how many were made. Images that
    cannot be rendered are left for ``/rendered`` to explain."""
    from sqlalchemy import select

    made = 0
    with runtime.sessions() as session:
        instances = session.execute(select(Instance.sha256, Instance.blob_key, Instance.rows, Instance.columns,
                                           Instance.frames)
                                    .where(Instance.id.in_(instance_ids), Instance.rows.is_not(None))).all()
    for instance in instances:
        key = cache_key(instance, 1, **DEFAULT_PICTURE)
        if _kept_path(runtime, key) is None or kept_picture(runtime, key) is not None:
            continue
        try:
            keep_picture(runtime, key, _render(runtime, instance, 1, **DEFAULT_PICTURE))
            made += 1
        except CannotRender:
            continue
    return made


def queue_render_ahead(runtime, instance_ids: list[int]) -> None:
    """Ask the worker to ``render_ahead`` these new instances, if their pictures can be kept."""
    if not instance_ids or runtime.blobs.local_path("rendered") is None:
        return
    task = next((task for task in runtime.tasks if getattr(task, "name", None) == RENDER_AHEAD), None)
    try:
        if task is not None:
            task(instance_ids)
    except Exception:  # the instances are stored: a queue that cannot take this costs renderings only
        _log.warning("could not queue the rendering of %d new images", len(instance_ids), exc_info=True)


def decode(runtime, instance: Instance, frame: int) -> tuple[np.ndarray, Dataset]:
    """The pixel values of one frame (colour as RGB) and the dataset describing them."""
    if not instance.rows or not instance.columns:
        raise CannotRender(_("This item is a document, not an image, so it cannot be shown as a picture."))
    if not 1 <= frame <= max(instance.frames, 1):
        raise CannotRender(_("This image has no frame %(frame)s.", frame=frame))
    STATS["decodes"] += 1
    try:
        with open_blob(runtime, instance) as handle:
            try:
                found = native_grey_frame(handle, frame - 1)
            except Exception:  # pydicom's own reading below says what is wrong, if anything
                found = None
            if found is None:
                handle.seek(0)
                dataset = Dataset()
                found = pixel_array(handle, ds_out=dataset, index=frame - 1), dataset
    except Exception:  # every decoder failure means the same thing to the reader
        raise CannotRender(_("The image data of this frame is damaged or in a form that cannot be decoded.")) \
            from None
    return found


def native_grey_frame(handle: BinaryIO, index: int) -> tuple[np.ndarray, Dataset] | None:
    """Frame ``index`` of uncompressed little-endian greyscale pixels (most CT and MR), read
    straight from its place in the file: the same values as pydicom's ``pixel_array`` (unused
    high bits cleared as it does), at half its cost. None for every other kind of pixel data."""
    dataset = dcmread(handle, stop_before_pixels=True)  # leaves the file at the element that stopped it
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    allocated, stored = dataset.get("BitsAllocated"), dataset.get("BitsStored")
    if (syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or dataset.get("SamplesPerPixel", 1) != 1
            or allocated not in (8, 16) or not stored or not 0 < stored <= allocated
            or dataset.get("PixelRepresentation") not in (0, 1) or not dataset.get("Rows") or not dataset.get("Columns")):
        return None
    head = handle.read(12 if syntax == ExplicitVRLittleEndian else 8)
    if head[:4] != b"\xe0\x7f\x10\x00":  # (7FE0,0010) Pixel Data, not Float Pixel Data or another element
        return None
    length = int.from_bytes(head[8:12] if syntax == ExplicitVRLittleEndian else head[4:8], "little")
    shape = (dataset.Rows, dataset.Columns)
    size = shape[0] * shape[1] * allocated // 8
    if length == 0xFFFFFFFF or length < (index + 1) * size:
        return None
    handle.seek(index * size, 1)
    data = bytearray(handle.read(size))
    if len(data) != size:
        return None
    kind = "i" if dataset.PixelRepresentation else "u"
    pixels = np.frombuffer(data, dtype=f"<{kind}{allocated // 8}").reshape(shape)
    if stored < allocated:  # as pydicom does: the unused bits shifted out (and the sign in)
        np.left_shift(pixels, allocated - stored, out=pixels)
        np.right_shift(pixels, allocated - stored, out=pixels)
    return pixels, dataset


def _first(value, fallback=None):
    if value is None or value == "":
        return fallback
    try:
        return float(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return fallback


def to_picture(pixels: np.ndarray, dataset: Dataset, window=None, function: str = "linear") -> Image.Image:
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
        return Image.fromarray(_to_8bit(pixels, 16 if pixels.dtype.itemsize > 1 else 8), "RGB")
    if samples == 3 or pixels.ndim == 3:
        bits = int(dataset.get("BitsStored", 8) or 8)
        return Image.fromarray(_to_8bit(pixels, bits), "RGB")
    if window is None and dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None:
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        window = (center, width) if center is not None and width else None
        function = "sigmoid" if str(dataset.get("VOILUTFunction", "")).upper() == "SIGMOID" else "linear"
    lowest, highest = int(pixels.min()), int(pixels.max())
    if pixels.dtype.kind in "iu" and highest - lowest < 2**20:
        # every distinct stored value once, through a lookup table: a fraction of the work
        # of transforming each pixel in floating point
        table = _grey(np.arange(lowest, highest + 1, dtype=np.int64), dataset, window, function)
        if pixels.dtype.kind == "u":  # every value is at least ``lowest``: no wider type needed
            offsets = pixels - pixels.dtype.type(lowest)
        else:
            offsets = np.subtract(pixels, lowest, dtype=np.int32 if pixels.dtype.itemsize <= 2 else np.int64)
        grey = np.take(table, offsets)
    else:
        grey = _grey(pixels, dataset, window, function)
    if photometric == "MONOCHROME1":  # low values are white
        grey = 255 - grey
    return Image.fromarray(grey, "L")


def _grey(values: np.ndarray, dataset: Dataset, window, function: str) -> np.ndarray:
    """Stored values to grey levels 0..255: Modality LUT, then the window (or VOI LUT, or the range)."""
    values = apply_modality_lut(values, dataset).astype(np.float64)
    if window is None and "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset).astype(np.float64)
    if window is not None:
        grey = voi(values, float(window[0]), max(float(window[1]), 1.0), function)
    else:
        low, high = float(values.min()), float(values.max())
        grey = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def voi(values: np.ndarray, center: float, width: float, function: str = "linear") -> np.ndarray:
    """The VOI LUT functions of PS3.3 C.11.2.1.2 to 0..255."""
    if function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if width <= 1:
        return np.where(values <= center - 0.5, 0.0, 255.0)
    return np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0, 255)


def _to_8bit(pixels: np.ndarray, bits: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    top = float(2 ** min(max(bits, 1), 16) - 1)
    return np.clip(pixels.astype(np.float64) / top * 255.0, 0, 255).astype(np.uint8)


def fit(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scaled to fit in (width, height), keeping its proportions (DICOMweb's ``viewport``)."""
    width, height = size
    scale = min(width / picture.width, height / picture.height)
    target = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture if target == picture.size else picture.resize(target, Image.Resampling.LANCZOS)


def encode(picture: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buffer = BytesIO()
    if fmt == "png":
        picture.save(buffer, format="PNG", compress_level=3)
    else:
        picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
