"""One pass over the raw bytes of a common header: its DICOM JSON model and the values the
store keeps, without building a pydicom dataset.

Reading a header through pydicom and turning it into JSON costs more than anything else
an instance costs at ingest, and nearly every file a PACS sends is the same simple kind:
little endian, explicit VR (uncompressed or one of the compressed syntaxes) or implicit VR
with public tags whose VR the dictionary settles, plain text in the default, Latin-1 or
UTF-8 character set, no UN values. ``scan`` reads those and
returns exactly what ``dicom.read_header`` and ``dicom.stored_values`` would (the tests hold
it to that over pydicom's own test files). For anything else, and for any file with
something wrong in it, it returns None: pydicom then reads the file and says what is wrong.
"""
from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword

from core.studies import dicom

PREAMBLE = 128
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"SV", b"UV"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
LATIN1_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # pydicom's convert_string
TEXT_VRS = frozenset({"SH", "LO", "UC"})  # in the character set, split, each right-stripped
SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
KNOWN_VRS = (BINARY_VRS | set(NUMBER_FORMATS) | LATIN1_VRS | TEXT_VRS | SINGLE_TEXT_VRS
             | {"AE", "AT", "DS", "IS", "PN", "SQ", "UI", "UR"})
KNOWN_VRS_BYTES = frozenset(vr.encode("ascii") for vr in KNOWN_VRS)
# encapsulated and uncompressed syntaxes that are all explicit VR little endian
EXPLICIT_LITTLE = re.compile(r"^1\.2\.840\.10008\.1\.2\.(1|4\.\d+|5)$")
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
CHARACTER_SETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
CONTROL = re.compile(rb"[\x00-\x1f]")
INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
DECIMAL = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset((group << 16) | element for group, element in dicom.PIXEL_TAGS)
CHARACTER_SET_TAG = 0x00080005
INLINE_LIMIT = (dicom.BULK_THRESHOLD // 4) * 3  # pydicom's: the base64 text, not the bytes
HEAD = 1 << 16
ELEMENT = struct.Struct("<HH2sH")
ELEMENT_TAG = struct.Struct("<HH")
LONG_LENGTH = struct.Struct("<I")
ITEM_HEAD = struct.Struct("<HHI")


class Uncommon(Exception):
    """Not the kind of header this module reads: pydicom reads it."""


class _Bytes:
    """The file's bytes, read as far as the scan needs them."""

    def __init__(self, handle, size: int):
        self.handle, self.size = handle, size
        self.data = handle.read(min(size, HEAD))

    def need(self, end: int) -> bytes:
        if end > self.size:
            raise Uncommon  # a value longer than the file: damaged, and pydicom says so
        if end > len(self.data):
            self.data += self.handle.read(max(end, 2 * len(self.data)) - len(self.data))
        return self.data


def scan(path: Path, size: int) -> dict | None:
    """``dicom.stored_values`` of the file (without ``sha256``), or None when it is uncommon."""
    try:
        with open(path, "rb") as handle:
            source = _Bytes(handle, size)
            data = source.need(PREAMBLE + 4)
            if data[PREAMBLE:PREAMBLE + 4] != b"DICM":
                return None
            transfer_syntax, position = _file_meta(source, PREAMBLE + 4)
            implicit = transfer_syntax == IMPLICIT_LITTLE
            if not (implicit or EXPLICIT_LITTLE.match(transfer_syntax)):
                return None
            header, stopped = _Scanner(source, implicit).dataset(position, size, top=True)
            has_pixels = dicom.check_pixel_data(handle, stopped, size, transfer_syntax)
        return _stored_values(header, transfer_syntax, size, has_pixels)
    except Exception:  # uncommon, or something wrong in it: pydicom's reading decides
        return None


def _file_meta(source: _Bytes, position: int) -> tuple[str, int]:
    """The transfer syntax, and where the dataset begins (group 0002 is explicit little endian)."""
    transfer_syntax = None
    while True:
        data = source.need(position + 8)
        group, element, vr, length = ELEMENT.unpack_from(data, position)
        if group != 2:
            if transfer_syntax is None:
                raise Uncommon
            return transfer_syntax, position
        if vr not in KNOWN_VRS_BYTES or vr == b"SQ":
            raise Uncommon  # pydicom may take the group for implicit VR then, and read it otherwise
        start = position + 8
        if vr in LONG_VRS:
            length = LONG_LENGTH.unpack_from(source.need(start + 4), start)[0]
            start += 4
        data = source.need(start + length)
        number = NUMBER_FORMATS.get(vr.decode("ascii"))
        if number and length % struct.calcsize("<" + number):
            raise Uncommon  # pydicom refuses such a value
        if element == 0x0010:
            if vr != b"UI":
                raise Uncommon
            transfer_syntax = data[start:start + length].decode("ascii").rstrip("\0 ")
        position = start + length


class _Scanner:
    def __init__(self, source: _Bytes, implicit: bool):
        self.source, self.implicit, self.encoding = source, implicit, "ascii"

    def dataset(self, position: int, end: int, *, top: bool = False, delimited: bool = False):
        """The JSON of the elements from ``position`` to ``end`` (or to an item delimiter), and
        where it stopped: at the end, after the delimiter, or (top level) at the pixel data."""
        found, size = {}, self.source.size
        while position < end:
            if end - position < 8:
                raise Uncommon  # a tag cut short
            data = self.source.need(position + 8)
            group, element = ELEMENT_TAG.unpack_from(data, position)
            tag = (group << 16) | element
            if tag == ITEM_END and delimited:
                return found, position + 8
            if top and tag in PIXEL_TAGS:
                return found, position
            if group == 0xFFFE:
                raise Uncommon
            vr, start, length = self._head(data, position, group, element, tag)
            if tag == CHARACTER_SET_TAG:
                if not top:
                    raise Uncommon  # a character set of an item's own
                self.encoding = self._character_set(vr, start, length)
            if vr == "SQ":
                found[f"{tag:08X}"], position = self.sequence(start, length)
            elif length == 0xFFFFFFFF or start + length > min(end, size):
                raise Uncommon
            else:
                found[f"{tag:08X}"] = self.element(tag, vr, start, length)
                position = start + length
        if delimited or position != end:
            raise Uncommon  # no delimiter, or an element running past its item
        return found, position

    def _head(self, data: bytes, position: int, group: int, element: int, tag: int) -> tuple[str, int, int]:
        """(VR, where the value starts, its length) of the element at ``position``."""
        if self.implicit:
            return _implicit_vr(group, element, tag), position + 8, LONG_LENGTH.unpack_from(data, position + 4)[0]
        _group, _element, vr_bytes, length = ELEMENT.unpack_from(data, position)
        if vr_bytes not in KNOWN_VRS_BYTES:
            raise Uncommon
        start = position + 8
        if vr_bytes in LONG_VRS:
            length = LONG_LENGTH.unpack_from(self.source.need(start + 4), start)[0]
            start += 4
        return vr_bytes.decode("ascii"), start, length

    def _character_set(self, vr: str, start: int, length: int) -> str:
        value = self.source.need(start + length)[start:start + length].decode("ascii").strip(" \0")
        if vr != "CS" or value not in CHARACTER_SETS:
            raise Uncommon
        return CHARACTER_SETS[value]

    def sequence(self, position: int, length: int) -> tuple[dict, int]:
        items = []
        delimited = length == 0xFFFFFFFF
        end = self.source.size if delimited else position + length
        if end > self.source.size:
            raise Uncommon
        while position < end:
            data = self.source.need(position + 8)
            group, element, item_length = ITEM_HEAD.unpack_from(data, position)
            tag = (group << 16) | element
            position += 8
            if tag == SEQUENCE_END and delimited:
                return {"vr": "SQ", "Value": items}, position
            if tag != ITEM:
                raise Uncommon
            if item_length == 0xFFFFFFFF:
                item, position = self.dataset(position, self.source.size, delimited=True)
            else:
                item, position = self.dataset(position, position + item_length)
            items.append(item)
        if delimited or position != end:
            raise Uncommon
        return {"vr": "SQ", "Value": items}, position

    def element(self, tag: int, vr: str, start: int, length: int) -> dict:
        found = {"vr": vr}
        if vr in BINARY_VRS:
            if length > INLINE_LIMIT:
                found["BulkDataURI"] = f"bulk:{tag:08X}"
            elif length:
                data = self.source.need(start + length)
                found["InlineBinary"] = base64.b64encode(data[start:start + length]).decode("ascii")
            return found
        raw = self.source.need(start + length)[start:start + length]
        values = self._values(vr, raw)
        if values:
            found["Value"] = values
        return found

    def _values(self, vr: str, raw: bytes) -> list:
        if vr in NUMBER_FORMATS:
            code = NUMBER_FORMATS[vr]
            width = struct.calcsize("<" + code)
            if len(raw) % width:
                raise Uncommon
            return list(struct.unpack(f"<{len(raw) // width}{code}", raw))
        if vr == "AT":
            if len(raw) % 4:
                raise Uncommon
            return [f"{group:04X}{element:04X}" for group, element in struct.iter_unpack("<HH", raw)]
        if vr == "PN":
            names = raw.rstrip(b"\0 ").decode(self.encoding).split("\\")
            if names == [""]:
                return []
            if any(not name or name.count("=") > 2 or name.endswith("=") for name in names):
                raise Uncommon
            return [dict(zip(("Alphabetic", "Ideographic", "Phonetic"), name.split("="))) for name in names]
        if vr in TEXT_VRS:
            return _single_or_many([value.rstrip("\0 ") for value in raw.decode(self.encoding).split("\\")])
        if vr in SINGLE_TEXT_VRS:
            return _single_or_many([raw.decode(self.encoding).rstrip("\0 ")])
        if CONTROL.search(raw.rstrip(b"\0 ")):
            raise Uncommon  # pydicom strips some of these from some values
        text = raw.decode("ascii")  # pydicom reads these as Latin-1; anything else is uncommon here
        if vr == "UR":
            return _single_or_many([text.rstrip()])
        if vr == "AE":
            return _single_or_many([value.strip() for value in text.split("\\")])
        if vr == "UI":
            return _single_or_many(text.rstrip("\0 ").split("\\"))
        if vr in ("IS", "DS"):
            return _numbers(vr, text)
        return _single_or_many(text.rstrip(" \0").split("\\"))  # LATIN1_VRS



def _implicit_vr(group: int, element: int, tag: int) -> str:
    """The VR pydicom gives an implicit VR element: its dictionary's, a private creator's LO."""
    if group & 1:
        if 0x0010 <= element <= 0x00FF:
            return "LO"
        raise Uncommon  # a private value: its VR depends on the creator's dictionary
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise Uncommon from None
    if vr not in KNOWN_VRS:
        raise Uncommon  # "US or SS" and the like: pydicom decides from other values
    return vr


def _single_or_many(values: list[str]) -> list[str]:
    """pydicom's value list: one empty string is no value at all."""
    return [] if values == [""] else values


def _numbers(vr: str, text: str) -> list:
    stripped = text.strip() if vr == "DS" else text.rstrip(" \0")
    if stripped == "":
        return []
    pattern, kind = (INTEGER, int) if vr == "IS" else (DECIMAL, float)
    values = stripped.split("\\")
    if not all(pattern.match(value) for value in values):
        raise Uncommon  # empty or odd numbers: pydicom decides
    return [kind(value) for value in values]


def _first(header: dict, tag: str):
    values = header.get(tag, {}).get("Value") or [""]
    if len(values) > 1:
        raise Uncommon  # pydicom's str() of a multi-value is its list; let it say so
    return values[0]


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def _text(header: dict, keyword: str, limit: int = 200) -> str:
    value = _first(header, _tag(keyword))
    if isinstance(value, dict):
        value = "=".join(value.values())
    return str(value).strip()[:limit]


def _number(header: dict, keyword: str) -> int | None:
    values = header.get(_tag(keyword), {}).get("Value") or []
    try:
        return int(values[0]) if len(values) == 1 else None
    except (TypeError, ValueError):  # a name or a text where a number belongs, as pydicom's reading has it
        return None


def _stored_values(header: dict, transfer_syntax: str, size: int, has_pixels: bool) -> dict | None:
    """What ``dicom.stored_values`` keeps, or None when ``dicom.read_header`` would refuse the file."""
    try:
        uids = [_first(header, _tag(keyword)) for keyword in dicom.REQUIRED_UIDS]
        if not all(isinstance(uid, str) and uid and len(uid) <= 64 and dicom.UID.match(uid) for uid in uids):
            return None
        if not dicom.UID.match(transfer_syntax) or not _text(header, "PatientID"):
            return None
        if "00280010" in header and "00280011" in header and not has_pixels:
            return None
        name = _first(header, _tag("PatientName"))
        if isinstance(name, dict):
            alphabetic = name.get("Alphabetic", "").split("^")
            family, given = alphabetic[0].strip()[:100], (alphabetic[1] if len(alphabetic) > 1 else "").strip()[:100]
        else:  # not a name (a damaged VR): as dicom.person_name has it
            family, given = (str(name).strip()[:100] if name else ""), ""
        return dicom.kept_values(lambda keyword, limit: _text(header, keyword, limit),
                                 lambda keyword: _number(header, keyword), uids=uids, name=(family, given),
                                 transfer_syntax=transfer_syntax, size=size, header=header)
    except Uncommon:
        return None


def read(path: Path, *, max_bytes: int) -> dict:
    """``dicom.stored_values`` of a received file: a common header in one pass, any other
    through pydicom (``dicom.read_header``), which refuses a bad one with its reason."""
    size = path.stat().st_size
    fields = scan(path, size) if 0 < size <= max_bytes else None
    return fields if fields is not None else dicom.stored_values(dicom.read_header(path, max_bytes=max_bytes))
