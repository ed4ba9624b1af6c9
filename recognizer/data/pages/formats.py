"""Read ALTO (v2–v4) and PAGE (2013, 2019) XML: each text line's id, text and geometry, and the page image.

Both formats are read namespace-agnostically (elements are matched by local name), so every schema
version of each is one code path. Coordinates are returned in pixels of the page image: ALTO files in
``mm10`` or ``inch1200`` units, and files whose declared page size differs from the image (a
downscaled scan), are scaled by the ratio of the image size to the declared page size.

Text conventions:
- PAGE: ``TextLine/TextEquiv/Unicode``; with several ``TextEquiv``, the one whose ``@index`` equals
  ``text_index``, else the first.
- ALTO: the ``CONTENT`` of the line's ``String`` elements in order; ``SP`` (and two ``String`` elements
  with nothing between them) is one space; a line-end ``HYP`` contributes its ``CONTENT`` (the hyphen as
  written) or the replacement given by ``hyphen``.
Text is NFC-normalised and its whitespace collapsed; a line without any text element has ``text=None``.

Files from strangers are read under the rules of :mod:`recognizer.data.pages.safety`: a size limit, no
entities, and image paths confined to the XML's folder and ``image_dirs`` (see :func:`image_candidates`).
A number that is not a number (``imageWidth="abc"``, letters in ``points``) is named with its file,
element and attribute: a page-level one stops with a DataError, a line's makes that line's geometry
degenerate (``PageLine.problem``), which the audit policy then reports or drops.
"""

from __future__ import annotations

import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recognizer.data.base import DataError
from recognizer.data.pages.safety import read_xml, within

__all__ = ["Page", "PageLine", "local_name", "parse_page", "parse_points"]

Point = tuple[float, float]

#: Image suffixes tried beside the XML when the file named by the XML does not exist.
PAGE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".jp2", ".bmp")

#: ALTO measurement units → their size in inches (pixel needs no conversion).
ALTO_UNITS = {"pixel": None, "mm10": 1 / 254, "inch1200": 1 / 1200}


@dataclass(frozen=True)
class PageLine:
    """One text line of a page.

    Attributes:
        id: the line's id in the XML (``@ID`` in ALTO, ``@id`` in PAGE; ``line_N`` when absent).
        text: the transcript (NFC, whitespace collapsed), or None when the line has no text element.
        polygon: the line's outline in page pixels (>= 1 point), or None.
        baseline: the baseline in page pixels, or None.
        problem: why the line's geometry could not be read (its element and attribute), or None.
    """

    id: str
    text: str | None
    polygon: tuple[Point, ...] | None
    baseline: tuple[Point, ...] | None
    problem: str | None = None


@dataclass
class Page:
    """One XML file: its format, the candidate image paths and its lines.

    Attributes:
        xml: the XML file.
        format: ``"alto"`` or ``"page"``.
        images: where the image may be, in order of preference (the first that exists is used); only
            paths inside the allowed folders (see :func:`image_candidates`).
        declared_size: ``(width, height)`` the XML declares for the page in its own units, or None.
        unit: the coordinate unit (``pixel``, ``mm10``, ``inch1200``).
        lines: the text lines in document order (coordinates in the XML's units until scaled).
        image_name: the image path as the XML writes it, or None.
        refused: a candidate left out because its real path lies outside the allowed folders (the path
            the XML names, else an existing file that is a link to elsewhere); it is never opened.
    """

    xml: Path
    format: str
    images: list[Path]
    declared_size: tuple[float, float] | None
    unit: str = "pixel"
    lines: list[PageLine] = field(default_factory=list)
    image_name: str | None = None
    refused: Path | None = None

    @property
    def image(self) -> Path | None:
        """The page image, or None when none of :attr:`images` exists."""
        return next((p for p in self.images if p.is_file()), None)

    def missing_image(self, image_dirs: str = "data.image_dirs", switch: str = "data.allow_outside_images=true") -> str:
        """Why :attr:`image` is None: ``tried A, B, C``, and when the XML names a path outside the allowed
        folders, that it was not read and how to allow it (``image_dirs``, ``switch``: the option names of
        the caller, the config keys of ``data=pages`` by default)."""
        text = f"tried {', '.join(str(p) for p in self.images[:3])}"
        if self.refused is not None:
            text += (
                f"; not read: {self.refused} (the XML names {self.image_name!r}), whose real path "
                f"{self.refused.resolve()} lies outside the XML's folder and {image_dirs}: put the image beside "
                f"the XML, add its folder to {image_dirs}, or set {switch} if you trust this file"
            )
        return text

    def scale_to(self, size: tuple[int, int]) -> float:
        """The factor from XML coordinates to pixels of an image of ``size`` (width, height).

        Raises:
            DataError: a non-pixel ALTO unit without a declared page size (nothing to convert with).
        """
        if self.declared_size is None or min(self.declared_size) <= 0:
            if self.unit != "pixel":
                raise DataError(
                    f"{self.xml}: coordinates are in {self.unit} but the Page element declares no WIDTH/HEIGHT, "
                    "so they cannot be converted to pixels; re-export the ALTO file in pixel units"
                )
            return 1.0
        return size[0] / self.declared_size[0]


