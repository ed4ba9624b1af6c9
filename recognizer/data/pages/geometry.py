"""Cut a line image out of a page: the bounding box of the line's outline, painted with the paper
colour outside the outline, so that ink of the lines above and below does not leak in.

A line with a polygon uses it; a line with only a baseline uses a band ``above`` pixels over and
``below`` pixels under it. Lines whose geometry cannot give an image are reported with a reason
(one of :data:`REASONS`) instead of an image. With ``data.deskew``, a line whose baseline slopes is first
turned about its outline's centre so that the straight line fitted to its baseline lies level: its bounding
box then holds the writing, not the slope, and the writing keeps more of the crop's height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from recognizer.data.pages.formats import Page, PageLine, Point

NO_TEXT = "no text"
NO_GEOMETRY = "no geometry"
DEGENERATE = "degenerate geometry"
OUT_OF_PAGE = "outside the page"
MISSING_IMAGE = "missing image"
REFUSED_IMAGE = "image outside the allowed folders"
PAGE_MISFIT = "page geometry does not fit its image"
#: Why a line yields no sample, in the order they are checked.
REASONS = (REFUSED_IMAGE, MISSING_IMAGE, NO_TEXT, NO_GEOMETRY, DEGENERATE, OUT_OF_PAGE, PAGE_MISFIT)
#: A page whose lines reach past its edges this often (and at least twice) has coordinates made for another
#: scan or size of the page: its other lines are cut from the wrong place too, so none of them is used.
MISFIT_SHARE = 0.5
#: How far past the page's declared edge (a fraction of its width or height) a point may lie before its line
#: counts as reaching outside: outlines drawn a few pixels past the scan's border are an ordinary slip.
MISFIT_MARGIN = 0.05
#: Deskewing (:func:`baseline_angle`) leaves a line whose fitted baseline slopes less than this as it is: turning
#: it would resample (blur) the crop for a shift of a pixel or two.
MIN_DESKEW_DEGREES = 0.5
#: ... and lines steeper than this too: a baseline's slope does not say which way up such a line reads (upward
#: margin notes, a right-to-left line drawn leftwards), and turning one the wrong way puts its writing upside down.
MAX_DESKEW_DEGREES = 45.0


def page_misfit(page: Page, reasons: Sequence[str | None]) -> str | None:
    """Why a page's geometry does not fit its image, or None when it fits.

    A line is counted when its outline reaches more than :data:`MISFIT_MARGIN` past the size the XML
    declares for the page (in the XML's own units), or, for a page that declares none, when the line
    lies outside its image (``reasons``: each line's reason from the line cache). One line past the
    edge is an annotation slip (that line alone is dropped when it has no pixels on the page); most of
    them means the XML was made for another scan or size of the page, and its lines inside the image hold
    the wrong text.
    """
    placed = [line for line in page.lines if line.polygon or line.baseline]
    if page.declared_size is None:
        out = sum(r == OUT_OF_PAGE for r in reasons)
    else:
        width, height = page.declared_size
        lo_x, hi_x, lo_y, hi_y = (
            -MISFIT_MARGIN * width,
            (1 + MISFIT_MARGIN) * width,
            -MISFIT_MARGIN * height,
            (1 + MISFIT_MARGIN) * height,
        )
        out = sum(
            any(not (lo_x <= x <= hi_x and lo_y <= y <= hi_y) for x, y in (line.polygon or ()) + (line.baseline or ()))
            for line in placed
        )
    if out < 2 or out < MISFIT_SHARE * len(placed):
        return None
    return (
        f"{out} of its {len(placed)} lines reach past the page's edges: the XML's coordinates are for another scan "
        "or size of this page (compare imageWidth/imageHeight with the image, or export the page again with its image)"
    )


class LineGeometryError(ValueError):
    """A line whose geometry gives no image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def baseline_band(baseline: Sequence[Point], above: float, below: float) -> list[Point]:
    """The polygon ``above`` pixels over and ``below`` pixels under a baseline (image y grows down)."""
    top = [(x, y - above) for x, y in baseline]
    bottom = [(x, y + below) for x, y in reversed(baseline)]
    return top + bottom


def outline(line: PageLine, scale: float, above: float, below: float) -> list[Point]:
    """The line's outline in page pixels: its polygon, else the band around its baseline.

    Raises:
        LineGeometryError: no polygon (>= 3 points) and no baseline (>= 2 points), a non-finite
            coordinate, or an attribute that is not a number (``line.problem``).
    """
    if line.problem is not None:
        raise LineGeometryError(DEGENERATE, line.problem)
    polygon = [(x * scale, y * scale) for x, y in line.polygon or ()]
    baseline = [(x * scale, y * scale) for x, y in line.baseline or ()]
    if any(not (math.isfinite(x) and math.isfinite(y)) for x, y in polygon + baseline):
        raise LineGeometryError(DEGENERATE, "a coordinate is not a finite number")
    if len(set(polygon)) >= 3:
        return polygon
    if len(set(baseline)) >= 2:
        return baseline_band(baseline, above, below)
    if polygon or baseline:
        raise LineGeometryError(
            DEGENERATE, f"{len(set(polygon))} distinct polygon and {len(set(baseline))} baseline points"
        )
    raise LineGeometryError(NO_GEOMETRY, "neither a polygon nor a baseline")


def baseline_angle(line: PageLine, scale: float = 1.0) -> float:
    """How far the line's baseline turns from level, in radians (image y grows down: positive when it falls to
    the right): the slope of the least-squares line through its points. 0 where that is under
    :data:`MIN_DESKEW_DEGREES` or over :data:`MAX_DESKEW_DEGREES`, or where there is no baseline of two points
    more than a pixel apart in x.
    """
    points = [(x * scale, y * scale) for x, y in line.baseline or ()]
    xs = np.array([x for x, _ in points], dtype=np.float64)
    ys = np.array([y for _, y in points], dtype=np.float64)
    if len(points) < 2 or not (np.isfinite(xs).all() and np.isfinite(ys).all()) or np.ptp(xs) <= 1.0:
        return 0.0
    slope = float(np.polyfit(xs - xs.mean(), ys - ys.mean(), 1)[0])
    angle = math.atan(slope)
    return angle if MIN_DESKEW_DEGREES <= abs(math.degrees(angle)) <= MAX_DESKEW_DEGREES else 0.0


def _turned(page: np.ndarray, points: Sequence[Point], angle: float, paper: int) -> tuple[np.ndarray, list[Point]]:
    """The part of ``page`` under the outline turned by ``-angle`` about its box's centre (so a baseline at
    ``angle`` lies level), and the turned outline in that part's pixels. Pixels from beyond the page are ``paper``.

    Raises:
        LineGeometryError: the turned box would hold more than four times the page's pixels (an outline
            reaching far beyond its page: no line is that large, and the memory would be the XML's to choose).
    """
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    turned = [(cos * (x - cx) + sin * (y - cy) + cx, -sin * (x - cx) + cos * (y - cy) + cy) for x, y in points]
    left, top = math.floor(min(x for x, _ in turned)), math.floor(min(y for _, y in turned))
    width = max(2, math.ceil(max(x for x, _ in turned)) - left)
    height = max(2, math.ceil(max(y for _, y in turned)) - top)
    if width * height > 4 * page.shape[0] * page.shape[1]:  # a line larger than its page: not allocated
        raise LineGeometryError(
            OUT_OF_PAGE, f"turned, a {width}x{height} pixel box on a {page.shape[1]}x{page.shape[0]} page"
        )
    # PIL maps each output pixel (u, v) back to the page: turn (u + left, v + top) by +angle about the centre
    dx, dy = left - cx, top - cy
    inverse = (cos, -sin, cos * dx - sin * dy + cx, sin, cos, sin * dx + cos * dy + cy)
    image = Image.fromarray(page).transform(
        (width, height), Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR, fillcolor=paper
    )
    return np.asarray(image), [(x - left, y - top) for x, y in turned]


def polygon_area(points: Sequence[Point]) -> float:
    """The shoelace area (absolute) of a closed polygon.

    A self-intersecting outline (a bow-tie) has lobes of opposite orientation whose areas cancel here:
    :func:`line_box` then judges it by :func:`painted_area`.
    """
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def outline_mask(points: Sequence[Point], box: tuple[int, int, int, int]) -> np.ndarray:
    """The outline painted into its box ``(x0, y0, x1, y1)``: bool (y1 - y0, x1 - x0), True inside or on it.

    PIL fills by the even-odd rule, so both lobes of a self-intersecting outline are inside.
    """
    x0, y0, x1, y1 = box
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in points], fill=1, outline=1)
    return np.asarray(mask) == 1


