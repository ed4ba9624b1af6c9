"""Hostile or odd inputs get a named error or an audit violation with its reason, never a traceback and
never silent damage: decompression-bomb image headers (line manifests, recognizer-transcribe, page scans),
transcripts of only spaces or with invisible format characters, self-intersecting line polygons, and line
cache entries changed on disk."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from recognizer import CONFIG_DIR
from recognizer.alphabet import Alphabet, strip_format_chars
from recognizer.cli.transcribe import main as transcribe_main
from recognizer.data.base import DataError
from recognizer.data.batching import Collate
from recognizer.data.images.lines import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, LineDataset, read_records
from recognizer.data.pages import PagesData
from recognizer.data.pages.cache import load_page_image
from recognizer.data.pages.geometry import LineGeometryError, crop_line, line_box, polygon_area
from recognizer.stability.audit import FIXES, AuditError
from recognizer.stability.runtime import run_audit
from tests.conftest import compose_config
from tests.helpers.page_fixtures import INK, PAPER, page_line, page_xml, write, write_page_image

MODEL = SimpleNamespace(output_lengths=lambda widths: widths // 4)  # subsamples the width by 4, like the CRNN
STABILITY = OmegaConf.load(Path(CONFIG_DIR) / "stability" / "default.yaml")


def stability(**overrides: object) -> object:
    node = OmegaConf.create({k: v for k, v in STABILITY.items() if k != "defaults"})
    node.update(overrides)
    return node


def counts(report) -> dict[str, int]:
    return {reason: len(ids) for reason, ids in report.violations.items()}


def write_line(path: Path, width: int = 64, height: int = 16) -> Path:
    arr = np.full((height, width), 255, np.uint8)
    arr[4:12, 4 : width - 4] = 0
    Image.fromarray(arr).save(path)
    return path


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny 8x8 PNG whose IHDR (and its CRC) claims ``width`` x ``height``: nothing large is allocated."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    tsv = tmp_path / "train.tsv"
    tsv.write_text("image\ttext\n" + "".join(f"{image}\t{text}\n" for image, text in rows), encoding="utf-8")
    return tsv


def audit_lines(tsv: Path, alphabet: Alphabet | None = None, **overrides: object):
    dataset = LineDataset(read_records(tsv), height=16)
    alphabet = alphabet or Alphabet.from_texts(dataset.texts)
    return dataset, run_audit("train", dataset, alphabet, MODEL, stability(**overrides))


# --------------------------------------------------------------------------- decompression bombs


def bomb_message(path: Path, sample: str, size: str, pixels: int) -> str:
    return (
        f"image {path} (sample {sample}) is {size}, over the limit of {MAX_IMAGE_PIXELS:,} pixels: refused before "
        f"decoding (a decompression bomb, or a scan far larger than needed). If it is a genuine scan, downscale it, "
        f"or raise the limit with the environment variable {MAX_PIXELS_ENV}={pixels}"
    )


def test_bomb_png_header_in_a_manifest_is_a_too_large_violation(tmp_path: Path) -> None:
    write_line(tmp_path / "good.png")
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)
    tsv = manifest(tmp_path, [("good.png", "ab"), ("bomb.png", "ab")])
    with pytest.raises(AuditError) as info:
        audit_lines(tsv)
    message = str(info.value)
    assert bomb_message(bomb, "bomb.png", "900,000,000 pixels", 900_000_000) in message
    assert "too_large: 1 — e.g. bomb.png: " in message and FIXES["too_large"] in message
    _, report = audit_lines(tsv, audit_policy="drop")
    assert counts(report) == {"too_large": 1} and report.kept == [0]
    assert report.counts()["dropped/too_large"] == 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning, then our refusal
def test_header_over_our_limit_but_under_pils_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "big.png", 10000, 10000)
    dataset = LineDataset(read_records(manifest(tmp_path, [("big.png", "ab")])), height=16)
    error = dataset.unreadable[0]
    assert error.reason == "too_large"
    assert bomb_message(bomb, "big.png", "10000x10000 = 100,000,000 pixels", 100_000_000) in str(error)
    with pytest.raises(DataError, match=re.escape("(sample big.png) is 10000x10000 = 100,000,000 pixels")):
        dataset.load(0)  # loading checks the header again: the pixels are never decoded


def test_the_limit_is_raised_by_the_environment_without_changing_pils_global(tmp_path: Path, monkeypatch) -> None:
    bomb_png(tmp_path / "big.png", 30000, 300)  # 9 million pixels: a long line, under the default
    bomb_png(tmp_path / "huge.png", 30000, 30000)
    tsv = manifest(tmp_path, [("big.png", "ab"), ("huge.png", "ab")])
    pil_limit = Image.MAX_IMAGE_PIXELS
    assert LineDataset(read_records(tsv), height=16).header_widths == [1600, 0]
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000000")  # a genuine scan: allowed, PIL's global left as it was
    assert LineDataset(read_records(tsv), height=16).header_widths == [1600, 16]
    assert pil_limit == Image.MAX_IMAGE_PIXELS
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")  # lowered below the long line
    assert LineDataset(read_records(tsv), height=16).unreadable[0].reason == "too_large"
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV}='lots': expected a positive number of pixels"):
        _ = LineDataset(read_records(tsv), height=16).header_widths


def test_bomb_page_scan_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "page.png", 30000, 30000)
    with pytest.raises(DataError, match=re.escape(f"page image {bomb} is 900,000,000 pixels, over the limit of")):
        load_page_image(bomb)
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "ab", coords="1,1 30,1 30,10 1,10")))
    with pytest.raises(DataError, match=re.escape(f"page image {bomb} is 900,000,000 pixels")):
        PagesData(train=str(xml), cache_dir=str(tmp_path / "cache")).records("train")


def untrained_image_checkpoint(path: Path) -> Path:
    """A checkpoint of an untrained CRNN on 16-pixel lines (the embedded digit lines' config), alphabet "ab"."""
    cfg = compose_config("train", [f"paths.output_dir={path.parent}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=3)
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"alphabet": ["a", "b"], "config": config, "model": model.state_dict()}, path)
    return path


def test_transcribe_refuses_a_bomb_line_image_with_exit_code_3(tmp_path: Path, capsys) -> None:
    ckpt = untrained_image_checkpoint(tmp_path / "model.ckpt")
    good = write_line(tmp_path / "good.png")
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)
    transcribe_main([str(ckpt), str(good), "--device", "cpu"])  # the checkpoint itself works
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        transcribe_main([str(ckpt), str(good), str(bomb), "--device", "cpu"])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert f"recognizer-transcribe: error: image {bomb} is 900,000,000 pixels, over the limit of" in err
    assert f"{MAX_PIXELS_ENV}=900000000" in err and "Traceback" not in err