def local_name(tag: str) -> str:
    """``{namespace}Name`` → ``Name``."""
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if local_name(c.tag) == name]


def _first(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if local_name(c.tag) == name), None)


def _descendants(element: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in element.iter() if local_name(e.tag) == name]


def parse_points(value: str) -> tuple[Point, ...]:
    """``"x1,y1 x2,y2"`` or ``"x1 y1 x2 y2"`` → ``((x1, y1), (x2, y2))``.

    Raises:
        ValueError: an odd number of coordinates or a non-number.
    """
    try:
        numbers = [float(v) for v in re.split(r"[\s,]+", value.strip()) if v]
    except ValueError:
        raise ValueError(f"is not a list of numbers ({value[:60]!r})") from None
    if len(numbers) % 2:
        raise ValueError(f"has an odd number of coordinates ({len(numbers)}) in {value[:60]!r}")
    return tuple(zip(numbers[0::2], numbers[1::2]))


def _points(element: ET.Element, attribute: str) -> tuple[Point, ...]:
    """The points of ``element``'s ``attribute``; a ValueError names the element and attribute."""
    try:
        return parse_points(element.get(attribute, ""))
    except ValueError as e:
        raise ValueError(f"the {attribute} attribute of <{local_name(element.tag)}> {e}") from None


def _float(element: ET.Element, attribute: str, default: str = "nan") -> float:
    """``element``'s ``attribute`` as a number (``default`` when absent); a ValueError names both."""
    value = element.get(attribute, default)
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"the {attribute} attribute of <{local_name(element.tag)}> is {value[:60]!r}, not a number"
        ) from None


def _page_size(xml: Path, page_el: ET.Element, width: str, height: str) -> tuple[float, float] | None:
    """The page size the XML declares (``width``, ``height``: attribute names), or None without both.

    Raises:
        DataError: a value that is not a finite number, naming the file, element and attribute.
    """
    if not (page_el.get(width) and page_el.get(height)):
        return None
    size = []
    for attribute in (width, height):
        try:
            value = _float(page_el, attribute)
            if not math.isfinite(value):
                raise ValueError(f"the {attribute} attribute of <Page> is {page_el.get(attribute)!r}, not a number")
        except ValueError as e:
            raise DataError(
                f"{xml}: {e}; correct it to the page image's size in pixels (or its size in the file's "
                "MeasurementUnit), or leave the file out of the page set"
            ) from None
        size.append(value)
    return size[0], size[1]


