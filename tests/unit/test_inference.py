"""The Python API (recognizer.inference.Transcriber) and pages out: transcriptions written into ALTO/PAGE XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from recognizer import inference
from recognizer.alphabet import UNK, UNK_TEXT, Alphabet
from recognizer.cli.transcribe import main
from recognizer.data.pages.formats import local_name
from recognizer.data.pages.geometry import LineGeometryError
from recognizer.data.pages.write import LineText, write_page
from recognizer.decoding import Hypothesis
from recognizer.inference import Transcriber
from tests.helpers.page_fixtures import alto_line, alto_xml, page_line, page_xml, write
from tests.helpers.tiny_checkpoint import sample_line, tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_root)


@pytest.fixture(scope="module")
def model(ckpt: Path) -> Transcriber:
    return Transcriber.from_checkpoint(ckpt, device="cpu", batch_size=2)


def test_paths_pil_images_and_arrays_give_the_same_transcription(model: Transcriber, data_root: Path) -> None:
    path, _ = sample_line(data_root, "test", 0)
    with Image.open(path) as im:
        pil = im.copy()
    uint8 = np.asarray(pil)
    floats = uint8.astype(np.float32) / 255.0
    rgb = np.stack([uint8] * 3, axis=-1)
    results = model.transcribe([path, pil, uint8, floats, rgb])
    assert [r.source for r in results] == [str(path), "<image 1>", "<image 2>", "<image 3>", "<image 4>"]
    assert len({(r.text, r.confidence) for r in results}) == 1  # one preprocessing path for all
    first = results[0]
    assert first.text == "".join(t.symbol for t in first.tokens)
    assert 0 < first.confidence <= 1 and all(0 < t.confidence <= 1 for t in first.tokens)
    positions = [t.position for t in first.tokens]
    assert positions == sorted(positions) and all(0 <= x < pil.width for x in positions)
    [single] = model.transcribe(str(path))  # one input: a list of one
    assert single == first
    with pytest.raises(FileNotFoundError, match=re.escape("nope.png does not exist")):
        model.transcribe("nope.png")


def test_an_unknown_symbol_reads_the_same_in_the_text_and_its_tokens(ckpt: Path, data_root: Path) -> None:
    """The tokens (what ALTO's words are built from) write ``<unk>`` as the text does, U+FFFD: never the five
    characters of the token's name."""
    path, _ = sample_line(data_root, "test", 0)
    unk_model = Transcriber.from_checkpoint(ckpt, device="cpu", batch_size=2)
    unk_model.alphabet = Alphabet([UNK, *unk_model.alphabet.symbols[1:]])  # id 1 is <unk> now
    unk_model.decoder = lambda logits, lengths: [Hypothesis([1, 2], 0.0, [0, 1]) for _ in lengths]  # type: ignore[assignment]
    [result] = unk_model.transcribe(path)
    second = unk_model.alphabet.symbols[1]
    assert result.text == UNK_TEXT + second
    assert [t.symbol for t in result.tokens] == [UNK_TEXT, second]


# --------------------------------------------------------------------------- pages out


def paste_page(data_root: Path, folder: Path, n: int = 3) -> tuple[Path, list[tuple[int, int, int, int]], list[str]]:
    """A page image holding ``n`` generated digit lines one under another; their boxes and images."""
    lines = [sample_line(data_root, "test", i)[0] for i in range(n)]
    images = [np.asarray(Image.open(p).convert("L")) for p in lines]
    width = max(im.shape[1] for im in images) + 20
    page = np.full((30 * n + 10, width), 240, dtype=np.uint8)
    boxes = []
    for i, im in enumerate(images):
        x0, y0 = 10, 10 + 30 * i
        page[y0 : y0 + im.shape[0], x0 : x0 + im.shape[1]] = im
        boxes.append((x0, y0, x0 + im.shape[1], y0 + im.shape[0]))
    Image.fromarray(page).save(folder / "page.png")
    return folder / "page.png", boxes, [str(p) for p in lines]


def without(root: ET.Element, skip) -> list[tuple]:
    """Every element as (tag, attributes, text, tail) in document order, except the subtrees ``skip`` selects."""
    rows: list[tuple] = []

    def walk(e: ET.Element) -> None:
        if skip(e):
            return
        rows.append((e.tag, dict(e.attrib), (e.text or "").strip(), (e.tail or "").strip()))
        for c in e:
            walk(c)

    walk(root)
    return rows


def read_tree(path: Path) -> ET.Element:
    return ET.parse(path, ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))).getroot()


