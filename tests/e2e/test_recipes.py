"""Recipes: every recognizer/conf/experiment file composes and trains for two steps; each has a row in RESULTS.md
that scripts/reproduce.py can check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import DictConfig

from recognizer import CONFIG_DIR
from recognizer.train import train
from tests.conftest import compose_config
from tests.helpers.scripts import SCRIPTS, load_script

ROOT = Path(__file__).resolve().parents[2]  # the checkout: RESULTS.md, README.md
RECIPES = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
SCRIPT = SCRIPTS / "reproduce.py"


reproduce = load_script("reproduce")


def tiny_librispeech(root: Path) -> list[str]:
    from tests.unit.data.test_librispeech import TEXTS, write_librispeech

    write_librispeech(root, "train-clean-100", TEXTS)
    write_librispeech(root, "dev-clean", TEXTS[:2])
    write_librispeech(root, "test-clean", TEXTS[2:4])
    return [f"data.root={root}", "data.train=[train-clean-100]", "data.val=[dev-clean]", "data.test=[test-clean]"]


def shrink(data: str, tmp: Path, data_root: Path) -> list[str]:
    """Overrides that make a recipe's data tiny, by data module class. A new data module needs an entry."""
    if data == "DigitLinesData":  # the set tests/conftest.py generates once per session
        return [f"data.root={data_root}/digit_lines", "data.num_train=96", "data.num_val=24", "data.num_test=24"]
    if data == "SpokenDigitsData":
        sizes = ["data.num_train=16", "data.num_val=8", "data.num_test=8", "data.max_digits=3"]
        return [f"data.root={data_root}/spoken_digits", *sizes]
    if data == "LibriSpeechData":
        return tiny_librispeech(tmp / "LibriSpeech")
    if data == "FSDDData":  # takes 0-4 test, 5-9 val, 10-11 train; "theo" is the held-out speaker's default
        from tests.unit.data.test_audio_layouts import write_fsdd

        return [f"data.root={write_fsdd(tmp / 'fsdd', speakers=('bob', 'theo'))}"]
    if data == "PagesData":  # two hand-written ALTO pages stand in for the corpus (train, val and test alike)
        folder = tiny_pages(tmp / "pages")
        splits = [f"data.{s}={folder}" for s in ("train", "val", "test")]
        return ["data.pages=null", *splits, "data.image_dirs=[]", f"data.cache_dir={tmp / 'page_lines'}"]
    if data == "MboshiData":  # the Mboshi layout, 3 speakers: 21 train sentences (2 validate), 6 dev (test)
        from tests.unit.data.test_audio_layouts import write_mboshi_speakers

        return [f"data.root={write_mboshi_speakers(tmp / 'mboshi')}"]
    raise AssertionError(f"tests/e2e/test_recipes.py cannot shrink data {data}: add it to shrink()")


def tiny_pages(folder: Path) -> Path:
    """Two ALTO pages of two 300 × 20 px lines each (75+ frames at height 64 for 3-4 symbols)."""
    from tests.helpers.page_fixtures import alto_line, alto_xml, write, write_page_image

    texts = [("abc", "déf"), ("cab", "féd")]
    for i, (first, second) in enumerate(texts):
        write_page_image(folder / f"p{i}.png", width=320, height=60, boxes=[(10, 8, 300, 22), (10, 35, 290, 50)])
        lines = "\n".join(
            alto_line(f"l{i}{k}", f'<String CONTENT="{text}"/>', polygon=f"5 {y} 310 {y} 310 {y + 20} 5 {y + 20}")
            for k, (text, y) in enumerate([(first, 5), (second, 32)])
        )
        write(folder / f"p{i}.xml", alto_xml(lines, image=f"p{i}.png", width=320, height=60))
    return folder


def shrink_model(model: str) -> list[str]:
    """A Conformer shrunk to seconds on a CPU (the GPU preset has 26M parameters); a CRNN is small already."""
    if model == "ConformerCTC":
        return ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=64"]
    return []