def painted_area(points: Sequence[Point], box: tuple[int, int, int, int]) -> int:
    """Pixels of the painted outline (:func:`outline_mask`) that are not on its edges: the area a crop
    keeps, whatever the outline's orientation. A zero-width outline (collinear points) paints its edge only: 0."""
    x0, y0, x1, y1 = box
    edges = Image.new("L", (x1 - x0, y1 - y0), 0)
    shifted = [(x - x0, y - y0) for x, y in points]
    ImageDraw.Draw(edges).line([*shifted, shifted[0]], fill=1, width=1)
    return int((outline_mask(points, box) & (np.asarray(edges) == 0)).sum())


def line_box(shape: tuple[int, ...], points: Sequence[Point]) -> tuple[int, int, int, int]:
    """The outline's bounding box ``(x0, y0, x1, y1)`` clipped to a page of ``shape`` (H, W).

    The area is the shoelace area, or where that is below one pixel, the painted area
    (:func:`painted_area`): a self-intersecting (bow-tie) outline around a readable line has a shoelace
    area of about 0 but paints its whole box.

    Raises:
        LineGeometryError: the outline lies outside the page, or encloses (almost) no area.
    """
    page_h, page_w = shape[:2]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= page_w or min(ys) >= page_h:
        box = f"x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}"
        raise LineGeometryError(OUT_OF_PAGE, f"{box} on a {page_w}x{page_h} page")
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = min(page_w, math.ceil(max(xs))), min(page_h, math.ceil(max(ys)))
    area = polygon_area(points)
    if x1 - x0 >= 2 and y1 - y0 >= 2 and area < 1.0:  # lobes that cancel (a bow-tie), or really no area
        area = painted_area(points, (x0, y0, x1, y1))
    if x1 - x0 < 2 or y1 - y0 < 2 or area < 1.0:
        raise LineGeometryError(DEGENERATE, f"a {x1 - x0}x{y1 - y0} pixel box, area {area:g}")
    return x0, y0, x1, y1


