"""A text report as a PDF the patient can keep or print, with no PDF library.

The writer uses the standard Helvetica fonts every PDF reader has (nothing is
embedded) with WinAnsi encoding, so Western European text (Spanish accents,
ñ, ¿, ¡) prints as written; a character outside that set becomes "?". Lines are
wrapped by the fonts' real glyph widths, pages break as needed, every page
carries a running header and "page N of M".
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from core.i18n import format_datetime
from core.i18n import gettext as _

LETTER = (612.0, 792.0)
A4 = (595.28, 841.89)
MARGIN = 56.0
FOOTER_SPACE = 28.0

# Advance widths (1/1000 em) of printable ASCII, from the standard Helvetica metrics.
_REGULAR_ASCII = [278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
                  556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
                  1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
                  667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
                  333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
                  556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584]
_BOLD_ASCII = [278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
               556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
               975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
               667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
               333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
               611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584]
# Non-ASCII characters whose width is not their base letter's.
_OTHER_WIDTHS = {"¿": 611, "¡": 333, "«": 556, "»": 556, "º": 365, "ª": 370, "€": 556, "–": 556, "—": 1000,
                 "‘": 222, "’": 222, "“": 333, "”": 333, "•": 350, "…": 1000, "°": 400, "ß": 611, "æ": 889,
                 "Æ": 1000, "ø": 611, "Ø": 778, "©": 737, "®": 737, "µ": 556, "×": 584, "·": 278, "\u00a0": 278}
FONTS = {"F1": ("Helvetica", _REGULAR_ASCII), "F2": ("Helvetica-Bold", _BOLD_ASCII)}


def winansi(text: str) -> str:
    """``text`` reduced to what WinAnsi can show: unknown characters become '?', tabs spaces."""
    text = text.replace("\t", "    ").replace("\r", "")
    return text.encode("cp1252", "replace").decode("cp1252")


def char_width(char: str, font: str = "F1") -> int:
    table = FONTS[font][1]
    if " " <= char <= "~":
        return table[ord(char) - 32]
    if char in _OTHER_WIDTHS:
        return _OTHER_WIDTHS[char]
    base = unicodedata.normalize("NFD", char)[0]  # é -> e: accents do not change the advance
    return table[ord(base) - 32] if " " <= base <= "~" else 556


def text_width(text: str, font: str, size: float) -> float:
    return sum(char_width(char, font) for char in text) * size / 1000


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Break one paragraph into lines no wider than ``width`` points (a very long word is cut)."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, font, size) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while text_width(word, font, size) > width:
            cut = len(word)
            while cut > 1 and text_width(word[:cut], font, size) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    lines.append(current)
    return lines


@dataclass
class Line:
    text: str
    font: str = "F1"
    size: float = 10.5
    leading: float = 14.5
    grey: bool = False
    rule_after: bool = False


def _literal(text: str) -> bytes:
    """A PDF literal string of ``text`` in WinAnsi: escapes for ( ) \\ and octal for the rest."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252", "replace"):
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    return bytes(out + b")")


def _utf16(text: str) -> bytes:
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode() + b">"


def _number(value: float) -> bytes:
    return (b"%.2f" % value).rstrip(b"0").rstrip(b".")


def _layout(head: list[Line], body: list[Line], running: str, page_size) -> list[list[tuple[Line, float]]]:
    """Place lines on pages: (line, baseline y) per page; the head only on the first page."""
    _, height = page_size
    bottom = MARGIN + FOOTER_SPACE
    pages: list[list[tuple[Line, float]]] = [[]]
    y = height - MARGIN
    for line in head + body:
        if y - line.leading < bottom:
            pages.append([])
            y = height - MARGIN
            top = Line(running, size=8.5, leading=12, grey=True, rule_after=True)
            y -= top.leading
            pages[-1].append((top, y))
            y -= 10
        y -= line.leading
        pages[-1].append((line, y))
        if line.rule_after:
            y -= 8
    return pages