# --------------------------------------------------------------------------- transcripts


def test_whitespace_only_transcript_is_a_violation(tmp_path: Path) -> None:
    write_line(tmp_path / "a.png")
    write_line(tmp_path / "b.png")
    tsv = manifest(tmp_path, [("a.png", "ab"), ("b.png", "   ")])
    with pytest.raises(AuditError) as info:
        audit_lines(tsv, alphabet=Alphabet.from_texts(["ab "]))
    message = str(info.value)
    assert "whitespace_only: 1 — e.g. b.png: transcript of only whitespace '   '" in message
    assert FIXES["whitespace_only"] in message
    _, report = audit_lines(tsv, alphabet=Alphabet.from_texts(["ab "]), audit_policy="drop")
    assert counts(report) == {"whitespace_only": 1} and report.kept == [0]


@pytest.mark.parametrize(
    ("char", "named"),
    [
        ("\u200b", "U+200B ZERO WIDTH SPACE"),
        ("\u200f", "U+200F RIGHT-TO-LEFT MARK"),
        ("\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("\u200d", "U+200D ZERO WIDTH JOINER"),
        ("\u00ad", "U+00AD SOFT HYPHEN"),
    ],
)
def test_invisible_format_characters_are_violations_naming_the_code_point(tmp_path: Path, char, named) -> None:
    write_line(tmp_path / "a.png")
    write_line(tmp_path / "b.png")
    tsv = manifest(tmp_path, [("a.png", "ab"), ("b.png", f"a{char}b")])
    assert Alphabet.from_texts(["ab", f"a{char}b"]).symbols == ["a", "b"]  # never taken into a built alphabet
    with pytest.raises(AuditError) as info:
        audit_lines(tsv)
    message = str(info.value)
    assert f"invisible: 1 — e.g. b.png: invisible format character {named} at 1 in {f'a{char}b'!r}" in message
    assert "stability.strip_format_chars=true" in message
    _, report = audit_lines(tsv, audit_policy="drop")
    assert counts(report) == {"invisible": 1} and report.kept == [0]


def test_invisible_characters_come_before_the_unknown_symbol_policy(tmp_path: Path) -> None:
    write_line(tmp_path / "a.png")
    tsv = manifest(tmp_path, [("a.png", "a\u200bb")])
    with pytest.raises(AuditError, match=r"invisible: 1 — e\.g\. a\.png: invisible format character U\+200B"):
        audit_lines(tsv, alphabet=Alphabet.from_texts(["ab"], with_unk=True), unknown="unk")  # not <unk>: flagged


def test_an_alphabet_file_that_lists_a_format_character_keeps_it(tmp_path: Path) -> None:
    write_line(tmp_path / "a.png")
    tsv = manifest(tmp_path, [("a.png", "a\u200cb")])  # ZWNJ: meaningful in Persian
    (tmp_path / "alphabet.txt").write_text("\ufeffa\nb\n\u200c\n", encoding="utf-8")  # with an editor's BOM
    alphabet = Alphabet.from_file(tmp_path / "alphabet.txt")
    assert alphabet.symbols == ["a", "b", "\u200c"]
    dataset, report = audit_lines(tsv, alphabet=alphabet, strip_format_chars=True)
    assert report.kept == [0] and dataset.texts == ["a\u200cb"]  # listed: a symbol, kept by the strip too


def test_strip_format_chars_removes_them_before_the_audit(tmp_path: Path, caplog) -> None:
    for name in ("a", "b", "c", "d"):
        write_line(tmp_path / f"{name}.png")
    rows = [("a.png", "ab"), ("b.png", "\ufeffa\u200bb"), ("c.png", "b\u200fa"), ("d.png", "\u200b")]
    tsv = manifest(tmp_path, rows)
    assert STABILITY.strip_format_chars is False  # off by default: the audit reports them
    with caplog.at_level(logging.INFO, logger="recognizer.stability.runtime"):
        dataset, report = audit_lines(tsv, strip_format_chars=True, audit_policy="drop")
    assert dataset.texts == ["ab", "ab", "ba", ""]
    assert counts(report) == {"empty": 1} and report.kept == [0, 1, 2]  # a line of only ZWSP is empty once stripped
    assert (
        "train: removed 4 invisible format characters from 3 transcripts (stability.strip_format_chars=true): "
        "U+200B ZERO WIDTH SPACE ×2, U+FEFF ZERO WIDTH NO-BREAK SPACE ×1, U+200F RIGHT-TO-LEFT MARK ×1"
    ) in caplog.text
    batch = Collate(Alphabet.from_texts(dataset.texts))([dataset[i] for i in report.kept])
    assert batch.texts == ["ab", "ab", "ba"] and batch.target_lengths.tolist() == [2, 2, 2]
    assert strip_format_chars("a\u00adb\u2060c", keep="\u2060") == "ab\u2060c"


# --------------------------------------------------------------------------- line polygons

BOW_TIE = [(10.0, 10.0), (50.0, 30.0), (50.0, 10.0), (10.0, 30.0)]  # edges cross in the middle of the box


def test_bow_tie_polygon_is_cut_not_degenerate(tmp_path: Path) -> None:
    assert polygon_area(BOW_TIE) == 0.0  # the shoelace lobes cancel
    page = np.full((60, 120), PAPER, np.uint8)
    page[18:22, 12:48] = INK  # the line's ink, through both lobes
    assert line_box(page.shape, BOW_TIE) == (10, 10, 50, 30)
    crop = crop_line(page, BOW_TIE)
    assert crop.shape == (20, 40) and crop[9, 4] == INK and crop[9, 35] == INK
    collinear = [(1.0, 1.0), (10.0, 10.0), (20.0, 20.0), (10.0, 10.0)]  # a zero-width outline stays degenerate
    with pytest.raises(LineGeometryError, match=r"degenerate geometry: a 19x19 pixel box, area 0"):
        line_box(page.shape, collinear)

    write_page_image(tmp_path / "page.png", boxes=[(12, 18, 48, 22)])
    xml = write(tmp_path / "p.xml", page_xml(page_line("l1", "ab", coords="10,10 50,30 50,10 10,30")))
    [record] = PagesData(train=str(xml), cache_dir=str(tmp_path / "cache")).records("train")
    with Image.open(record.path) as im:
        assert np.asarray(im).shape == (20, 40)


# --------------------------------------------------------------------------- the line cache


def cached_page(tmp_path: Path) -> tuple[Path, list[Path]]:
    write_page_image(tmp_path / "page.png", boxes=[(5, 5, 20, 15), (5, 35, 25, 45)])
    lines = page_line("l1", "one", "1,1 30,1 30,20 1,20") + "\n" + page_line("l2", "two", "1,30 30,30 30,50 1,50")
    xml = write(tmp_path / "p.xml", page_xml(lines))
    records = PagesData(train=str(xml), cache_dir=str(tmp_path / "cache")).records("train")
    return xml, [r.path for r in records]


def reread(tmp_path: Path, xml: Path) -> PagesData:
    data = PagesData(train=str(xml), cache_dir=str(tmp_path / "cache"))
    data.records("train")
    return data


def test_crops_are_written_durably_with_size_and_hash(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    xml, paths = cached_page(tmp_path)
    index = json.loads((paths[0].parent / "lines.json").read_text(encoding="utf-8"))
    for entry, path in zip(index["lines"], paths):
        data = path.read_bytes()
        assert entry["size"] == len(data) and len(entry["hash"]) == 32
    assert len(synced) >= 2 + 1 + 2  # each crop and the index, then the folder after the crops and after the index
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [".lock", "0000.png", "0001.png", "lines.json"]
    assert reread(tmp_path, xml).line_cache.cached == 2  # intact: trusted


@pytest.mark.parametrize("damage", ["truncated", "changed", "missing", "index"])
def test_a_damaged_cache_entry_is_extracted_again(tmp_path: Path, caplog, damage: str) -> None:
    xml, paths = cached_page(tmp_path)
    original = paths[1].read_bytes()
    if damage == "truncated":
        paths[1].write_bytes(original[: len(original) // 2])
        problem = f"{paths[1]} (line l2) is {len(original) // 2} bytes, the index says {len(original)} (truncated"
    elif damage == "changed":
        paths[1].write_bytes(original[:-5] + bytes(b ^ 0xFF for b in original[-5:]))  # same size, other bytes
        problem = f"{paths[1]} (line l2) does not match its hash in the index (changed on disk)"
    elif damage == "missing":
        paths[1].unlink()
        problem = f"{paths[1]} (line l2) cannot be read"
    else:
        index = paths[1].parent / "lines.json"
        index.write_bytes(index.read_bytes()[:20])
        problem = f"its index {index} cannot be read"
    with caplog.at_level(logging.WARNING, logger="recognizer.data.pages.cache"):
        data = reread(tmp_path, xml)
    assert (data.line_cache.extracted, data.line_cache.cached) == (2, 0)
    assert f"line cache: {problem}" in caplog.text and f"extracting page {xml} again" in caplog.text
    assert paths[1].read_bytes() == original
    assert reread(tmp_path, xml).line_cache.cached == 2  # repaired: trusted again


# --------------------------------------------------------------------------- formats Pillow may read


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 20\nnewpath 0 0 moveto 100 20 lineto stroke\nshowpage\n"


def test_postscript_named_as_a_png_is_refused_before_any_interpreter_runs(tmp_path: Path) -> None:
    """Pillow picks the format by content: an EPS named ``line.png`` would start Ghostscript on decoding."""
    (tmp_path / "line.png").write_bytes(EPS)
    (tmp_path / "train.tsv").write_text("line.png\tab\n")
    [record] = read_records(str(tmp_path / "train.tsv"))
    with pytest.raises(
        DataError, match=r"cannot read image .*line\.png: .*\(recognizer reads PNG, JPEG, .* images only\)"
    ):
        LineDataset([record], height=16).load(0)
    with pytest.raises(DataError, match=r"cannot read page image .*line\.png: .*recognizer reads PNG, JPEG"):
        load_page_image(tmp_path / "line.png")
    gif = write_line(tmp_path / "line.gif")  # raster formats Pillow decodes itself still open (GIF, PGM, WebP)
    assert LineDataset(read_records_from(tmp_path, gif), height=16).load(0).shape[-2] == 16


def read_records_from(folder: Path, image: Path) -> list:
    (folder / "one.tsv").write_text(f"{image.name}\tab\n")
    return read_records(str(folder / "one.tsv"))


def test_an_outline_far_beyond_its_page_is_not_turned_into_a_huge_image() -> None:
    """Deskew turns the outline's box: one that an XML draws 60,000 pixels wide on a 60-pixel page is refused,
    not allocated."""
    page = np.full((40, 60), 255, np.uint8)
    huge = [(0.0, 0.0), (60000.0, 0.0), (60000.0, 60000.0), (0.0, 60000.0)]
    with pytest.raises(LineGeometryError, match=r"turned, a \d+x\d+ pixel box on a 60x40 page") as refused:
        crop_line(page, huge, height=16, angle=0.02)
    assert refused.value.reason == "outside the page"
    crop_line(
        page, [(2.0, 2.0), (50.0, 4.0), (50.0, 20.0), (2.0, 18.0)], height=16, angle=0.04
    )  # a real line is turned


def test_a_checkpoint_image_folder_that_links_elsewhere_is_not_followed(tmp_path: Path) -> None:
    """A checkpoint names ``image_dirs: [jpg]``; the stranger's page folder holds ``jpg`` → a folder of the user's."""
    from recognizer.inference import inside

    (tmp_path / "mine").mkdir()
    (tmp_path / "pages" / "img").mkdir(parents=True)
    (tmp_path / "pages" / "jpg").symlink_to(tmp_path / "mine", target_is_directory=True)
    xml = write(tmp_path / "pages" / "p.xml", page_xml(""))
    assert inside(xml, ["jpg", "img", "."]) == ["img", "."]