def test_page_xml_gets_our_text_and_keeps_everything_else(model: Transcriber, data_root: Path, tmp_path: Path) -> None:
    pages = tmp_path / "in"
    pages.mkdir()
    _, boxes, line_images = paste_page(data_root, pages)
    lines = [
        page_line(f"l{i}", "old text" if i else None, coords=f"{x0},{y0} {x1},{y0} {x1},{y1} {x0},{y1}")
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    ]
    lines[2] = (
        lines[2]
        .replace("</TextLine>", '<TextStyle fontSize="9"/></TextLine>')
        .replace("<TextEquiv", '<TextEquiv index="1"><Unicode>gt</Unicode></TextEquiv><TextEquiv')
    )
    xml = write(pages / "p.xml", page_xml("\n".join(lines), width=Image.open(pages / "page.png").width, height=100))
    [out] = model.transcribe_pages([xml], tmp_path / "out")
    assert out == tmp_path / "out" / "p.xml"
    expected = model.transcribe(line_images)

    written = read_tree(out)
    text_lines = [e for e in written.iter() if local_name(e.tag) == "TextLine"]
    for line, want in zip(text_lines, expected):
        [equiv] = [c for c in line if local_name(c.tag) == "TextEquiv"]
        assert equiv.get("conf") == f"{want.confidence:.4f}"
        assert [c.text or "" for c in equiv] == [want.text]
    assert [local_name(c.tag) for c in text_lines[2]] == ["Coords", "TextEquiv", "TextStyle"]  # schema order kept

    def is_text(e: ET.Element) -> bool:
        return local_name(e.tag) == "TextEquiv"

    assert without(written, is_text) == without(read_tree(xml), is_text)  # all else unchanged, comment included
    head = out.read_text(encoding="utf-8")[:400]
    assert '<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"' in head  # no ns0:
    assert "xsi:schemaLocation=" in head and "<!-- exported by a test -->" in head