def clean_text(text: str) -> str:
    """NFC with runs of whitespace collapsed to one space and the ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def parse_page(
    xml: Path,
    text_index: int | None = None,
    hyphen: str | None = None,
    image_dirs: Sequence[str | Path] = (),
    allow_outside_images: bool = False,
) -> Page:
    """Read one ALTO or PAGE file.

    Args:
        xml: the XML file.
        text_index: PAGE: the ``TextEquiv/@index`` to read (None or absent: the first ``TextEquiv``).
        hyphen: ALTO: what a line-end ``HYP`` becomes; None keeps its ``CONTENT`` as written.
        image_dirs: more folders to look for the image in (relative ones: relative to the XML's folder).
        allow_outside_images: follow an image path the XML names even outside the XML's folder and
            ``image_dirs`` (see :func:`image_candidates`); only for files you trust.

    Raises:
        DataError: the file is not well-formed XML, neither ALTO nor PAGE, over the size limit, declares
            entities, or declares a page size that is not a number (one message naming it).
    """
    source = read_xml(xml)
    try:
        parser = ET.XMLParser()
        parser.feed(source.data)
        root = parser.close()
    except ET.ParseError as e:
        raise DataError(f"{xml}: malformed XML ({e}); fix the file or remove it from the page set") from None
    kind = local_name(root.tag)
    if kind == "alto":
        page = _parse_alto(xml, root, hyphen)
    elif kind == "PcGts":
        page = _parse_page_xml(xml, root, text_index)
    else:
        raise DataError(f"{xml}: root element <{kind}> is neither ALTO (<alto>) nor PAGE (<PcGts>)")
    page.images, page.refused = image_candidates(xml, page.image_name, image_dirs, allow_outside_images)
    return page


def image_candidates(
    xml: Path, name: str | None, image_dirs: Sequence[str | Path] = (), allow_outside: bool = False
) -> tuple[list[Path], Path | None]:
    """Where the image a page names may be: the name relative to the XML (as both formats define it),
    then its base name beside the XML and in ``image_dirs`` (exports often keep a path of the machine
    that wrote them; corpora often keep images in a sibling folder), then same-stem images there.

    Only paths whose real location lies inside the XML's folder or a folder of ``image_dirs`` are kept
    (:func:`~recognizer.data.pages.safety.within`), unless ``allow_outside``: a name such as
    ``../../../etc/passwd`` or ``/home/someone/scan.jpg`` is not followed (its base name is still looked
    for in those folders). Symlinks are resolved before the check, so a link inside the folder that
    points elsewhere is outside too: the check is on the file that would be read. (The check runs when
    the page is parsed; it guards against what an XML file says, not against a local user who swaps
    links while recognizer runs.)

    Returns:
        The allowed candidates in order, and the refused candidate to name in a message (the path the
        XML names, else the first existing file left out), or None.
    """
    folders = [xml.parent, *(xml.parent / d for d in image_dirs)]  # an absolute d stays absolute
    candidates: list[Path] = []
    if name:
        named = Path(name.replace("\\", "/").removeprefix("file://"))
        candidates.append(named if named.is_absolute() else xml.parent / named)
        candidates += [f / named.name for f in folders]
    candidates += [f / (xml.stem + s) for f in folders for s in PAGE_IMAGE_SUFFIXES]
    candidates = list(dict.fromkeys(candidates))
    if allow_outside:
        return candidates, None
    allowed = [c for c in candidates if within(c, folders)]
    left_out = [c for c in candidates if c not in allowed]
    if name and left_out and left_out[0] == candidates[0]:
        return allowed, left_out[0]
    return allowed, next((c for c in left_out if c.is_file()), None)


# ---- PAGE -------------------------------------------------------------------------------------------


def _page_points(element: ET.Element | None) -> tuple[Point, ...] | None:
    """``@points``, or PAGE 2010/2013's ``<Point x= y=/>`` children."""
    if element is None:
        return None
    if element.get("points") is not None:
        return _points(element, "points")
    points = _children(element, "Point")
    return tuple((_float(p, "x"), _float(p, "y")) for p in points) or None


def _page_text(line: ET.Element, text_index: int | None) -> str | None:
    equivs = _children(line, "TextEquiv")
    if not equivs:
        return None
    chosen = next((e for e in equivs if text_index is not None and e.get("index") == str(text_index)), equivs[0])
    unicode = _first(chosen, "Unicode")
    if unicode is None:
        unicode = _first(chosen, "PlainText")
    return None if unicode is None else clean_text(unicode.text or "")


def _parse_page_xml(xml: Path, root: ET.Element, text_index: int | None) -> Page:
    page_el = _first(root, "Page")
    if page_el is None:
        raise DataError(f"{xml}: PAGE file without a <Page> element")
    declared = _page_size(xml, page_el, "imageWidth", "imageHeight")
    page = Page(xml, "page", [], declared, image_name=page_el.get("imageFilename"))
    for n, line in enumerate(_descendants(page_el, "TextLine")):
        line_id = line.get("id") or f"line_{n}"
        text = _page_text(line, text_index)
        try:
            polygon = _page_points(_first(line, "Coords"))
            baseline = _page_points(_first(line, "Baseline"))
        except ValueError as e:  # counted as degenerate geometry, naming the element and attribute
            page.lines.append(PageLine(line_id, text, None, None, problem=str(e)))
            continue
        page.lines.append(PageLine(line_id, text, polygon, baseline))
    return page


# ---- ALTO -------------------------------------------------------------------------------------------


def _alto_text(line: ET.Element, hyphen: str | None) -> str | None:
    parts: list[str] = []
    seen_text = False
    previous = None
    for child in line:
        name = local_name(child.tag)
        if name == "String":
            seen_text = True
            if previous == "String":  # two words with no SP between them: still two words
                parts.append(" ")
            parts.append(child.get("CONTENT", ""))
        elif name == "SP":
            parts.append(" ")
        elif name == "HYP":
            seen_text = True
            parts.append(child.get("CONTENT", "") if hyphen is None else hyphen)
        else:
            continue
        previous = name
    return clean_text("".join(parts)) if seen_text else None


def _alto_baseline(line: ET.Element) -> tuple[Point, ...] | None:
    """v4: ``"x1,y1 x2,y2"`` or ``"x1 y1 x2 y2"``; v2/v3: one number, the baseline's y along the line box."""
    value = line.get("BASELINE")
    if value is None or not value.strip():
        return None
    if re.fullmatch(r"\s*[-+0-9.eE]+\s*", value):
        x, w, y = _float(line, "HPOS"), _float(line, "WIDTH"), _float(line, "BASELINE")
        return ((x, y), (x + w, y))
    return _points(line, "BASELINE")


def _alto_polygon(line: ET.Element) -> tuple[Point, ...] | None:
    shape = _first(line, "Shape")
    polygon = None if shape is None else _first(shape, "Polygon")
    if polygon is not None and polygon.get("POINTS"):
        return _points(polygon, "POINTS")
    box = ("HPOS", "VPOS", "WIDTH", "HEIGHT")
    if all(line.get(k) is not None for k in box):
        x, y, w, h = (_float(line, k) for k in box)
        return ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
    return None


def _parse_alto(xml: Path, root: ET.Element, hyphen: str | None) -> Page:
    description = _first(root, "Description")
    unit = "pixel"
    name = None
    if description is not None:
        unit_el = _first(description, "MeasurementUnit")
        if unit_el is not None and unit_el.text and unit_el.text.strip():
            unit = unit_el.text.strip()
        info = _first(description, "sourceImageInformation")
        file_el = None if info is None else _first(info, "fileName")
        name = None if file_el is None or not file_el.text else file_el.text.strip()
    if unit not in ALTO_UNITS:
        raise DataError(f"{xml}: unknown ALTO MeasurementUnit {unit!r}; expected one of {', '.join(ALTO_UNITS)}")
    page_el = next(iter(_descendants(root, "Page")), None)
    if page_el is None:
        raise DataError(f"{xml}: ALTO file without a <Page> element")
    declared = _page_size(xml, page_el, "WIDTH", "HEIGHT")
    page = Page(xml, "alto", [], declared, unit, image_name=name)
    for n, line in enumerate(_descendants(page_el, "TextLine")):
        line_id = line.get("ID") or f"line_{n}"
        text = _alto_text(line, hyphen)
        try:
            polygon, baseline = _alto_polygon(line), _alto_baseline(line)
        except ValueError as e:  # counted as degenerate geometry, naming the element and attribute
            page.lines.append(PageLine(line_id, text, None, None, problem=str(e)))
            continue
        page.lines.append(PageLine(line_id, text, polygon, baseline))
    return page
