"""Page scans with ALTO or PAGE XML: parsing, line geometry, the line cache, the document split and
writing transcriptions back into the XML."""

from recognizer.data.pages.formats import Page, PageLine, parse_page
from recognizer.data.pages.module import PagesData

__all__ = ["Page", "PageLine", "PagesData", "parse_page"]
