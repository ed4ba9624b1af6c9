"""Tests for recognizer.data.pages: ALTO/PAGE text and geometry, the line cache, the document split, bad input."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognizer.data.base import DataError
from recognizer.data.pages import PagesData, parse_page
from recognizer.data.pages.cache import EXTRACTION_VERSION, LineCache, load_page_image
from recognizer.data.pages.formats import PageLine
from recognizer.data.pages.geometry import baseline_angle, crop_line
from recognizer.data.pages.module import apply_char_map, load_char_map
from recognizer.data.pages.sources import collect_xml, split_by_document
from tests.helpers.page_fixtures import (
    INK,
    PAGE_2013_NS,
    PAPER,
    alto_line,
    alto_xml,
    page_line,
    page_xml,
    write,
    write_page_image,
)


def pages_data(tmp_path: Path, **kwargs) -> PagesData:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return PagesData(**kwargs)


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# --------------------------------------------------------------------------- PAGE


def test_page_polygon_crop_paints_outside_with_paper(tmp_path):
    # ink inside the line's triangle, and a neighbour's ink in the bounding box but outside the triangle
    write_page_image(tmp_path / "page.png", boxes=[(12, 22, 16, 28), (40, 12, 48, 16)])
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "ab", coords="10,10 50,30 10,30")))
    [record] = pages_data(tmp_path, train=str(xml)).records("train")
    assert (record.id, record.text) == ("p/l1", "ab")
    crop = png(record.path)
    assert crop.shape == (20, 40)  # the polygon's bounding box: x 10..50, y 10..30
    assert crop[12 - 10, 40 - 10] == PAPER  # the neighbour's ink is painted over
    assert crop[25 - 10, 14 - 10] == INK  # the line's own ink is kept


def test_page_textequiv_index_and_fallback(tmp_path):
    equivs = (
        '<TextEquiv index="0"><Unicode>ocr text</Unicode></TextEquiv>'
        '<TextEquiv index="1"><Unicode>ground  truth </Unicode></TextEquiv>'
    )
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", None, coords="0,0 9,0 9,9 0,9", extra=equivs)))
    assert parse_page(xml).lines[0].text == "ocr text"  # no index asked: the first
    assert parse_page(xml, text_index=1).lines[0].text == "ground truth"  # whitespace collapsed
    assert parse_page(xml, text_index=7).lines[0].text == "ocr text"  # absent index: the first


def test_page_text_is_nfc_and_image_is_resolved_relative_to_the_xml(tmp_path):
    write_page_image(tmp_path / "scans" / "img 1.png")
    xml = write(tmp_path / "xml" / "p.xml", page_xml(page_line("l1", "e\u0301t\u00e9"), image="../scans/img 1.png"))
    page = parse_page(xml, image_dirs=["../scans"])  # ../scans is outside the XML's folder: it must be named
    assert page.lines[0].text == "\u00e9t\u00e9"
    assert page.image == tmp_path / "xml" / ".." / "scans" / "img 1.png"


def test_page_baseline_only_line_is_a_band(tmp_path):
    write_page_image(tmp_path / "page.png", width=200, height=100)
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "x", baseline="20,60 120,60"), width=200, height=100))
    [record] = pages_data(tmp_path, train=str(xml), baseline_above=30, baseline_below=10).records("train")
    assert png(record.path).shape == (40, 100)  # 30 over + 10 under the baseline, x 20..120


def test_page_2013_point_elements(tmp_path):
    coords = '<Coords><Point x="1" y="2"/><Point x="30" y="2"/><Point x="30" y="12"/></Coords>'
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "t", extra=coords), ns=PAGE_2013_NS))
    assert parse_page(xml).lines[0].polygon == ((1.0, 2.0), (30.0, 2.0), (30.0, 12.0))


# --------------------------------------------------------------------------- ALTO


HYPHENATED = '<String CONTENT="con"/><SP/><String CONTENT="tinu"/><HYP CONTENT="¬"/>'


@pytest.mark.parametrize(("hyphen", "expected"), [(None, "con tinu¬"), ("-", "con tinu-"), ("", "con tinu")])
def test_alto_strings_sp_and_hyp(tmp_path, hyphen, expected):
    xml = write(tmp_path / "a.xml", alto_xml(alto_line("l1", HYPHENATED, polygon="0 0 9 0 9 9")))
    assert parse_page(xml, hyphen=hyphen).lines[0].text == expected


def test_alto_strings_without_sp_are_still_words(tmp_path):
    inner = '<String CONTENT="a"/><String CONTENT="b"/><SP/><SP/><String CONTENT="c"/>'
    xml = write(tmp_path / "a.xml", alto_xml(alto_line("l1", inner)))
    assert parse_page(xml).lines[0].text == "a b c"


@pytest.mark.parametrize("points", ["10 10 50 10 50 30 10 30", "10,10 50,10 50,30 10,30"])
@pytest.mark.parametrize("baseline", ["10 28 50 28", "10,28 50,28"])
def test_alto_polygon_and_baseline_forms(tmp_path, points, baseline):
    xml = write(tmp_path / "a.xml", alto_xml(alto_line("l1", "", f'BASELINE="{baseline}"', polygon=points)))
    line = parse_page(xml).lines[0]
    assert line.polygon == ((10, 10), (50, 10), (50, 30), (10, 30))
    assert line.baseline == ((10, 28), (50, 28))


def test_alto_v2_box_and_numeric_baseline(tmp_path):
    attrs = 'HPOS="5" VPOS="8" WIDTH="40" HEIGHT="12" BASELINE="18"'
    xml = write(tmp_path / "a.xml", alto_xml(alto_line("l1", '<String CONTENT="v2"/>', attrs), version=2))
    line = parse_page(xml).lines[0]
    assert line.polygon == ((5, 8), (45, 8), (45, 20), (5, 20))
    assert line.baseline == ((5, 18), (45, 18))


def test_alto_baseline_only_band_and_filename(tmp_path):
    write_page_image(tmp_path / "scan.png", width=200, height=100)
    line = alto_line("l1", '<String CONTENT="b"/>', 'BASELINE="20,60 100,62"')
    xml = write(tmp_path / "a.xml", alto_xml(line, image="scan.png", width=200, height=100))
    [record] = pages_data(tmp_path, train=str(xml), baseline_above=20, baseline_below=5).records("train")
    assert png(record.path).shape == (27, 80)  # y 40..67 (62 + 5), x 20..100


def test_alto_mm10_units_are_converted_with_the_page_size(tmp_path):
    write_page_image(tmp_path / "page.png", width=120, height=60)
    # the page is 2400 x 1200 mm10 on a 120 x 60 image: 20 units per pixel
    line = alto_line("l1", '<String CONTENT="m"/>', polygon="200 200 1000 200 1000 600 200 600")
    xml = write(tmp_path / "a.xml", alto_xml(line, unit="mm10", width=2400, height=1200))
    [record] = pages_data(tmp_path, train=str(xml)).records("train")
    assert png(record.path).shape == (20, 40)


def test_alto_mm10_without_page_size_is_refused(tmp_path):
    write_page_image(tmp_path / "page.png")
    line = alto_line("l1", '<String CONTENT="m"/>', polygon="2 2 10 2 10 9")
    xml = write(tmp_path / "a.xml", alto_xml(line, unit="inch1200", width=None))
    with pytest.raises(DataError, match=re.escape(f"{xml}: coordinates are in inch1200 but the Page element")):
        pages_data(tmp_path, train=str(xml)).records("train")


def test_image_dirs_find_images_in_a_sibling_folder(tmp_path):
    write_page_image(tmp_path / "jpg" / "scan.png")
    write(
        tmp_path / "alto" / "a.xml",
        alto_xml(alto_line("l1", '<String CONTENT="x"/>', polygon="1 1 9 1 9 9"), "scan.png"),
    )
    data = pages_data(tmp_path, train=str(tmp_path / "alto"), image_dirs=["../jpg"])
    assert [r.text for r in data.records("train")] == ["x"]


# --------------------------------------------------------------------------- bad pages and lines

BAD_LINES = [
    page_line("ok", "fine", coords="1,1 30,1 30,10 1,10"),
    page_line("empty", "", coords="1,1 30,1 30,10 1,10"),
    page_line("notext", None, coords="1,1 30,1 30,10 1,10"),
    page_line("nogeo", "a"),
    page_line("flat", "b", coords="1,5 30,5 60,5"),
    page_line("outside", "c", coords="500,500 600,500 600,520"),
    page_line("nan", "d", coords="1,1 x,2 3,3"),
]


def test_bad_lines_are_dropped_and_counted_by_reason(tmp_path, caplog):
    write_page_image(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml("\n".join(BAD_LINES)))
    data = pages_data(tmp_path, train=str(xml), audit_policy="drop")
    with caplog.at_level(logging.INFO):
        records = data.records("train")
    assert [r.id for r in records] == ["p/ok"]
    assert data.drops["train"] == {"no text": 2, "no geometry": 1, "degenerate geometry": 2, "outside the page": 1}
    assert "dropped 6 (" in caplog.text
    assert f"{xml}: line outside: outside the page (x 500..600, y 500..520 on a 120x60 page)" in caplog.text


def scaled_lines(inside: int, outside: int) -> str:
    """Lines that fit a 120x60 page, then lines placed as on a scan twice that size (past its edges)."""
    fits = [
        page_line(f"in{i}", "text", coords=f"1,{1 + 5 * i} 50,{1 + 5 * i} 50,{4 + 5 * i} 1,{4 + 5 * i}")
        for i in range(inside)
    ]
    past = [
        page_line(f"out{i}", "text", coords=f"100,{70 + 9 * i} 230,{70 + 9 * i} 230,{76 + 9 * i} 100,{76 + 9 * i}")
        for i in range(outside)
    ]
    return "\n".join(fits + past)


def test_a_page_whose_lines_mostly_fall_outside_its_image_is_dropped_whole(tmp_path, caplog):
    write_page_image(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml(scaled_lines(inside=2, outside=3)))
    data = pages_data(tmp_path, train=str(xml), audit_policy="drop")
    with caplog.at_level(logging.INFO), pytest.raises(DataError, match="hold no usable line"):
        data.records("train")  # its two lines inside the image are not used either: their text is elsewhere
    assert data.drops["train"] == {"page geometry does not fit its image": 5}
    assert f"{xml}: line in0: page geometry does not fit its image (3 of its 5 lines reach past the page" in caplog.text
    with pytest.raises(DataError, match=re.escape("the XML's coordinates are for another scan or size of this page")):
        pages_data(tmp_path, train=str(xml)).records("train")


def test_without_a_declared_size_lines_outside_the_image_tell_a_misfit_page(tmp_path):
    write_page_image(tmp_path / "page.png")  # 120x60; the ALTO file says nothing of its size
    inside = alto_line("in", '<String CONTENT="x"/>', polygon="1 1 30 1 30 10 1 10")
    outside = [
        alto_line(f"out{i}", '<String CONTENT="y"/>', polygon=f"500 {9 * i} 600 {9 * i} 600 {9 * i + 8}")
        for i in range(3)
    ]
    xml = write(tmp_path / "a.xml", alto_xml("\n".join([inside, *outside]), width=None))
    data = pages_data(tmp_path, train=str(xml), audit_policy="drop")
    with pytest.raises(DataError, match="hold no usable line"):
        data.records("train")
    assert data.drops["train"] == {"page geometry does not fit its image": 4}


def test_a_few_lines_past_the_edge_drop_alone(tmp_path):
    write_page_image(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml(scaled_lines(inside=5, outside=2)))
    data = pages_data(tmp_path, train=str(xml), audit_policy="drop")
    assert [r.id for r in data.records("train")] == [f"p/in{i}" for i in range(5)]
    assert data.drops["train"] == {"outside the page": 2}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (BAD_LINES[1], "line empty: no text (empty)"),
        (BAD_LINES[2], "line notext: no text (no TextEquiv/Unicode or String text)"),
        (BAD_LINES[3], "line nogeo: no geometry (neither a polygon nor a baseline)"),
        (BAD_LINES[4], "line flat: degenerate geometry (a 59x0 pixel box, area 0)"),
        (BAD_LINES[5], "line outside: outside the page"),
    ],
)
def test_bad_line_with_error_policy_names_file_and_line(tmp_path, line, message):
    write_page_image(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml(line))
    with pytest.raises(DataError, match=re.escape(f"{xml}: {message}")) as info:
        pages_data(tmp_path, train=str(xml)).records("train")
    assert "set stability.audit_policy=drop" in str(info.value)


def test_missing_image_is_named_or_counted(tmp_path):
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "a", coords="1,1 9,1 9,9"), image="gone.tif"))
    with pytest.raises(
        DataError, match=re.escape(f"{xml}: line l1: missing image (no image found (tried {tmp_path / 'gone.tif'}")
    ):
        pages_data(tmp_path, train=str(xml)).records("train")
    data = pages_data(
        tmp_path,
        train=[str(xml), str(write(tmp_path / "q.xml", page_xml(page_line("l2", "b", "1,1 9,1 9,9"))))],
        audit_policy="drop",
    )
    write_page_image(tmp_path / "page.png")
    assert [r.id for r in data.records("train")] == ["q/l2"]
    assert data.drops["train"] == {"missing image": 1}


def test_malformed_xml_is_one_error_naming_the_file(tmp_path):
    xml = write(tmp_path / "broken.xml", "<PcGts><Page></PcGts>")
    with pytest.raises(DataError, match=re.escape(f"{xml}: malformed XML (mismatched tag: line 1, column 15)")):
        pages_data(tmp_path, train=str(xml), audit_policy="drop").records("train")


def test_other_xml_is_refused(tmp_path):
    xml = write(tmp_path / "x.xml", "<html/>")
    with pytest.raises(DataError, match=re.escape(f"{xml}: root element <html> is neither ALTO")):
        parse_page(xml)


def test_unreadable_image_is_named(tmp_path):
    write(tmp_path / "page.png", "not an image")
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "a", coords="1,1 9,1 9,9")))
    with pytest.raises(DataError, match=re.escape(f"cannot read page image {tmp_path / 'page.png'}")):
        pages_data(tmp_path, train=str(xml)).records("train")


def test_sources_folder_glob_and_list_file(tmp_path):
    for name in ("b", "a", "sub/c"):
        write(tmp_path / "pages" / f"{name}.xml", "<x/>")
    write(tmp_path / "pages" / "D.XML", "<x/>")  # an export that writes upper-case names
    (tmp_path / "pages" / "e.xml").mkdir()  # a folder named like a page is not one
    assert [p.name for p in collect_xml(str(tmp_path / "pages"))] == ["D.XML", "a.xml", "b.xml", "c.xml"]
    (tmp_path / "pages" / "D.XML").unlink()
    assert [p.name for p in collect_xml(str(tmp_path / "pages" / "[ab].xml"))] == ["a.xml", "b.xml"]
    listing = write(tmp_path / "train.txt", "# train pages\npages/b.xml\n\npages/sub/c.xml\n")
    assert collect_xml(str(listing)) == [tmp_path / "pages" / "b.xml", tmp_path / "pages" / "sub" / "c.xml"]
    write(tmp_path / "bad.txt", "pages/zzz.xml\n")
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path / 'bad.txt'}:1: {tmp_path / 'pages/zzz.xml'} does not exist")
    ):
        collect_xml(str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match=re.escape("nowhere/*.xml: no XML page found")):
        collect_xml("nowhere/*.xml")
    with pytest.raises(
        DataError,
        match=re.escape(
            "train.txt: no such list file (one XML path per line); "
            "`python scripts/page_split_lists.py --out DIR data=NAME` writes"
        ),
    ):
        collect_xml(str(tmp_path / "splits" / "train.txt"))
    with pytest.raises(DataError, match=re.escape("hooker: no such folder; clone or copy the corpus there")):
        collect_xml([tmp_path / "hooker"])
    with pytest.raises(DataError, match=re.escape("gone.xml: no such XML file")):
        collect_xml(str(tmp_path / "gone.xml"))
    write(tmp_path / "empty" / "notes.txt", "")
    with pytest.raises(DataError, match=re.escape("empty: no XML page found")):
        collect_xml(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- split


def test_split_by_document_is_deterministic_and_disjoint():
    files = [Path(f"doc{d:02d}_{p}.xml") for d in range(20) for p in (1, 2)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    split = split_by_document(files, fractions, seed=3, pattern=r"^(doc\d+)_")
    assert split == split_by_document(list(reversed(files)), fractions, seed=3, pattern=r"^(doc\d+)_")
    assert [len(split[s]) for s in fractions] == [32, 4, 4]  # 16, 2 and 2 documents of 2 pages
    docs = {s: {p.name.split("_")[0] for p in split[s]} for s in split}
    assert not (docs["train"] & docs["val"]) and not (docs["train"] & docs["test"]) and not (docs["val"] & docs["test"])
    assert split != split_by_document(files, fractions, seed=4, pattern=r"^(doc\d+)_")
    by_page = split_by_document(files, fractions, seed=3)  # no pattern: each page its own document
    assert [len(by_page[s]) for s in fractions] == [32, 4, 4]


def test_split_fractions_are_checked_and_small_sets_still_fill_each_split():
    files = [Path(f"p{i}.xml") for i in range(3)]
    assert [len(v) for v in split_by_document(files, {"train": 0.9, "val": 0.05, "test": 0.05}, 0).values()] == [
        1,
        1,
        1,
    ]
    with pytest.raises(DataError, match=re.escape("data.split fractions must be >= 0 and sum to 1")):
        split_by_document(files, {"train": 0.9, "val": 0.2}, 0)
    with pytest.raises(DataError, match=re.escape("2 document(s) cannot be split into 3 non-empty splits")):
        split_by_document(files[:2], {"train": 0.8, "val": 0.1, "test": 0.1}, 0)


def test_pages_split_never_shares_a_page(tmp_path):
    write_page_image(tmp_path / "page.png")
    for i in range(10):
        write(
            tmp_path / "pages" / f"p{i}.xml",
            page_xml(page_line(f"l{i}", f"t{i}", "1,1 30,1 30,10"), image="../page.png"),
        )
    data = pages_data(
        tmp_path, pages=str(tmp_path / "pages"), split={"train": 0.6, "val": 0.2, "test": 0.2}, image_dirs=[".."]
    )
    ids = {s: {r.id.split("/")[0] for r in data.records(s)} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert set().union(*ids.values()) == {f"p{i}" for i in range(10)}
    with pytest.raises(DataError, match=re.escape("set either data.pages")):
        pages_data(tmp_path, pages="x", train="y")


def test_pages_split_by_line_draws_lines_across_pages_and_moves_none_for_the_audit(tmp_path):
    write_page_image(tmp_path / "page.png")
    for folder in ("pages", "complete"):  # 4 pages of 5 lines; in pages/, line 0 of page 0 has no text
        for i in range(4):
            lines = [
                page_line(
                    f"l{j}",
                    "" if folder == "pages" and i == j == 0 else f"t{i}{j}",
                    f"1,{1 + 5 * j} 30,{1 + 5 * j} 30,{4 + 5 * j} 1,{4 + 5 * j}",
                )
                for j in range(5)
            ]
            write(tmp_path / folder / f"p{i}.xml", page_xml("\n".join(lines), image="../page.png"))
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}

    def split(folder: str = "pages", **kwargs) -> dict[str, list[str]]:
        data = pages_data(
            tmp_path, pages=str(tmp_path / folder), split=fractions, split_unit="line", image_dirs=[".."], **kwargs
        )
        return {s: [r.id for r in data.records(s)] for s in fractions}

    complete = split("complete")
    assert [len(complete[s]) for s in fractions] == [12, 4, 4]
    assert set().union(*map(set, complete.values())) == {f"p{i}/l{j}" for i in range(4) for j in range(5)}
    ids = split(audit_policy="drop")  # the line without text is dropped from its split; no other line moves
    assert ids == {s: [i for i in complete[s] if i != "p0/l0"] for s in fractions}
    assert not (set(ids["train"]) & set(ids["val"])) and not (set(ids["val"]) & set(ids["test"]))
    pages_in = {s: {i.split("/")[0] for i in ids[s]} for s in fractions}
    assert pages_in["val"] & pages_in["train"]  # pages are shared: that is what a line split measures
    assert split(audit_policy="drop") == ids  # deterministic
    assert split(audit_policy="drop", split_seed=1) != ids
    with pytest.raises(DataError, match=re.escape("data.split_unit=line splits data.pages; with data.train/val/test")):
        pages_data(tmp_path, train="y", split_unit="line")
    with pytest.raises(DataError, match=re.escape("data.split_unit must be document or line, got 'page'")):
        pages_data(tmp_path, pages="x", split_unit="page")


# --------------------------------------------------------------------------- cache


def two_pages(tmp_path: Path) -> list[Path]:
    write_page_image(tmp_path / "page.png", boxes=[(5, 5, 20, 15)])
    lines = page_line("l1", "one", "1,1 30,1 30,20 1,20") + "\n" + page_line("l2", "two", "1,30 30,30 30,50 1,50")
    return [write(tmp_path / f"p{i}.xml", page_xml(lines).replace('id="r1"', f'id="r{i}"')) for i in range(2)]


def test_cache_is_reused_across_runs_and_an_edited_xml_reextracts_only_its_page(tmp_path, monkeypatch):
    xmls = two_pages(tmp_path)
    first = pages_data(tmp_path, train=[str(x) for x in xmls])
    records = first.records("train")
    assert (first.line_cache.extracted, first.line_cache.cached) == (4, 0)

    import recognizer.data.pages.cache as cache_module

    def no_decoding(path):
        raise AssertionError(f"page {path} decoded again")

    monkeypatch.setattr(cache_module, "load_page_image", no_decoding)
    again = pages_data(tmp_path, train=[str(x) for x in xmls])
    assert again.records("train") == records  # same crops, no page decoded
    assert (again.line_cache.extracted, again.line_cache.cached) == (0, 4)
    monkeypatch.undo()

    xmls[1].write_text(xmls[1].read_text().replace(">two<", ">deux<"), encoding="utf-8")
    edited = pages_data(tmp_path, train=[str(x) for x in xmls])
    assert [r.text for r in edited.records("train")] == ["one", "two", "one", "deux"]
    assert (edited.line_cache.extracted, edited.line_cache.cached) == (2, 2)

    same = pages_data(tmp_path, train=[str(x) for x in xmls], baseline_above=48, baseline_below=16.0)  # 48 == 48.0
    same.records("train")
    assert (same.line_cache.extracted, same.line_cache.cached) == (0, 4)
    other = pages_data(tmp_path, train=[str(x) for x in xmls], baseline_above=10)  # another setting: new crops
    other.records("train")
    assert (other.line_cache.extracted, other.line_cache.cached) == (4, 0)


def test_extract_height_and_throughput_log(tmp_path, caplog):
    xmls = two_pages(tmp_path)
    data = pages_data(tmp_path, train=[str(x) for x in xmls], extract_height=10)
    with caplog.at_level(logging.INFO):
        records = data.records("train")
    assert {png(r.path).shape[0] for r in records} == {10}
    assert re.search(r"train: 2 pages, 4 lines; extracted 4 lines at \d+ lines/s", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pages_data(tmp_path, train=[str(x) for x in xmls], extract_height=10).records("train")
    assert re.search(r"train: 2 pages, 4 lines; 4 lines from the cache at \d+ lines/s", caplog.text)


def test_crop_line_direct():
    page = np.full((50, 80), PAPER, dtype=np.uint8)
    page[0:5, 0:80] = 0  # a dark scan border outside the line does not change its paper colour
    crop = crop_line(page, [(10, 10), (70, 10), (40, 40)])
    assert crop.shape == (30, 60) and crop[29, 0] == PAPER


# --------------------------------------------------------------------------- deskew


def sloped_line(degrees: float, width: int = 240, height: int = 140) -> tuple[np.ndarray, str, str]:
    """A page with a 6-pixel ink stroke along a baseline falling ``degrees`` to the right, and that line's
    PAGE ``Coords`` (a band 12 px over and 4 px under the baseline) and ``Baseline`` points."""
    page = np.full((height, width), PAPER, dtype=np.uint8)
    slope = math.tan(math.radians(degrees))
    ends = [(x, height / 2 + (x - width / 2) * slope) for x in (20, width - 20)]
    for x in range(20, width - 20):
        y = round(height / 2 + (x - width / 2) * slope)
        page[y - 6 : y, x] = INK
    top = " ".join(f"{x:g},{y - 12:g}" for x, y in ends)
    bottom = " ".join(f"{x:g},{y + 4:g}" for x, y in reversed(ends))
    return page, f"{top} {bottom}", " ".join(f"{x:g},{y:g}" for x, y in ends)


def ink_rows(crop: np.ndarray) -> np.ndarray:
    """The mean row of the ink in each column that holds ink (the stroke's ends, cut by the outline, left out)."""
    ink = crop < (int(INK) + int(PAPER)) // 2
    columns = ink.any(axis=0)
    rows = np.arange(crop.shape[0])[:, None]
    return ((ink * rows).sum(axis=0)[columns] / ink.sum(axis=0)[columns])[3:-3]


def test_baseline_angle_is_the_fitted_slope_within_its_limits():
    def angle(*points: tuple[float, float]) -> float:
        return math.degrees(baseline_angle(PageLine("l", "x", None, points or None)))

    assert angle((0, 0), (50, 5), (100, 10)) == pytest.approx(math.degrees(math.atan(0.1)))
    assert angle((100, 10), (0, 0)) == pytest.approx(math.degrees(math.atan(0.1)))  # point order does not matter
    assert angle((0, 10), (100, 0)) == pytest.approx(-math.degrees(math.atan(0.1)))  # rising to the right
    assert angle((0, 0), (50, 30), (100, 0)) == 0.0  # an arch: its fitted line is level
    assert angle((0, 0), (100, 0.5)) == 0.0  # under MIN_DESKEW_DEGREES: cut as it is
    assert angle((0, 0), (100, 200)) == 0.0  # over MAX_DESKEW_DEGREES: which way up it reads is unknown
    assert angle((0, 0), (0.5, 100)) == 0.0 and angle((5, 5)) == 0.0 and angle() == 0.0
    assert angle((0, 0), (100, float("nan"))) == 0.0


def test_crop_line_turned_by_the_baseline_angle_lies_level():
    page, coords, baseline = sloped_line(10)
    points = [tuple(map(float, p.split(","))) for p in coords.split()]
    angle = baseline_angle(PageLine("l", "x", None, tuple(tuple(map(float, p.split(","))) for p in baseline.split())))
    assert math.degrees(angle) == pytest.approx(10, abs=0.01)
    plain, turned = crop_line(page, points), crop_line(page, points, angle=angle)
    assert np.ptp(ink_rows(plain)) > 25  # the stroke falls ~35 rows across the box
    assert np.ptp(ink_rows(turned)) <= 2  # turned: level
    assert turned.shape[0] < plain.shape[0] / 2 and turned.shape[1] > 0.95 * plain.shape[1] / math.cos(angle)
    assert turned[0, 0] == PAPER and turned[-1, -1] == PAPER  # outside the outline: the paper colour
    assert crop_line(page, points, height=8, angle=angle).shape[0] == 8


def test_pages_deskew_cuts_turned_lines_and_keeps_the_old_cache_keys(tmp_path):
    page, coords, baseline = sloped_line(10)
    Image.fromarray(page, mode="L").save(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "x", coords, baseline), width=240, height=140))
    [plain] = pages_data(tmp_path, train=str(xml)).records("train")
    [turned] = pages_data(tmp_path, train=str(xml), deskew=True).records("train")  # the same cache folder
    assert plain.path.parent != turned.path.parent
    assert np.ptp(ink_rows(png(plain.path))) > 25 and np.ptp(ink_rows(png(turned.path))) <= 2
    # off, the settings (and so the folders) have the keys of caches cut before data.deskew existed; the version
    # is what tells caches of older extraction code apart
    expected = {"above": 48.0, "below": 16.0, "height": 32, "version": EXTRACTION_VERSION}
    assert json.loads(LineCache(tmp_path, 48, 16, 32).settings) == expected
    assert json.loads(LineCache(tmp_path, 48, 16, 32, deskew=True).settings) == {**expected, "deskew": True}


