"""Write transcriptions back into the ALTO or PAGE file they came from, keeping everything else.

The file is parsed with its comments and processing instructions and written with its namespace
prefixes, after its own prolog (XML declaration, comments, DOCTYPE) and in its declared encoding, so
only each text line's text changes:
- PAGE: the line's ``TextEquiv`` elements are replaced by one ``TextEquiv conf=".."`` holding
  ``Unicode`` (at the place of the first one, else before ``TextStyle``/``UserDefined``/``Labels``).
  ``Word``/``Glyph`` elements are left as they were.
- ALTO: the line's ``String``/``SP``/``HYP`` elements are replaced by one ``String`` per word
  (``CONTENT``, ``WC`` and a box estimated from where the model emitted the word's symbols) with
  ``SP`` between words.
Lines without a transcription (geometry that gave no image) are left untouched.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recognizer.data.pages.formats import local_name

__all__ = ["LineText", "write_page"]

#: PAGE TextLine children that come after TextEquiv in the schema.
PAGE_AFTER_TEXTEQUIV = ("TextStyle", "UserDefined", "Labels")


@dataclass(frozen=True)
class LineText:
    """A line's transcription in page coordinates.

    Attributes:
        text: the transcript.
        confidence: in [0, 1].
        box: the line image's box in the XML's units ``(x0, y0, x1, y1)``.
        chars: ``(symbol, x, confidence)`` per emitted symbol, ``x`` where it starts (XML units).
    """

    text: str
    confidence: float
    box: tuple[float, float, float, float]
    chars: tuple[tuple[str, float, float], ...] = ()


def _register_namespaces(xml: Path) -> None:
    """Keep the document's prefixes (ElementTree would otherwise write ``ns0:``)."""
    for _, (prefix, uri) in ET.iterparse(xml, events=("start-ns",)):
        ET.register_namespace(prefix, uri)


def _read(xml: Path) -> ET.ElementTree[ET.Element]:
    _register_namespaces(xml)
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
    return ET.parse(xml, parser)


def _ns(tag: str) -> str:
    return tag[: tag.index("}") + 1] if tag.startswith("{") else ""


def _text_lines(root: ET.Element) -> list[ET.Element]:
    """The TextLine elements in the order :func:`~recognizer.data.pages.formats.parse_page` reads them."""
    pages = [e for e in root.iter() if local_name(e.tag) == "Page"]
    return [e for e in pages[0].iter() if local_name(e.tag) == "TextLine"] if pages else []


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-6 or abs(value) >= 100 else f"{value:.2f}"


def _set_page_line(line: ET.Element, result: LineText) -> None:
    ns = _ns(line.tag)
    children = list(line)
    equivs = [c for c in children if local_name(c.tag) == "TextEquiv"]
    new = ET.Element(f"{ns}TextEquiv", {"conf": f"{result.confidence:.4f}"})
    ET.SubElement(new, f"{ns}Unicode").text = result.text
    if equivs:
        at = children.index(equivs[0])
        new.tail = equivs[0].tail
        for e in equivs:
            line.remove(e)
    else:
        after = [i for i, c in enumerate(children) if local_name(c.tag) in PAGE_AFTER_TEXTEQUIV]
        at = after[0] if after else len(children)
        new.tail = children[at - 1].tail if at > 0 else line.text
    line.insert(at, new)


def _words(result: LineText) -> list[tuple[str, float, float, float]]:
    """``(word, x0, x1, confidence)`` per word: from its first symbol to the next symbol after it."""
    x0, _, x1, _ = result.box
    words: list[tuple[str, float, float, float]] = []
    current: list[tuple[str, float, float]] = []
    chars = list(result.chars)
    for symbol, x, conf in [*chars, (" ", x1, 1.0)]:
        if symbol == " ":
            if current:
                end = min(max(x, current[0][1] + 1), x1)
                confs = [c for _, _, c in current]
                words.append(("".join(s for s, _, _ in current), current[0][1], end, sum(confs) / len(confs)))
            current = []
        else:
            current.append((symbol, max(x, x0), conf))
    return words


def _set_alto_line(line: ET.Element, result: LineText) -> None:
    ns = _ns(line.tag)
    children = list(line)
    text_children = [c for c in children if local_name(c.tag) in ("String", "SP", "HYP")]
    at = children.index(text_children[0]) if text_children else len(children)
    tail = text_children[0].tail if text_children else None
    for c in text_children:
        line.remove(c)
    _, y0, x1, y1 = result.box
    words = _words(result) if result.chars else []
    if not words:  # ALTO needs at least one String in a TextLine
        words = [(result.text, result.box[0], x1, result.confidence)]
    elements: list[ET.Element] = []
    for n, (word, start, end, conf) in enumerate(words):
        if n:  # the gap between the previous word and this one
            gap = words[n - 1][2]
            sp = {"HPOS": _number(gap), "VPOS": _number(y0), "WIDTH": _number(max(start - gap, 0.0))}
            elements.append(ET.Element(f"{ns}SP", sp))
        box = {"HPOS": _number(start), "VPOS": _number(y0), "WIDTH": _number(end - start), "HEIGHT": _number(y1 - y0)}
        elements.append(ET.Element(f"{ns}String", {"CONTENT": word, **box, "WC": f"{conf:.4f}"}))
    for offset, element in enumerate(elements):
        element.tail = tail
        line.insert(at + offset, element)


def write_page(xml: Path, results: Sequence[LineText | None], out: Path) -> Path:
    """Write ``xml`` to ``out`` with the text of each line replaced by ``results`` (in line order).

    Args:
        xml: an ALTO or PAGE file (as read by :func:`~recognizer.data.pages.formats.parse_page`).
        results: one entry per TextLine; None leaves that line as it was.
        out: the file to write (its folder is created).
    """
    tree = _read(xml)
    root = tree.getroot()
    assert root is not None
    lines = _text_lines(root)
    if len(lines) != len(results):
        raise ValueError(f"{xml}: {len(lines)} text lines but {len(results)} transcriptions")
    setter = _set_alto_line if local_name(root.tag) == "alto" else _set_page_line
    for line, result in zip(lines, results):
        if result is not None:
            setter(line, result)
    out.parent.mkdir(parents=True, exist_ok=True)
    original = xml.read_bytes()
    prolog = _prolog(original)
    declared = re.match(rb"""(?:\xef\xbb\xbf)?<\?xml[^>]*encoding=["']([A-Za-z0-9._-]+)""", prolog)
    encoding = declared.group(1).decode("ascii") if declared else "utf-8"
    body = ET.tostring(root, encoding="unicode").encode(encoding, "xmlcharrefreplace")
    out.write_bytes(prolog + body + (b"\n" if original.endswith(b"\n") else b""))
    return out


def _prolog(data: bytes) -> bytes:
    """The bytes before the root element (declaration, comments, processing instructions, DOCTYPE), which
    ElementTree does not keep: they are written back as they were."""
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    item = re.compile(rb"\s*(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>)", re.S)
    while match := item.match(data, pos):
        pos = match.end()
    return data[: pos + len(data[pos:]) - len(data[pos:].lstrip())]
