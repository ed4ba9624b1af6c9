"""scripts/finetune_table.py: the runs it plans, and the table and plot it writes from their metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script

finetune_table = load_script("finetune_table")

# Stands in for recognizer-train: writes the metrics.json a run would, from its overrides, and counts calls.
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
folder = Path(args["hydra.run.dir"]); folder.mkdir(parents=True)
calls = folder.parent / "calls.txt"
line = " ".join(sys.argv[1:]) + "\\n"
calls.write_text((calls.read_text() if calls.exists() else "") + line)
n = int(args.get("trainer.train_samples", 1000))
cer = (0.3 if "trainer.init_from" in args else 0.9) * 100 / n
steps = int(args["trainer.max_epochs"]) * -(-n // 16)  # whole epochs of batches of 16
metrics = {"test/cer": cer, "val/cer": cer + 0.01, "train/steps": steps, "train/time": 120.0}
(folder / "metrics.json").write_text(json.dumps(metrics))
"""


def test_plan_gives_the_runs_of_a_row_the_same_whole_epochs_and_the_base_its_init() -> None:
    """Whole epochs, not max_steps: a run that max_steps stopped inside an epoch would end unvalidated."""
    plans = finetune_table.plan_runs([100, None], steps=1200, batch_size=16, all_lines=5190, base="b.ckpt", freeze=50)
    assert [p.name for p in plans] == ["scratch_100", "base_100", "scratch_all", "base_all"]
    scratch, base = plans[0].overrides, plans[1].overrides
    # 100 lines = 7 batches an epoch: 172 epochs (1,204 steps) hold 1,200; about 8 validations
    assert scratch == [
        "trainer.train_samples=100",
        "trainer.max_epochs=172",
        "trainer.val_every_n_epochs=21",
        "trainer.early_stopping_patience=null",
    ]
    assert base == [
        *scratch,
        "trainer.init_from=b.ckpt",
        "trainer.init_alphabet=union",
        "trainer.freeze_backbone_steps=50",
    ]
    assert plans[2].overrides[:2] == ["trainer.max_epochs=4", "trainer.val_every_n_epochs=1"]  # 325 batches an epoch


def test_plan_refuses_empty_runs() -> None:
    with pytest.raises(ValueError, match="at least 1 train line"):
        finetune_table.plan_runs([0], steps=10, batch_size=16, all_lines=10, base="b.ckpt")
    with pytest.raises(ValueError, match="steps, batch size and validations >= 1"):
        finetune_table.plan_runs([10], steps=0, batch_size=16, all_lines=10, base="b.ckpt")


def test_table_and_plot_from_the_runs_and_a_rerun_trains_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    out = tmp_path / "ft"
    argv = ["--base", "b.ckpt", "--lines", "100", "300", "--all-lines", "1000", "--steps", "40", "--out", str(out)]
    argv += ["--command", f"{sys.executable} {fake}", "--", "experiment=htr_hooker_crnn"]
    finetune_table.main(argv)
    calls = (out / "calls.txt").read_text().splitlines()
    assert len(calls) == 4 and all(c.startswith("experiment=htr_hooker_crnn ") for c in calls)
    assert all("trainer.resume=auto" in c for c in calls)
    assert (out / "table.md").read_text().splitlines()[2:] == [
        "| 100 | 0.900 (0.910) | 0.300 (0.310) | 42 | 2.0 / 2.0 |",  # 6 epochs of 7 batches
        "| 300 | 0.300 (0.310) | 0.100 (0.110) | 57 | 2.0 / 2.0 |",  # 3 epochs of 19
    ]
    rows = json.loads((out / "table.json").read_text())
    assert [(r["start"], r["lines"]) for r in rows] == [
        ("scratch", "100"),
        ("base", "100"),
        ("scratch", "300"),
        ("base", "300"),
    ]
    assert (out / "cer_vs_lines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finetune_table.main(argv)  # every run has its metrics: nothing is trained again
    assert len((out / "calls.txt").read_text().splitlines()) == 4


def test_starts_base_trains_only_the_fine_tuned_runs(tmp_path: Path) -> None:
    """A second base model's table: the runs from scratch do not depend on the base and are not trained."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    out = tmp_path / "ft"
    argv = ["--base", "b.ckpt", "--lines", "100", "--all-lines", "1000", "--steps", "40", "--out", str(out)]
    argv += ["--starts", "base", "--command", f"{sys.executable} {fake}", "--", "experiment=htr_hooker_crnn"]
    finetune_table.main(argv)
    calls = (out / "calls.txt").read_text().splitlines()
    assert len(calls) == 1 and "trainer.init_from=b.ckpt" in calls[0]
    assert not (out / "scratch_100").exists()
    assert (out / "table.md").read_text().splitlines()[2:] == ["| 100 | — | 0.300 (0.310) | 42 | — / 2.0 |"]


def test_a_second_base_is_shown_beside_the_first_tables_runs(tmp_path: Path) -> None:
    """--include puts an earlier table's runs (from scratch, first base) in the columns before the new base's."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    common = ["--lines", "100", "--all-lines", "1000", "--steps", "40", "--command", f"{sys.executable} {fake}"]
    first, second = tmp_path / "first", tmp_path / "second"
    finetune_table.main(["--base", "a.ckpt", "--label", "from A", "--out", str(first), *common, "--", "x=1"])
    argv = ["--base", "b.ckpt", "--label", "from B", "--starts", "base", "--out", str(second), *common]
    finetune_table.main([*argv, "--include", str(first / "table.json"), "--", "x=1"])
    assert len((second / "calls.txt").read_text().splitlines()) == 1  # only B's run was trained
    assert (second / "table.md").read_text().splitlines() == [
        "| train lines | from scratch: test CER (val) | from A: test CER (val) | from B: test CER (val) | steps "
        "| minutes (scratch / A / B) |",
        "|---|---|---|---|---|---|",
        "| 100 | 0.900 (0.910) | 0.300 (0.310) | 0.300 (0.310) | 42 | 2.0 / 2.0 / 2.0 |",
    ]
    assert [r["label"] for r in json.loads((second / "table.json").read_text())] == ["from B"]  # its own runs