def recipe_config(recipe: str, tmp: Path, data_root: Path) -> DictConfig:
    cfg = compose_config("train", [f"experiment={recipe}", f"paths.output_dir={tmp / 'run'}"])
    data, model = (get_class(node._target_).__name__ for node in (cfg.data, cfg.model))
    return compose_config(
        "train",
        [
            f"experiment={recipe}",
            *shrink(data, tmp, data_root),
            *shrink_model(model),
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=2",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            f"paths.output_dir={tmp / 'run'}",
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_two_steps(recipe: str, tmp_path: Path, data_root: Path) -> None:
    """The recipe's own data module, model type, optimizer, schedule and precision, shrunk to two steps."""
    cfg = recipe_config(recipe, tmp_path, data_root)
    metrics = train(cfg)
    assert metrics["train/steps"] == 2
    assert math.isfinite(metrics[cfg.optimized_metric])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(metrics)


def test_every_recipe_has_a_results_row() -> None:
    rows = reproduce.read_table(ROOT / "RESULTS.md")
    missing = [r for r in RECIPES if r not in rows]
    assert not missing, f"recognizer/conf/experiment/{missing[0]}.yaml has no row in RESULTS.md: add one"
    for recipe in RECIPES:
        row = rows[recipe]
        assert row["command"].startswith(f"recognizer-train experiment={recipe}"), row["command"]
        assert row["metric"] in ("val/cer", "val/wer", "test/cer", "test/wer"), row["metric"]
        assert all(row[c] for c in reproduce.COLUMNS), f"RESULTS.md row {recipe} has an empty cell"
    assert set(rows) == set(RECIPES), f"RESULTS.md rows without a recipe: {set(rows) - set(RECIPES)}"


RESULTS = """# Results

| recipe | command | data | metric | value | tolerance | wall time | machine |
|---|---|---|---|---|---|---|---|
| `tiny` | `recognizer-train experiment=htr_digits_crnn` | tiny | test/cer | 0.0500 | ± 0.01 | 1 min | test |
| `pending` | `recognizer-train experiment=pending` | tiny | test/cer | __TBD__ | ± 0.01 | __TBD__ | __TBD__ |
"""


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    path.write_text(RESULTS)
    return path


@pytest.mark.parametrize(("measured", "code", "verdict"), [(0.055, 0, "PASS"), (0.07, 1, "FAIL")])
def test_reproduce_checks_the_tolerance(
    results: Path, tmp_path: Path, measured: float, code: int, verdict: str
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test/cer": measured, "val/cer": 0.0}))
    done = run_script("tiny", "--results", str(results), "--metrics", str(metrics))
    assert done.returncode == code, done.stderr
    off = f"{measured - 0.05:+.4f}"
    tail = ")" if code == 0 else ", outside the tolerance)"
    assert done.stdout == f"{verdict} tiny: test/cer={measured:.4f}, documented 0.0500 ± 0.01 ({off}{tail}\n"


def test_reproduce_says_what_is_missing(results: Path) -> None:
    done = run_script("pending", "--results", str(results))
    assert done.returncode == 2
    assert done.stderr == (
        f"error: pending: {results} documents no value to check against yet (value '__TBD__', tolerance "
        "'± 0.01'); run `recognizer-train experiment=pending` and fill in the row\n"
    )
    done = run_script("nope", "--results", str(results))
    assert done.returncode == 2
    assert done.stderr == f"error: no recipe 'nope' in {results}; documented: pending, tiny\n"


@pytest.mark.slow
def test_reproduce_runs_the_documented_command(results: Path, tmp_path: Path, data_root: Path) -> None:
    tiny = ["trainer.max_steps=2", "trainer.device=cpu", "trainer.progress_bar=false"]
    tiny += [f"data.root={data_root}/digit_lines", "data.num_train=96", "data.num_val=24", "data.num_test=24"]
    results.write_text(RESULTS.replace("0.0500 | ± 0.01", "0.5000 | ± 10"))  # any CER passes after 2 steps
    # it trains (a subprocess importing torch, two steps, a test pass): 60 s was too tight on a loaded machine
    done = run_script("tiny", "--results", str(results), "--out", str(tmp_path / "out"), "--", *tiny, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("+ recognizer-train experiment=htr_digits_crnn trainer.max_steps=2")
    assert lines[-2].startswith("wall time ") and lines[-2].endswith(" min (documented: 1 min on test)")
    assert lines[-1].startswith("PASS tiny: test/cer=")
    [run] = (tmp_path / "out" / "tiny").iterdir()
    assert json.loads((run / "metrics.json").read_text())["train/steps"] == 2


def documented_rows() -> list[str]:
    rows = reproduce.read_table(ROOT / "RESULTS.md")
    return [name for name, row in rows.items() if reproduce.number(row["value"]) is not None]


@pytest.mark.parametrize("recipe", documented_rows())
def test_documented_value_passes_and_three_times_it_fails(recipe: str, tmp_path: Path) -> None:
    """A recipe check must catch a 3× regression of its own figure (the former ± 0.01 on CER 0.0047 did not)."""
    documented = reproduce.read_recipe(ROOT / "RESULTS.md", recipe)
    metrics = tmp_path / "metrics.json"
    for measured, expected in ((documented.value, True), (3 * documented.value, False)):
        metrics.write_text(json.dumps({documented.metric: measured}))
        ok, verdict = reproduce.check(documented, metrics)
        assert ok is expected, verdict


def test_wilson_interval_matches_the_textbook_values() -> None:
    # Wilson score intervals at 95% (Newcombe 1998, table I): 0/10 → [0, 0.2775], 1/10 → [0.0179, 0.4042]
    assert reproduce.wilson_interval(0, 10, 0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert reproduce.wilson_interval(1, 10, 0.95) == pytest.approx((0.0179, 0.4042), abs=1e-4)


def test_binomial_band_scales_with_the_figure(results: Path, tmp_path: Path) -> None:
    results.write_text(RESULTS.replace("0.0500 | ± 0.01", "0.0047 | Wilson 99%, n = 4,466 chars"))
    metrics = tmp_path / "metrics.json"
    verdicts = {}
    for measured in (0.0047, 0.0081, 0.0094, 0.0141):
        metrics.write_text(json.dumps({"test/cer": measured}))
        done = run_script("tiny", "--results", str(results), "--metrics", str(metrics))
        verdicts[measured] = (done.returncode, done.stdout)
    band = "(Wilson 99% of 21/4466: [0.0027, 0.0082])"
    assert verdicts[0.0047] == (0, f"PASS tiny: test/cer=0.0047, documented 0.0047 {band} (+0.0000)\n")
    assert verdicts[0.0081][0] == 0
    fail = f"FAIL tiny: test/cer=0.0094, documented 0.0047 {band} (+0.0047, outside the tolerance)\n"
    assert verdicts[0.0094] == (1, fail)
    assert verdicts[0.0141][0] == 1


def test_relative_band(results: Path, tmp_path: Path) -> None:
    results.write_text(RESULTS.replace("0.0500 | ± 0.01", "0.0500 | ± 20%"))
    metrics = tmp_path / "metrics.json"
    for measured, code in ((0.059, 0), (0.061, 1), (0.041, 0), (0.039, 1)):
        metrics.write_text(json.dumps({"test/cer": measured}))
        done = run_script("tiny", "--results", str(results), "--metrics", str(metrics))
        assert done.returncode == code, done.stdout
    assert "documented 0.0500 ± 20% [0.0400, 0.0600] (-0.0110, outside the tolerance)" in done.stdout


def test_binomial_band_refuses_a_run_that_scored_other_data(results: Path, tmp_path: Path) -> None:
    results.write_text(RESULTS.replace("0.0500 | ± 0.01", "0.2500 | Wilson 99%, n = 8 chars"))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test/cer": 0.25}))
    predictions = tmp_path / "predictions_test.tsv"
    predictions.write_text("id\treference\thypothesis\na\t1234\t124\nb\t5678\t568\n")
    assert run_script("tiny", "--results", str(results), "--metrics", str(metrics)).returncode == 0
    predictions.write_text("id\treference\thypothesis\na\t1234\t124\nb\t56789\t568\n")
    done = run_script("tiny", "--results", str(results), "--metrics", str(metrics))
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {predictions} scores 9 characters, but the tolerance of tiny in RESULTS.md is for n = 8: the run "
        "used other data (split sizes, seed or filters); rerun with the documented data\n"
    )