def test_checkpoint_preprocessing_says_how_its_lines_were_cut():
    from recognizer.checkpoint import preprocessing_settings

    def settings(**data) -> dict:
        return preprocessing_settings({"config": {"data": {"height": 48, **data}}})

    assert settings(extract_height=48)["deskew"] is False  # a pages checkpoint older than data.deskew
    assert settings(extract_height=48, deskew=True)["deskew"] is True
    assert "deskew" not in settings()  # not trained on pages


# --------------------------------------------------------------------------- character mapping


def test_char_map_file_and_dataset(tmp_path):
    mapping = write(tmp_path / "map.tsv", "’\t'\nﬁ\tfi\nſ\ts\n&\tet\n")
    assert load_char_map(str(mapping)) == {"’": "'", "ﬁ": "fi", "ſ": "s", "&": "et"}
    assert apply_char_map("l’oﬁce ſ &", load_char_map(str(mapping))) == "l'ofice s et"
    write_page_image(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "ſi l’&amp;", "1,1 30,1 30,10")))
    data = pages_data(tmp_path, train=str(xml), char_map=str(mapping))
    assert [r.text for r in data.records("train")] == ["si l'et"]
    assert data.char_map == {"’": "'", "ﬁ": "fi", "ſ": "s", "&": "et"}
    write(tmp_path / "bad.tsv", "x y\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'bad.tsv'}:1: expected 'from<TAB>to', got 'x y'")):
        load_char_map(str(tmp_path / "bad.tsv"))
    with pytest.raises(DataError, match=r"character mapping file .*nope\.tsv does not exist"):
        load_char_map(str(tmp_path / "nope.tsv"))


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_and_eval_on_pages_keep_the_char_map(tmp_path):
    """recognizer-train with data=pages stores the mapping's content; recognizer-eval applies it."""
    from recognizer.checkpoint import load_checkpoint
    from recognizer.evaluate import evaluate_checkpoint
    from recognizer.train import train
    from tests.conftest import compose_config

    boxes = [(4 + 10 * i, 6 + 20 * k, 8 + 10 * i, 14 + 20 * k) for k in range(4) for i in range(k + 1)]
    write_page_image(tmp_path / "page.png", width=120, height=90, boxes=boxes)
    lines = [
        page_line(f"l{k}", "ſa"[: 1 + k % 2] * (k + 1), f"0,{20 * k} 120,{20 * k} 120,{20 * k + 20} 0,{20 * k + 20}")
        for k in range(4)
    ]
    for name in ("train", "val"):
        write(tmp_path / name / "p.xml", page_xml("\n".join(lines), image="../page.png", height=90))
    mapping = write(tmp_path / "map.tsv", "ſ\ts\n")
    common = [
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.height=32",
        f"paths.output_dir={tmp_path / 'run'}",
        "data.image_dirs=['..']",  # the page image is beside the XML folders: an allowed folder must name it
    ]
    cfg = compose_config(
        "train",
        [
            "data=pages",
            f"data.train={tmp_path / 'train'}",
            f"data.val={tmp_path / 'val'}",
            f"data.char_map={mapping}",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            "scheduler.warmup_steps=1",
            "stability.min_frames_per_label=0",
            "stability.audit_policy=drop",
            *common,
        ],
    )
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    saved = load_checkpoint(ckpt)
    assert saved["char_map"] == {"ſ": "s"} and "ſ" not in saved["alphabet"]
    eval_cfg_args = [
        f"checkpoint={ckpt}",
        "data=pages",
        f"data.test={tmp_path / 'val'}",
        *common[:2],
        common[3],
        f"paths.output_dir={tmp_path / 'eval'}",
    ]
    eval_cfg = compose_config("eval", eval_cfg_args)
    metrics = evaluate_checkpoint(eval_cfg)  # the eval config names no char_map: the checkpoint's applies
    assert metrics["test/samples"] == 4
    references = (tmp_path / "eval" / "predictions_test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert [r.split("\t")[1] for r in references] == ["s", "sasa", "sss", "sasasasa"]
    # a test page with a line without text: the checkpoint's audit_policy=drop applies unless eval says otherwise
    empty = page_line("blank", "", "0,80 120,80 120,90 0,90")
    write(tmp_path / "test" / "p.xml", page_xml("\n".join([*lines, empty]), image="../page.png", height=90))
    with_empty = [f"data.test={tmp_path / 'test'}" if o.startswith("data.test=") else o for o in eval_cfg_args]
    assert evaluate_checkpoint(compose_config("eval", with_empty))["test/samples"] == 4
    with pytest.raises(DataError, match=r"line blank: no text \(empty\)\..*\(recognizer-eval: audit_policy=drop\)"):
        evaluate_checkpoint(compose_config("eval", [*with_empty, "audit_policy=error"]))

    from recognizer.inference import Transcriber

    model = Transcriber.from_checkpoint(ckpt, device="cpu")  # cuts lines at the trained extract_height (32)
    with pytest.raises(DataError, match=r"page image not found .*outside the XML's folder and --image-dir"):
        model.transcribe_pages(str(tmp_path / "val"), tmp_path / "refused")  # the checkpoint's '..' is not trusted
    [out] = model.transcribe_pages(str(tmp_path / "val"), tmp_path / "transcribed", image_dirs=[".."])
    val = pages_data(tmp_path, train=str(tmp_path / "val"), extract_height=32, image_dirs=[".."])
    crops = [png(r.path) for r in val.records("train")]
    assert {c.shape[0] for c in crops} == {32}  # the cache holds crops at data.height
    written = parse_page(out)
    assert [line.text for line in written.lines] == [t.text for t in model.transcribe(crops)]


def test_pages_config_takes_data_augment(tmp_path: Path) -> None:
    """data=pages takes data.augment like data=lines (off by default; PagesData.dataset gives it to train only)."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(
        "train",
        ["data=pages", "data.augment.enabled=true", "data.train=x", "data.val=y", f"paths.output_dir={tmp_path}"],
    )
    data = instantiate(cfg.data)
    assert data.augment is not None and data.augment.enabled
    off = instantiate(compose_config("train", ["data=pages", "data.train=x", "data.val=y"]).data)
    assert off.augment is None  # off by default


def test_split_lists_for_a_peer_tool_are_the_training_split(tmp_path):
    """scripts/page_split_lists.py writes exactly the pages each split trains on (kraken's -t/-e lists)."""
    from tests.helpers.scripts import load_script

    script = load_script("page_split_lists")
    write_page_image(tmp_path / "page.png")
    for i in range(10):
        write(tmp_path / "pages" / f"p{i}.xml", page_xml(page_line(f"l{i}", f"t{i}", "1,1 30,1 30,10"), "../page.png"))
    data = pages_data(tmp_path, pages=str(tmp_path / "pages"), split={"train": 0.6, "val": 0.4, "test": 0.0})
    counts = script.write_lists(data, tmp_path / "lists", xml_dir=tmp_path / "flat")
    assert counts == {"train": 6, "val": 4, "test": 0}
    listed = (tmp_path / "lists" / "val.txt").read_text(encoding="utf-8").split()
    assert listed == [str((tmp_path / "flat" / f.name).absolute()) for f in data.files("val")]
    by_line = pages_data(tmp_path, pages=str(tmp_path / "pages"), split_unit="line")
    with pytest.raises(DataError, match=re.escape("data.split_unit=line splits lines, not pages: no page list holds")):
        script.write_lists(by_line, tmp_path / "line_lists")
    assert not (tmp_path / "line_lists").exists()


def test_cremma_config_splits_by_manuscript_and_maps_line_end_hyphens(tmp_path: Path) -> None:
    """data=cremma_mss18: each manuscript folder in one split; the val/test hands' '¬' and '=' become '-'."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config("train", ["data=cremma_mss18", f"paths.output_dir={tmp_path}"])
    folders = [Path(f).name for f in [*cfg.data.train, cfg.data.val, cfg.data.test]]
    assert len(folders) == len(set(folders)) == 12  # 10 train, 1 val, 1 test manuscripts, none shared
    data = instantiate(cfg.data)
    assert data.char_map == {"¬": "-", "=": "-"}
    assert apply_char_map("im¬", data.char_map) == "im-"
    assert apply_char_map("=quables", data.char_map) == "-quables"


def test_a_sixteen_bit_page_scan_keeps_its_ink(tmp_path: Path) -> None:
    """An archival 16-bit master: paper at 50,000 and ink at 8,000 read as 195 and 31, not as one white page."""
    scan = np.full((4, 6), 50000, dtype=np.uint16)
    scan[1:3, 2:4] = 8000
    Image.fromarray(scan).save(tmp_path / "page.png")
    page = load_page_image(tmp_path / "page.png")
    assert page.dtype == np.uint8 and page[0, 0] == 195 and page[1, 2] == 31


def test_a_float_page_scan_keeps_its_ink_and_one_out_of_range_is_named(tmp_path: Path) -> None:
    """A float TIFF in [0, 1] is scaled like the others (Pillow's convert("L") reads 0.5 as black), one in
    [0, 255] as such exports write it; one holding other values is refused with its file and the fix."""
    scan = np.full((4, 6), 0.8, dtype=np.float32)
    scan[1:3, 2:4] = 0.1
    for name, values in (("unit.tif", scan), ("bytes.tif", scan * 255.0)):
        Image.fromarray(values, mode="F").save(tmp_path / name)
        page = load_page_image(tmp_path / name)
        assert page.dtype == np.uint8 and page[0, 0] == 204 and page[1, 2] == 26
    Image.fromarray(scan * 1000.0, mode="F").save(tmp_path / "bright.tif")
    with pytest.raises(DataError, match=re.escape(f"page image {tmp_path / 'bright.tif'}: a float image must hold")):
        load_page_image(tmp_path / "bright.tif")


def test_two_lines_with_one_sample_id_name_their_files_and_the_fix(tmp_path: Path) -> None:
    box = "2,2 40,2 40,20 2,20"
    for work in ("work_a", "work_b"):  # an OCR-D-like layout: one folder per work, the same page names
        write_page_image(tmp_path / work / "page.png", boxes=[(2, 2, 40, 20)])
        write(tmp_path / work / "0001.xml", page_xml(page_line("l1", "ab", coords=box)))
    a, b = tmp_path / "work_a" / "0001.xml", tmp_path / "work_b" / "0001.xml"
    with pytest.raises(DataError, match=re.escape(f"{a} and {b} both give their line 'l1' the sample id '0001/l1'")):
        pages_data(tmp_path, train=str(tmp_path)).records("train")
    write(a, page_xml(page_line("l1", "ab", coords=box) + page_line("l1", "ba", coords=box)))
    with pytest.raises(DataError, match=re.escape(f"{a}: two lines have the id 'l1'")):
        pages_data(tmp_path, train=str(a)).records("train")


def test_a_transparent_page_scan_reads_as_white_paper(tmp_path: Path) -> None:
    scan = np.zeros((4, 6, 2), dtype=np.uint8)  # LA: black everywhere, opaque only where the ink is
    scan[1:3, 2:4, 1] = 255
    Image.fromarray(scan, mode="LA").save(tmp_path / "page.png")
    page = load_page_image(tmp_path / "page.png")
    assert page[0, 0] == 255 and page[1, 2] == 0