def test_a_line_that_cannot_be_cut_keeps_its_text_and_the_others_get_theirs(
    model: Transcriber, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crop of the second line fails after its box was found (possible with deskew): lines 1 and 3 get
    their own texts, line 2 keeps its ground truth."""
    pages = tmp_path / "in"
    pages.mkdir()
    _, boxes, line_images = paste_page(data_root, pages, n=3)
    lines = [
        page_line(f"l{i}", f"truth {i}", coords=f"{x0},{y0} {x1},{y0} {x1},{y1} {x0},{y1}")
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    ]
    xml = write(pages / "p.xml", page_xml("\n".join(lines), width=Image.open(pages / "page.png").width, height=100))
    cut = inference.crop_line
    calls = iter(range(3))

    def second_fails(*args: Any, **kwargs: Any) -> np.ndarray:
        if next(calls) == 1:
            raise LineGeometryError("degenerate", "a turned outline outside the page")
        return cut(*args, **kwargs)

    monkeypatch.setattr(inference, "crop_line", second_fails)
    [out] = model.transcribe_pages([xml], tmp_path / "out")
    first, _, third = model.transcribe(line_images)
    written = [e for e in read_tree(out).iter() if local_name(e.tag) == "TextLine"]
    texts = [[u.text or "" for eq in line if local_name(eq.tag) == "TextEquiv" for u in eq] for line in written]
    assert texts == [[first.text], ["truth 1"], [third.text]]


def test_alto_gets_words_with_confidence_and_keeps_everything_else(
    model: Transcriber, data_root: Path, tmp_path: Path
) -> None:
    pages = tmp_path / "in"
    pages.mkdir()
    _, boxes, line_images = paste_page(data_root, pages, n=2)
    lines = "\n".join(
        alto_line(
            f"l{i}",
            '<String CONTENT="old"/><SP/><String CONTENT="words"/><HYP CONTENT="-"/>',
            polygon=f"{x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1}",
        )
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    )
    xml = write(pages / "a.xml", alto_xml(lines, width=Image.open(pages / "page.png").width, height=70))
    [out] = model.transcribe_pages(str(pages), tmp_path / "out")
    expected = model.transcribe(line_images)
    written = read_tree(out)
    text_lines = [e for e in written.iter() if local_name(e.tag) == "TextLine"]
    for line, want, (x0, y0, x1, y1) in zip(text_lines, expected, boxes):
        strings = [c for c in line if local_name(c.tag) == "String"]
        assert " ".join(s.get("CONTENT") for s in strings) == want.text
        assert all(0 < float(s.get("WC")) <= 1 for s in strings)
        assert [int(strings[0].get(k)) for k in ("VPOS", "HEIGHT")] == [y0, y1 - y0]
        assert x0 <= int(strings[0].get("HPOS")) < x1
        assert not [c for c in line if local_name(c.tag) == "HYP"]

    def is_text(e: ET.Element) -> bool:
        return local_name(e.tag) in ("String", "SP", "HYP")

    assert without(written, is_text) == without(read_tree(xml), is_text)
    assert '<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#"' in out.read_text(encoding="utf-8")


def test_alto_words_and_spaces_from_token_positions(tmp_path: Path) -> None:
    xml = write(tmp_path / "a.xml", alto_xml(alto_line("l1", '<String CONTENT="x"/>', polygon="0 0 9 0 9 9")))
    chars = tuple((c, 100.0 + 10 * i, 0.5 if c == "b" else 1.0) for i, c in enumerate("ab cd"))
    out = write_page(xml, [LineText("ab cd", 0.9, (100.0, 20.0, 160.0, 40.0), chars)], tmp_path / "o" / "a.xml")
    line = next(e for e in read_tree(out).iter() if local_name(e.tag) == "TextLine")
    rows = [(local_name(c.tag), dict(c.attrib)) for c in line if local_name(c.tag) != "Shape"]
    assert rows == [
        ("String", {"CONTENT": "ab", "HPOS": "100", "VPOS": "20", "WIDTH": "20", "HEIGHT": "20", "WC": "0.7500"}),
        ("SP", {"HPOS": "120", "VPOS": "20", "WIDTH": "10"}),
        ("String", {"CONTENT": "cd", "HPOS": "130", "VPOS": "20", "WIDTH": "30", "HEIGHT": "20", "WC": "1.0000"}),
    ]
    with pytest.raises(ValueError, match=re.escape(f"{xml}: 1 text lines but 2 transcriptions")):
        write_page(xml, [None, None], tmp_path / "o" / "b.xml")


def test_cli_pages_out_and_its_errors(ckpt: Path, data_root: Path, tmp_path: Path, capsys) -> None:
    pages = tmp_path / "in"
    pages.mkdir()
    _, [(x0, y0, x1, y1)], _ = paste_page(data_root, pages, n=1)
    write(pages / "p.xml", page_xml(page_line("l1", None, f"{x0},{y0} {x1},{y0} {x1},{y1}"), image="page.png"))
    main([str(ckpt), str(pages / "p.xml"), "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert capsys.readouterr().out == f"{tmp_path / 'out' / 'p.xml'}\n"
    main([str(ckpt), str(pages), "--out-dir", str(tmp_path / "out2"), "--device", "cpu"])  # a folder of pages
    assert capsys.readouterr().out == f"{tmp_path / 'out2' / 'p.xml'}\n"
    with pytest.raises(SystemExit, match=re.escape("--out-dir is where transcribed ALTO/PAGE pages go")):
        main([str(ckpt), str(pages / "page.png"), "--out-dir", str(tmp_path / "out3")])  # a line image
    with pytest.raises(SystemExit, match=re.escape("XML pages are transcribed alone, into --out-dir DIR")):
        main([str(ckpt), str(pages / "p.xml")])
    with pytest.raises(SystemExit, match=re.escape(f"output folder {pages} holds input pages")):
        main([str(ckpt), str(pages / "p.xml"), "--out-dir", str(pages)])
    (pages / "page.png").unlink()
    with pytest.raises(
        SystemExit, match=re.escape(f"{pages / 'p.xml'}: page image not found (tried {pages / 'page.png'}")
    ):
        main([str(ckpt), str(pages / "p.xml"), "--out-dir", str(tmp_path / "out")])


@pytest.mark.parametrize("deskew", [False, True])
def test_pages_are_cut_as_the_checkpoint_cut_them_deskew_included(
    model: Transcriber, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deskew: bool
) -> None:
    """A checkpoint trained with data.deskew=true turns sloping lines before reading them; one without does not."""
    import recognizer.inference as inference

    angles: list[float] = []

    def spy(page: np.ndarray, points, height=None, angle: float = 0.0) -> np.ndarray:
        angles.append(angle)
        return crop(page, points, height, angle)

    crop = inference.crop_line
    monkeypatch.setattr(inference, "crop_line", spy)
    monkeypatch.setitem(model.config["data"], "deskew", deskew)
    pages = tmp_path / "in"
    pages.mkdir()
    _, [(x0, y0, x1, y1), level], _ = paste_page(data_root, pages, n=2)
    sloped = page_line("l0", None, f"{x0},{y0} {x1},{y0 + 8} {x1},{y1 + 8} {x0},{y1}", f"{x0},{y1 - 4} {x1},{y1 + 4}")
    flat = page_line(
        "l1", None, "{0},{1} {2},{1} {2},{3} {0},{3}".format(*level), f"{level[0]},{level[3]} {level[2]},{level[3]}"
    )
    xml = write(pages / "p.xml", page_xml(f"{sloped}\n{flat}", width=Image.open(pages / "page.png").width, height=70))
    model.transcribe_pages([xml], tmp_path / "out")
    slope = np.degrees(np.arctan(8 / (x1 - x0)))
    assert np.degrees(angles) == pytest.approx([slope if deskew else 0.0, 0.0])
