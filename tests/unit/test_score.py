"""recognizer-score: S/D/I counts, input formats, report and error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recognizer.cli.score import main
from recognizer.metrics import edit_distance
from recognizer.score import edit_counts, format_report, score, suspect_pages, suspect_summary


@pytest.mark.parametrize(
    ("ref", "hyp", "sdi"),
    [
        ("abc", "abc", (0, 0, 0)),
        ("abc", "axc", (1, 0, 0)),
        ("abc", "ab", (0, 1, 0)),
        ("abc", "xabc", (0, 0, 1)),
        ("kitten", "sitting", (2, 0, 1)),
        ("", "ab", (0, 0, 2)),
        ("ab", "", (0, 2, 0)),
        ("abcd", "ba", (1, 2, 0)),
    ],
)
def test_edit_counts(ref: str, hyp: str, sdi: tuple[int, int, int]) -> None:
    c = edit_counts(ref, hyp)
    assert (c.substitutions, c.deletions, c.insertions) == sdi
    assert c.errors == edit_distance(ref, hyp) and c.reference_length == len(ref)


def test_score_counts_chars_and_words() -> None:
    report = score([("1", "a b c", "a b c"), ("2", "hello world", "hallo world x")])
    assert (report.chars.errors, report.chars.reference_length) == (3, 16)  # e→a, + " x"
    assert (report.words.substitutions, report.words.insertions, report.words.reference_length) == (1, 1, 5)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_predictions_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv = write(tmp_path / "p.tsv", "id\treference\thypothesis\na\t123\t123\nb\t4567\t457\nc\t89\t8x9y\n")
    main([str(tsv), "--worst", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "CER 33.33% (3/9: 0 substitutions, 1 deletions, 2 insertions)"
    assert out[1] == "WER 66.67% (2/3: 2 substitutions, 0 deletions, 0 insertions)"
    assert out[2] == "3 lines, 2 with errors"
    assert out[3:] == ["worst 1 lines (char errors, id, reference → hypothesis):", "  2\tc\t'89' → '8x9y'"]


def test_hypotheses_and_references_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hyp = write(tmp_path / "h.jsonl", '{"path": "b.png", "text": "xy"}\n{"path": "a.png", "text": "12"}\n')
    ref = write(tmp_path / "r.tsv", "id\ttext\na.png\t12\nb.png\txyz\n")
    main([str(hyp), "--ref", str(ref)])
    assert capsys.readouterr().out.startswith("CER 20.00% (1/5: 0 substitutions, 1 deletions, 0 insertions)\n")


def test_data_manifests_serve_as_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hyp = write(tmp_path / "h.tsv", "a.png\t12\nb.png\txy\n")  # recognizer-transcribe's stdout
    lines = write(tmp_path / "test.tsv", "image\ttext\na.png\t12\nb.png\txyz\n")  # a line-image manifest
    speech = write(tmp_path / "m.jsonl", '{"audio_filepath": "a.png", "duration": 1.0, "text": "12"}\n')
    speech.write_text(speech.read_text() + '{"image": "b.png", "text": "xyz"}\n')
    for ref in (lines, speech):
        main([str(hyp), "--ref", str(ref)])
        assert capsys.readouterr().out.startswith("CER 20.00% (1/5: 0 substitutions, 1 deletions, 0 insertions)\n")


def test_errors_name_the_file_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "p.tsv", "a\tb\n")
    with pytest.raises(SystemExit, match=r"p.tsv: expected the header id<TAB>reference<TAB>hypothesis"):
        main([str(bad)])
    hyp = write(tmp_path / "h.tsv", "a\t1\n")
    ref = write(tmp_path / "r.tsv", "a\t1\nb\t2\n")
    with pytest.raises(
        SystemExit, match=r"ids differ between .*h.tsv and .*r.tsv: 1 reference\(s\) without hypothesis \['b'\]"
    ):
        main([str(hyp), "--ref", str(ref)])
    with pytest.raises(SystemExit, match=r"recognizer-score: error: .*missing.tsv does not exist"):
        main([str(tmp_path / "missing.tsv")])
    no_id = write(tmp_path / "n.jsonl", '{"file": "a.png", "text": "1"}\n')
    with pytest.raises(
        SystemExit, match=r"n.jsonl:1: expected a JSON object with an id \(id, path, image, audio_filepath\) and 'text'"
    ):
        main([str(no_id), "--ref", str(ref)])
    with pytest.raises(SystemExit, match="2"):  # argparse usage error
        main([str(hyp), "--ref", str(ref), "--worst", "-1"])
    assert "--worst must be >= 0, got -1" in capsys.readouterr().err


def page_rows(page: str, lines: int, wrong: bool) -> list[tuple[str, str, str]]:
    """``lines`` rows of ``page``: read right, or every character wrong."""
    return [(f"{page}/l{i}", "abcd", "wxyz" if wrong else "abcd") for i in range(lines)]


def test_pages_far_below_the_rest_are_named() -> None:
    rows = page_rows("p1", 10, False) + page_rows("p2", 10, False) + page_rows("bad", 4, True)
    rows += page_rows("tiny", 2, True)  # too few lines to say anything of a page
    report = score(rows)
    assert suspect_pages(report) == [("bad", 4, 1.0)]
    message = suspect_summary(report, "test")
    assert message is not None and message.startswith(
        "test: 1 page(s) score far below the rest (CER >= 0.5 and >= 2 x the split's 0.231): bad (4 lines, CER 1.00)."
    )
    assert "pages far below the rest (1: page, lines, CER):\n  bad\t4\t1.000" in format_report(report, worst=0)


def test_no_suspect_where_every_page_is_as_bad_or_lines_have_no_page() -> None:
    uniform = score(page_rows("p1", 5, True) + page_rows("p2", 5, True))  # CER 1 everywhere: nothing stands out
    assert suspect_pages(uniform) == [] and suspect_summary(uniform, "val") is None
    assert suspect_pages(score([("line1.png", "ab", "zz"), ("line2.png", "ab", "ab")] * 3)) == []


def test_a_decomposed_reference_scores_as_the_composed_one() -> None:
    report = score([("l1", "cafe\u0301", "caf\u00e9")])
    assert (report.chars.errors, report.chars.reference_length) == (0, 4)


def test_an_id_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    hyp = write(tmp_path / "h.tsv", "a.png\t12\n")
    ref = write(tmp_path / "r.tsv", "a.png\t12\nb.png\t3\na.png\t13\n")
    with pytest.raises(SystemExit, match=re.escape(f"{ref}:3: id 'a.png' appears twice (first on line 1)")):
        main([str(hyp), "--ref", str(ref)])
    ref = write(tmp_path / "r.jsonl", '{"id": "x", "text": "1"}\n{"id": "x", "text": "2"}\n')
    with pytest.raises(SystemExit, match=re.escape(f"{ref}:2: id 'x' appears twice (first on line 1)")):
        main([str(hyp), "--ref", str(ref)])
