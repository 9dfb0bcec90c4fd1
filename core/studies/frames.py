"""Single frames out of stored files, without reading the whole file (WADO-RS ``/frames``).

A native frame is a byte range of the Pixel Data value; a compressed one is read from
the encapsulated fragments with pydicom. Where the Pixel Data value starts is learnt
once per stored file and remembered (bounded), so a viewer asking for hundreds of
frames of a series costs one seek and one read per frame.
"""
from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pack_bits, pixel_array

from core.i18n import gettext as _
from core.studies.models import Instance
from core.studies.render import CannotRender, open_blob

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})
# Media types of compressed frames (PS3.18 Table 8.7.3-5)
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
UNDEFINED = 0xFFFFFFFF
PLACES_KEPT = 4096


@dataclass(frozen=True)
class Place:
    """Where a stored file's Pixel Data value starts and how long it is (UNDEFINED: encapsulated)."""

    offset: int
    length: int


class _Places:
    def __init__(self):
        self.entries: OrderedDict[str, Place] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> Place | None:
        with self.lock:
            return self.entries.get(key)

    def put(self, key: str, place: Place) -> None:
        with self.lock:
            self.entries[key] = place
            while len(self.entries) > PLACES_KEPT:
                self.entries.popitem(last=False)


def _places(runtime) -> _Places:
    return runtime.cache("pixel_places", _Places)


def header_number(instance: Instance, tag: str, fallback: int) -> int:
    try:
        return int((instance.header or {})[tag]["Value"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return fallback


def is_native(instance: Instance) -> bool:
    return instance.transfer_syntax in NATIVE_SYNTAXES


def can_decode(transfer_syntax: str) -> bool:
    """Whether an installed pixel handler decodes this syntax (for transcoding on retrieve)."""
    if transfer_syntax in NATIVE_SYNTAXES:
        return True
    try:
        return get_decoder(transfer_syntax).is_available
    except Exception:
        return False


def _locate(handle, transfer_syntax: str) -> Place | None:
    pydicom.dcmread(handle, stop_before_pixels=True)
    position = handle.tell()
    head = handle.read(12)
    if len(head) < 8:
        return None
    order = ">" if transfer_syntax == EXPLICIT_BE else "<"
    if struct.unpack(order + "HH", head[:4]) not in PIXEL_TAGS:
        return None
    if transfer_syntax == IMPLICIT_LE:
        return Place(position + 8, struct.unpack(order + "I", head[4:8])[0])
    return Place(position + 12, struct.unpack(order + "I", head[8:12])[0])


def _place(runtime, instance: Instance, handle) -> Place:
    key = f"{instance.blob_key}:{instance.sha256}"
    places = _places(runtime)
    found = places.get(key)
    if found is None:
        try:
            found = _locate(handle, instance.transfer_syntax)
        except Exception:
            found = None
        if found is None:
            raise CannotRender(_("This item has no image data."))
        places.put(key, found)
    return found


def stored_frame(runtime, instance: Instance, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: the compressed bitstream, or native pixels
    (little endian, as PS3.18 sends native frames)."""
    _check_number(instance, number)
    if instance.transfer_syntax in (DEFLATED_LE, EXPLICIT_BE) or header_number(instance, "00280100", 16) % 8:
        return decoded_frame(runtime, instance, number)  # not a plain byte range of the file
    with open_blob(runtime, instance) as handle:
        place = _place(runtime, instance, handle)
        if is_native(instance):
            size = _frame_size(instance)
            if place.length != UNDEFINED and place.length < size * number:
                raise CannotRender(_("The image data of this frame is damaged or in a form that cannot be decoded."))
            handle.seek(place.offset + size * (number - 1))
            return handle.read(size)
        handle.seek(place.offset)
        try:
            return get_frame(handle, number - 1, number_of_frames=max(instance.frames, 1))
        except Exception:
            raise CannotRender(_("The image data of this frame is damaged or in a form that cannot be decoded.")) \
                from None


def decoded_frame(runtime, instance: Instance, number: int) -> bytes:
    """Frame ``number`` decoded to native pixels, little endian (colour as interleaved RGB)."""
    _check_number(instance, number)
    try:
        with open_blob(runtime, instance) as handle:
            # native data keeps its photometric interpretation; decoded colour comes out as RGB
            pixels = pixel_array(handle, index=number - 1, raw=is_native(instance))
    except Exception:
        raise CannotRender(_("The image data of this frame is damaged or in a form that cannot be decoded.")) \
            from None
    if header_number(instance, "00280100", 16) == 1:
        return pack_bits(pixels)
    return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()


def _frame_size(instance: Instance) -> int:
    return (max(instance.rows or 0, 0) * max(instance.columns or 0, 0) * header_number(instance, "00280002", 1)
            * (header_number(instance, "00280100", 16) // 8))


def _check_number(instance: Instance, number: int) -> None:
    if not instance.rows:
        raise CannotRender(_("This item has no image data."))
    if not 1 <= number <= max(instance.frames, 1):
        raise CannotRender(_("This image has no frame %(frame)s.", frame=number))


def bulk_value(runtime, instance: Instance, tag: str) -> bytes | None:
    """The value of a bulk data element (``tag`` as 8 hex digits) anywhere in the stored file."""
    wanted = int(tag, 16)
    with open_blob(runtime, instance) as handle:
        # the pixel data (often most of the file) is read only when it is what is asked for
        dataset = pydicom.dcmread(handle, stop_before_pixels=wanted < 0x7FE00008)
    for element in dataset.iterall():
        if element.tag == wanted and isinstance(element.value, (bytes, bytearray)):
            return bytes(element.value)
    return None


def explicit_little_endian(runtime, instance: Instance) -> bytes:
    """The whole instance re-encoded in Explicit VR Little Endian (decompressed if need be), for a
    client that does not take the stored transfer syntax. Read into memory: one instance at a time."""
    from io import BytesIO

    try:
        with open_blob(runtime, instance) as handle:
            dataset = pydicom.dcmread(handle)
        if instance.transfer_syntax not in NATIVE_SYNTAXES:
            dataset.decompress()
        elif instance.transfer_syntax == EXPLICIT_BE and "PixelData" in dataset:
            pixels = dataset.pixel_array  # values, so the bytes can be written in the other order
            dataset.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
        dataset.file_meta.TransferSyntaxUID = EXPLICIT_LE
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
    except Exception:
        raise CannotRender(_("The image data of this frame is damaged or in a form that cannot be decoded.")) \
            from None
    return buffer.getvalue()
