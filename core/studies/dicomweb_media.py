"""Media types of DICOMweb (PS3.18 §8.7): reading Accept headers and writing
multipart/related bodies.

An Accept header is read into *choices*: the part media type a client takes inside
``multipart/related`` (or alone), the transfer syntax it asks for (``*`` for any,
None for the media type's default) and its quality. ``accepts`` answers whether a
given representation is among them.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# The transfer syntax a part type means when the client names none (PS3.18 Table 8.7.3-2, -5)
DEFAULT_SYNTAX = {"application/dicom": EXPLICIT_LE, "application/octet-stream": EXPLICIT_LE,
                  "image/jpeg": JPEG_BASELINE, "image/jls": "1.2.840.10008.1.2.4.80",
                  "image/jp2": "1.2.840.10008.1.2.4.90", "image/jpx": "1.2.840.10008.1.2.4.92",
                  "image/dicom-rle": "1.2.840.10008.1.2.5", "image/jphc": "1.2.840.10008.1.2.4.201"}


@dataclass(frozen=True)
class Choice:
    part_type: str  # e.g. "application/dicom", "image/*", "*/*"
    transfer_syntax: str | None
    quality: float
    multipart: bool


def split_quoted(text: str, separator: str) -> list[str]:
    """``text`` cut at ``separator`` outside double quotes."""
    parts, current, quoted = [], [], False
    for character in text:
        if character == '"':
            quoted = not quoted
        if character == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def parse_accept(header: str | None, default_part: str) -> list[Choice]:
    """The choices an Accept header offers, best first. No header accepts anything."""
    if not header or not header.strip():
        return [Choice("*/*", "*", 1.0, True)]
    choices: list[Choice] = []
    for item in split_quoted(header, ","):
        media, *pieces = [piece.strip() for piece in split_quoted(item, ";")]
        if not media:
            continue
        parameters = {}
        for piece in pieces:
            name, _sep, value = piece.partition("=")
            parameters[name.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(parameters.get("q") or 1)
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        media, syntax = media.lower(), parameters.get("transfer-syntax") or None
        if media == "multipart/related":
            choices.append(Choice((parameters.get("type") or default_part).lower(), syntax, quality, True))
        elif media in ("*/*", "multipart/*"):
            choices.append(Choice("*/*", syntax or "*", quality, True))
        else:
            choices.append(Choice(media, syntax, quality, False))
    return sorted(choices, key=lambda choice: -choice.quality)


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media_type.split("/")[0] == pattern[:-2]
    return pattern == media_type


def accepts(choices: list[Choice], media_type: str, transfer_syntax: str | None = None,
            *, multipart: bool | None = None) -> Choice | None:
    """The best choice that takes ``media_type`` in ``transfer_syntax`` (None: any syntax)."""
    for choice in choices:
        if multipart is not None and choice.multipart != multipart and choice.part_type != "*/*":
            continue
        if not _type_matches(choice.part_type, media_type):
            continue
        if transfer_syntax is None or choice.transfer_syntax == "*" or choice.transfer_syntax == transfer_syntax:
            return choice
        if choice.transfer_syntax is None and ("*" in choice.part_type
                                               or DEFAULT_SYNTAX.get(media_type) == transfer_syntax):
            return choice
    return None


def acceptable_json(header: str | None) -> bool:
    """Whether the client takes DICOM JSON (QIDO-RS results, metadata, STOW-RS answers)."""
    for choice in parse_accept(header, "application/dicom+json"):
        if any(_type_matches(choice.part_type, kind) for kind in ("application/dicom+json", "application/json")):
            return True
    return False


class Multipart:
    """A multipart/related body written part by part."""

    def __init__(self, part_type: str, transfer_syntax: str | None = None):
        self.boundary = secrets.token_hex(16)
        self.part_type = part_type
        self.transfer_syntax = transfer_syntax
        self._first = True

    @property
    def content_type(self) -> str:
        syntax = f"; transfer-syntax={self.transfer_syntax}" if self.transfer_syntax else ""
        return f'multipart/related; type="{self.part_type}"{syntax}; boundary={self.boundary}'

    def head(self, content_type: str, location: str | None = None) -> bytes:
        """What goes before a part's bytes (its delimiter and headers)."""
        lead = b"" if self._first else b"\r\n"
        self._first = False
        headers = f"--{self.boundary}\r\nContent-Type: {content_type}\r\n"
        if location:
            headers += f"Content-Location: {location}\r\n"
        return lead + headers.encode("latin-1") + b"\r\n"

    def end(self) -> bytes:
        return (b"" if self._first else b"\r\n") + f"--{self.boundary}--\r\n".encode("latin-1")
