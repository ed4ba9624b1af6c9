"""Write transcriptions back into the ALTO or PAGE file they came from, keeping everything else.

The file is parsed with its comments and processing instructions and written with its own namespace
prefixes (whatever they are, ``ns0:`` included), after its own XML declaration and the comments and
processing instructions before its root, in its declared encoding, so only each text line's text changes:
- PAGE: the line's ``TextEquiv`` elements are replaced by one ``TextEquiv conf=".."`` holding
  ``Unicode`` (at the place of the first one, else before ``TextStyle``/``UserDefined``/``Labels``).
  ``Word``/``Glyph`` elements are left as they were.
- ALTO: the line's ``String``/``SP``/``HYP`` elements are replaced by one ``String`` per word
  (``CONTENT``, ``WC`` and a box estimated from where the model emitted the word's symbols) with
  ``SP`` between words.
Lines without a transcription (geometry that gave no image) are left untouched.

A DOCTYPE is not written back (a page needs none, and one that declares entities is refused when the
file is read: :mod:`recognizer.data.pages.safety`). The output is written atomically (a temporary file
renamed over the target) and never over the input itself.
"""

from __future__ import annotations

import codecs
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recognizer.data.base import DataError
from recognizer.data.pages.formats import local_name
from recognizer.data.pages.safety import XmlSource, read_xml
from recognizer.files import write_atomic

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


XML_NS = "http://www.w3.org/XML/1998/namespace"


class _Builder(ET.TreeBuilder):
    """A tree with comments and processing instructions that also records the namespace declarations."""

    def __init__(self) -> None:
        super().__init__(insert_comments=True, insert_pis=True)
        self.bindings: list[tuple[str, str]] = []

    def start_ns(self, prefix: str, uri: str) -> None:
        self.bindings.append((prefix, uri))


def _read(source: XmlSource) -> tuple[ET.Element, list[tuple[str, str]]]:
    """The root element and the document's ``(prefix, uri)`` declarations in document order."""
    builder = _Builder()
    parser = ET.XMLParser(target=builder)
    try:
        parser.feed(source.data)
        root = parser.close()
    except ET.ParseError as e:
        raise DataError(f"{source.path}: malformed XML ({e}); fix the file or remove it from the page set") from None
    return root, builder.bindings


def _keep_prefixes(root: ET.Element, bindings: Sequence[tuple[str, str]]) -> None:
    """Rename ``{uri}name`` to ``prefix:name`` with the document's own prefixes and declare them on the root.

    ElementTree would otherwise invent ``ns0``, ``ns1``... (and its global prefix registry refuses
    ``ns0``-style names and is shared by every file written). A prefix bound to two namespaces in one
    document gets a fresh name for the second; a namespace used by attributes but bound only as the
    default namespace gets a prefix (attributes take none from the default).
    """
    elements = [e for e in root.iter() if isinstance(e.tag, str)]  # not comments or processing instructions
    prefix_of: dict[str, str] = {XML_NS: "xml"}
    used = {"xml"}

    def fresh() -> str:
        n = 0
        while f"ns{n}" in used:
            n += 1
        return f"ns{n}"

    def bind(uri: str, prefix: str) -> str:
        prefix = fresh() if prefix in used else prefix
        prefix_of[uri] = prefix
        used.add(prefix)
        return prefix

    for prefix, uri in bindings:
        if uri and uri not in prefix_of:  # xmlns="" (no namespace from here on) binds nothing
            bind(uri, prefix)
    if "" in used and any(not e.tag.startswith("{") for e in elements):
        default = next(u for u, p in prefix_of.items() if p == "")  # unqualified elements need the default free
        used.discard("")
        bind(default, fresh())
    attribute_prefix: dict[str, str] = {}

    def qname(name: str, attribute: bool = False) -> str:
        if not name.startswith("{"):
            return name
        uri, local = name[1:].split("}", 1)
        prefix = prefix_of.get(uri)
        if prefix is None:
            prefix = bind(uri, fresh())
        if attribute and prefix == "":
            prefix = attribute_prefix.get(uri) or attribute_prefix.setdefault(uri, fresh())
            used.add(prefix)
        return f"{prefix}:{local}" if prefix else local

    for e in elements:
        e.tag = qname(e.tag)
        if any(k.startswith("{") for k in e.attrib):
            renamed = {qname(k, attribute=True): v for k, v in e.attrib.items()}
            e.attrib.clear()
            e.attrib.update(renamed)
    declared = [(p, u) for u, p in prefix_of.items() if u != XML_NS]
    declared += [(p, u) for u, p in attribute_prefix.items()]
    xmlns = {("xmlns:" + p if p else "xmlns"): u for p, u in declared}
    own = dict(root.attrib)
    root.attrib.clear()
    root.attrib.update(xmlns | own)


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
        out: the file to write (its folder is created), atomically; an existing link there is replaced.

    Raises:
        DataError: ``xml`` cannot be read safely (see :func:`~recognizer.data.pages.safety.read_xml`).
        ValueError: ``out`` is ``xml`` itself (also through a link), or a count of results that does not
            match the file's lines.
    """
    if out.exists() and os.path.samefile(out, xml):  # the same file under any name: a link, a mount, case
        raise ValueError(f"{out} is the input {xml} (or a link to it): write the transcription elsewhere")
    source = read_xml(xml)
    root, bindings = _read(source)
    lines = _text_lines(root)
    if len(lines) != len(results):
        raise ValueError(f"{xml}: {len(lines)} text lines but {len(results)} transcriptions")
    setter = _set_alto_line if local_name(root.tag) == "alto" else _set_page_line
    for line, result in zip(lines, results):
        if result is not None:
            setter(line, result)
    _keep_prefixes(root, bindings)
    encoding = _encoding(source)
    # a CR in the tree came from a &#13; (the parser turns literal ones into LF); ElementTree writes it raw
    body = ET.tostring(root, encoding="unicode").replace("\r", "&#13;")
    text = "\n".join([*_prolog(source, encoding), body])
    data = (text + ("\n" if source.data.rstrip(b"\0").endswith(b"\n") else "")).encode(encoding, "xmlcharrefreplace")
    if source.data.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name == "utf-8":
        data = codecs.BOM_UTF8 + data
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    return out


def _encoding(source: XmlSource) -> str:
    """The encoding the file declares (if Python knows it as a text encoding), else UTF-8."""
    declared = source.declaration[1] if source.declaration else None
    if declared:
        try:
            "".encode(declared)  # a LookupError for names Python does not know or that are no text encoding
            return declared
        except LookupError:
            pass
    return "utf-8"


def _prolog(source: XmlSource, encoding: str) -> list[str]:
    """What comes before the root element, which ElementTree does not keep: the XML declaration (with the
    encoding the output is written in) and the comments and processing instructions. Never the DOCTYPE."""
    items = list(source.prolog)
    if source.declaration is not None:
        version, _, standalone = source.declaration
        alone = {0: ' standalone="no"', 1: ' standalone="yes"'}.get(standalone, "")
        items.insert(0, f'<?xml version="{version}" encoding="{encoding}"{alone}?>')
    return items
