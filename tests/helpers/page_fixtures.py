"""Hand-written ALTO and PAGE snippets with tiny generated page images, for the page tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PAPER = 200  # page background grey level
INK = 10

PAGE_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
PAGE_2013_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15"
ALTO_NS = {
    2: "http://www.loc.gov/standards/alto/ns-v2#",
    3: "http://www.loc.gov/standards/alto/ns-v3#",
    4: "http://www.loc.gov/standards/alto/ns-v4#",
}


def write_page_image(path: Path, width: int = 120, height: int = 60, boxes=()) -> np.ndarray:
    """A grey page with ink rectangles ``(x0, y0, x1, y1)``."""
    arr = np.full((height, width), PAPER, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        arr[y0:y1, x0:x1] = INK
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return arr


def page_xml(lines: str, image: str = "page.png", ns: str = PAGE_NS, width: int = 120, height: int = 60) -> str:
    """A PAGE document with one TextRegion holding ``lines`` (TextLine elements)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- exported by a test -->
<PcGts xmlns="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="{ns} {ns}/pagecontent.xsd">
  <Metadata><Creator>test</Creator><Created>2024-01-01T00:00:00</Created></Metadata>
  <Page imageFilename="{image}" imageWidth="{width}" imageHeight="{height}">
    <TextRegion id="r1" custom="structure {{type:paragraph;}}">
      <Coords points="0,0 {width},0 {width},{height} 0,{height}"/>
{lines}
    </TextRegion>
  </Page>
</PcGts>
"""


def page_line(
    line_id: str, text: str | None, coords: str | None = None, baseline: str | None = None, extra: str = ""
) -> str:
    parts = [f'      <TextLine id="{line_id}" custom="readingOrder {{index:0;}}">']
    if coords is not None:
        parts.append(f'        <Coords points="{coords}"/>')
    if baseline is not None:
        parts.append(f'        <Baseline points="{baseline}"/>')
    parts.append(extra)
    if text is not None:
        parts.append(f'        <TextEquiv conf="0.5"><Unicode>{text}</Unicode></TextEquiv>')
    parts.append("      </TextLine>")
    return "\n".join(p for p in parts if p)


def alto_xml(
    lines: str,
    image: str = "page.png",
    version: int = 4,
    unit: str = "pixel",
    width: int | None = 120,
    height: int | None = 60,
) -> str:
    """An ALTO document with one TextBlock holding ``lines`` (TextLine elements)."""
    ns = ALTO_NS[version]
    size = f' WIDTH="{width}" HEIGHT="{height}"' if width is not None else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{ns}" xmlns:xlink="http://www.w3.org/1999/xlink">
  <Description>
    <MeasurementUnit>{unit}</MeasurementUnit>
    <sourceImageInformation><fileName>{image}</fileName></sourceImageInformation>
  </Description>
  <Tags><OtherTag ID="LT1" LABEL="default"/></Tags>
  <Layout>
    <Page ID="p1" PHYSICAL_IMG_NR="1"{size}>
      <PrintSpace>
        <TextBlock ID="b1">
{lines}
        </TextBlock>
      </PrintSpace>
    </Page>
  </Layout>
</alto>
"""


def alto_line(line_id: str, inner: str, attrs: str = "", polygon: str | None = None) -> str:
    shape = f'<Shape><Polygon POINTS="{polygon}"/></Shape>' if polygon is not None else ""
    return f'          <TextLine ID="{line_id}" TAGREFS="LT1" {attrs}>{shape}{inner}</TextLine>'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