def crop_line(page: np.ndarray, points: Sequence[Point], height: int | None = None, angle: float = 0.0) -> np.ndarray:
    """The line image: ``page`` (uint8, (H, W)) inside the outline's bounding box, outside the outline
    painted with the median of the box's pixels outside the outline (the paper around the line).

    Args:
        page: the grayscale page.
        points: the outline in page pixels (:func:`outline`).
        height: scale the crop to this height (keeping the aspect ratio); None keeps the scan's resolution.
        angle: first turn the outline and what it holds by ``-angle`` (radians; :func:`baseline_angle`), so that
            a baseline at ``angle`` lies level; 0 cuts the page as it is.

    Returns:
        uint8 (h, w) with h, w >= 2.

    Raises:
        LineGeometryError: the outline lies outside the page, or encloses (almost) no area.
    """
    x0, y0, x1, y1 = line_box(page.shape, points)  # errors are the unturned outline's, as the XML drew it
    if angle:
        page, points = _turned(page, points, angle, paper=int(np.median(page[y0:y1, x0:x1])))
        x0, y0, x1, y1 = line_box(page.shape, points)
    crop = page[y0:y1, x0:x1]
    outside = ~outline_mask(points, (x0, y0, x1, y1))
    if outside.any():
        paper = np.median(crop[outside]) if not outside.all() else np.median(crop)
        crop = np.where(outside, np.uint8(round(float(paper))), crop)
    if height is not None and crop.shape[0] != height:
        width = max(2, round(crop.shape[1] * height / crop.shape[0]))
        crop = np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.LANCZOS))
    return np.ascontiguousarray(crop, dtype=np.uint8)