def _page_stream(placed: list[tuple[Line, float]], footer: str, page_size) -> bytes:
    width, _height = page_size
    ops = []
    for line, y in placed:
        if line.text:
            colour = b"0.35 g" if line.grey else b"0 g"
            ops.append(b"BT %s /%s %s Tf %s %s Td %s Tj ET" % (colour, line.font.encode(), _number(line.size),
                                                             _number(MARGIN), _number(y), _literal(line.text)))
        if line.rule_after:
            rule_y = _number(y - 5)
            ops.append(b"0.6 G 0.6 w %s %s m %s %s l S" % (_number(MARGIN), rule_y, _number(width - MARGIN), rule_y))
    ops.append(b"BT 0.35 g /F1 8.5 Tf %s %s Td %s Tj ET" % (_number(MARGIN), _number(MARGIN), _literal(footer)))
    return b"\n".join(ops)


def document(*, title: str, head: list[Line], text: str, running: str, footer: str, page_size=LETTER) -> bytes:
    """A complete PDF: ``head`` lines on page one, then ``text`` (paragraphs split on newlines;
    a short line in capitals is set as a heading). ``footer`` may hold %(page)s and %(pages)s."""
    width = page_size[0] - 2 * MARGIN
    head = [Line(piece, line.font, line.size, line.leading, line.grey, line.rule_after and i == len(parts) - 1)
            for line in head for parts in [wrap(winansi(line.text), line.font, line.size, width)]
            for i, piece in enumerate(parts)]
    body: list[Line] = []
    for paragraph in winansi(text).split("\n"):
        stripped = paragraph.strip()
        if not stripped:
            body.append(Line("", leading=7))
            continue
        heading = len(stripped) < 60 and stripped.upper() == stripped and any(c.isalpha() for c in stripped)
        font = "F2" if heading else "F1"
        body.extend(Line(piece, font) for piece in wrap(paragraph.rstrip(), font, 10.5, width))
    pages = _layout(head, body, winansi(running), page_size)

    objects: list[bytes] = [b"", b""]  # catalog and page tree, filled in once the pages are numbered
    for name, (base_font, _widths) in FONTS.items():
        objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
                       % base_font.encode())
    objects.append(b"<< /Title %s /Producer (Filmless) >>" % _utf16(title))
    info = len(objects)
    page_refs = []
    for number, placed in enumerate(pages, 1):
        numbered = footer.replace("%(page)s", str(number)).replace("%(pages)s", str(len(pages)))
        stream = _page_stream(placed, winansi(numbered), page_size)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %s %s] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>"
                       % (_number(page_size[0]), _number(page_size[1]), len(objects)))
        page_refs.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % ref for ref in page_refs), len(page_refs))

    out, offsets = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"), []
    for number, body_bytes in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body_bytes)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, info, xref)
    return bytes(out)


def report_document(*, site_name: str, report, study, patient, page_size=LETTER) -> bytes:
    """The PDF of a text report: who, which exam, who signed it and when, then the text."""
    from core.studies.pages import patient_name, person_name, study_day

    name = patient_name(patient)
    exam = study.description or _("Exam")
    head = [Line(site_name, "F2", 15, 20), Line(report.title or _("Report"), "F2", 12.5, 18, rule_after=True)]
    facts = [(_("Patient"), name),
             (_("Date of birth"), study_day(patient.birth_date, "long") if patient else ""),
             (_("Exam"), exam), (_("Exam date"), study_day(study.study_date, "long")),
             (_("Accession number"), study.accession_number or ""),
             (_("Signed by"), person_name(report.author)),
             (_("Signed on"), format_datetime(report.signed_at, "short") if report.signed_at else "")]
    head += [Line(f"{label}: {value}", size=10, leading=13.5) for label, value in facts if value]
    head[-1].rule_after = True
    head.append(Line("", leading=6))
    running = " · ".join(part for part in (name, exam, study_day(study.study_date)) if part)
    # the placeholders go through as themselves: ``document`` numbers the pages
    page_of = _("Page %(page)s of %(pages)s", page="%(page)s", pages="%(pages)s")
    title = report.title or _("Report")
    return document(title=f"{title} · {exam}", head=head, text=report.text or "", running=running,
                    footer=f"{site_name} · {page_of}", page_size=page_size)

