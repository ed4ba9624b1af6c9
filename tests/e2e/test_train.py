"""End to end: training on embedded data, resume determinism, evaluation, bad user data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recognizer.alphabet import Alphabet
from recognizer.checkpoint import load_checkpoint
from recognizer.engine.finetune import init_alphabet
from recognizer.evaluate import evaluate_checkpoint
from recognizer.stability.audit import AuditError
from recognizer.train import train
from tests.conftest import compose_config, tiny_overrides
from tests.helpers.runs import lines_overrides, run_cli, step_losses, write_lines


def test_short_training_writes_everything(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(compose_config("train", tiny_overrides(data_root, out)))
    assert {"val/cer", "val/wer", "val/loss", "test/cer"} <= set(metrics)
    assert 0.0 <= metrics["val/cer"] <= 1.5
    assert metrics["train/overflow_steps"] == 0 and metrics["train/nonfinite_steps"] == 0  # fp32: no scaler
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((out / "audit.json").read_text())[0]["kept"] == 96
    header = (out / "predictions_test.tsv").read_text().splitlines()[0]
    assert header == "id\treference\thypothesis"
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["alphabet"] == list("0123456789")
    assert ckpt["config"]["model"]["_target_"] == "recognizer.models.CRNN"
    assert ckpt["step"] == 12 and ckpt["epoch"] == 2
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]  # it learns something even in 12 steps


def test_resume_reproduces_the_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(compose_config("train", tiny_overrides(data_root, full)))
    parts = tmp_path / "parts"
    train(compose_config("train", tiny_overrides(data_root, parts, "trainer.max_steps=4")))
    last = load_checkpoint(parts / "checkpoints" / "last.ckpt")
    assert last["batch_in_epoch"] == 4 and last["epoch"] == 0  # mid-epoch: resume goes on inside epoch 1
    # stopped inside its first epoch, its final weights are still validated, saved as best and tested
    rows = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in rows if "val/cer" in r and "epoch" in r]  # the final evaluation has no epoch
    assert val["step"] == 4 and last["history"] == [val]
    assert torch.equal(
        load_checkpoint(parts / "checkpoints" / "best.ckpt")["model"]["head.weight"], last["model"]["head.weight"]
    )
    stopped = json.loads((parts / "metrics.json").read_text())
    assert stopped["val/cer"] == val["val/cer"] and "test/cer" in stopped
    first_time = stopped["train/time"]  # its training time is measured
    assert 0 < val["time"] <= first_time
    train(compose_config("train", tiny_overrides(data_root, parts, "trainer.resume=auto")))
    assert step_losses(parts) == step_losses(full)  # same per-step losses, bit for bit
    assert json.loads((parts / "metrics.json").read_text())["train/time"] > first_time  # counted on after resume
    assert sorted(step_losses(parts)) == list(range(1, 13))


def test_a_resumed_run_continues_its_wandb_run(data_root: Path, tmp_path: Path) -> None:
    out, wandb = tmp_path / "run", ["logger=wandb", "logger.wandb.mode=offline"]
    train(compose_config("train", tiny_overrides(data_root, out, "trainer.max_steps=4", *wandb)))
    run_id = (out / "wandb-run-id").read_text().strip()
    train(compose_config("train", tiny_overrides(data_root, out, "trainer.resume=auto", *wandb)))
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs)  # one wandb run, two sessions
    other = tmp_path / "other"  # a new training in another directory is a new wandb run
    train(compose_config("train", tiny_overrides(data_root, other, "trainer.max_steps=1", *wandb)))
    assert (other / "wandb-run-id").read_text().strip() != run_id


def test_evaluate_needs_only_checkpoint_and_data(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trained = train(compose_config("train", tiny_overrides(data_root, out)))
    cfg = compose_config(
        "eval",
        [
            f"checkpoint={out}/checkpoints/best.ckpt",
            f"data.root={data_root}/digit_lines",
            "data.num_train=96",
            "data.num_val=24",
            "data.num_test=24",
            "data.height=32",
            f"paths.output_dir={tmp_path / 'eval'}",
            "device=cpu",
        ],
    )
    metrics = evaluate_checkpoint(cfg)  # data.height=32 is replaced by the checkpoint's 16
    assert metrics["test/cer"] == pytest.approx(trained["test/cer"])
    rows = (tmp_path / "eval" / "predictions_test.tsv").read_text().splitlines()
    assert len(rows) == 1 + 24


def test_init_from_loads_weights_only_and_starts_a_fresh_schedule(data_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(compose_config("train", tiny_overrides(data_root, source)))  # 12 steps
    start = load_checkpoint(source / "checkpoints" / "last.ckpt")
    out = tmp_path / "fine"
    # lr 0: the weights stay what the checkpoint held, so the first step's loss is the trained model's
    extra = [f"trainer.init_from={source}/checkpoints/last.ckpt", "trainer.max_epochs=1", "optimizer.lr=0.0"]
    train(compose_config("train", tiny_overrides(data_root, out, *extra)))
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["step"] == 6 and ckpt["epoch"] == 1  # its own step count, not 12 + 6
    assert ckpt["optimizer"]["state"][0]["step"] == 6  # a fresh AdamW: its moments saw only this run
    assert ckpt["scheduler"]["last_epoch"] == 6
    assert ckpt["alphabet"] == start["alphabet"]
    for name, value in start["model"].items():
        if "running" not in name and "num_batches" not in name:  # BatchNorm statistics move without an lr
            assert torch.equal(ckpt["model"][name], value), name
    scratch = step_losses(source)
    assert step_losses(out)[1] < 0.5 * scratch[1]  # step 1 starts from the trained weights, not at random


def test_init_from_refuses_an_incompatible_checkpoint(data_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    train(compose_config("train", tiny_overrides(data_root, source, "trainer.max_epochs=1")))
    ckpt = load_checkpoint(source / "checkpoints" / "last.ckpt")
    with pytest.raises(
        ValueError,
        match=r"the train transcripts use 2 symbol\(s\) outside its alphabet "
        r"Alphabet\('0123456789'\): \['a', 'b'\]\. Its output layer has no class for them",
    ):
        init_alphabet(ckpt, "x.ckpt", ["12", "1a2b"], None)
    with pytest.raises(ValueError, match=r"data\.alphabet gives Alphabet\('01'\): unset data\.alphabet"):
        init_alphabet(ckpt, "x.ckpt", ["01"], Alphabet(["0", "1"]))
    assert init_alphabet(ckpt, "x.ckpt", ["01", "9"], None) == Alphabet(list("0123456789"))  # a subset is fine
    wider = ["model.rnn_hidden=32", f"trainer.init_from={source}/checkpoints/last.ckpt"]
    with pytest.raises(
        ValueError,
        match=r"init_from=.*last\.ckpt: its weights do not fit this model \(rnn\.fwd\.0\.weight_ih_l0: "
        r"checkpoint \(256, 128\), model \(128, 128\);.*\)\. Use the checkpoint's model settings",
    ):
        train(compose_config("train", tiny_overrides(data_root, tmp_path / "wider", *wider)))


def test_training_with_the_fast_malloc_policy_trims_the_heap_when_memory_is_short(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[bool] = []
    policies: list[str] = []
    monkeypatch.setattr("recognizer.run.set_malloc_policy", policies.append)  # leave pytest's own malloc alone
    monkeypatch.setattr("recognizer.engine.memory.malloc_trim", lambda: trims.append(True) or True)
    monkeypatch.setattr("recognizer.engine.memory.available_memory", lambda: (1 << 30, 10 << 30))  # always short
    monkeypatch.setattr("recognizer.engine.memory.resident_memory", lambda: 1 << 28)  # never grows
    train(compose_config("train", tiny_overrides(data_root, tmp_path, "trainer.malloc=fast")))
    assert policies == ["fast"]
    assert len(trims) == 2  # the tiny run's 12 steps: at step 1 and 11 (short whatever the trim: every 10 steps)


def test_user_lines_train_from_a_manifest(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "lines", {f"l{i}": t for i, t in enumerate(["ab", "ba c", "cab", "a"])})
    metrics = train(compose_config("train", lines_overrides(manifest, tmp_path / "run")))
    assert "val/cer" in metrics


def test_label_too_long_for_the_model_is_named(tmp_path: Path) -> None:
    # width 64 → 16 frames with the default 4× subsampling; 9 labels need 18 under the 2× rule
    manifest = write_lines(tmp_path / "lines", {"ok": "abc", "long": "abcdabcda"})
    with pytest.raises(AuditError, match=r"below_ratio: 1 — e\.g\. long\.png: width 64 → 16 frames < 2 × 9 labels"):
        train(compose_config("train", lines_overrides(manifest, tmp_path / "run")))


def test_drop_policy_trains_on_the_rest_and_counts(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "lines", {"ok": "abc", "ok2": "cab", "long": "abcdabcda", "empty": ""})
    out = tmp_path / "run"
    train(compose_config("train", lines_overrides(manifest, out, "stability.audit_policy=drop")))
    report = json.loads((out / "audit.json").read_text())[0]
    assert report["kept"] == 2 and report["dropped"] == 2
    assert set(report["violations"]) == {"below_ratio", "empty"}


def test_the_frames_per_label_rule_guards_training_only(tmp_path: Path) -> None:
    """A val line below the 2× rule but within the exact CTC bound is scored, not left out of the CER."""
    train_set = write_lines(tmp_path / "train", {"ok": "abc", "ok2": "cab", "ok3": "ba"})
    val_set = write_lines(tmp_path / "val", {"ok": "abc", "long": "abcabcabc", "huge": "abc" * 7})
    out = tmp_path / "run"
    overrides = [*lines_overrides(train_set, out, "stability.audit_policy=drop"), f"data.val={val_set}"]
    train(compose_config("train", overrides))
    val = json.loads((out / "audit.json").read_text())[1]
    assert val["split"] == "val" and val["kept"] == 2  # 16 frames ≥ 9 + 0 repeats: "long" is scored
    assert set(val["violations"]) == {"infeasible"}  # 21 labels cannot fit 16 frames at all
    swapped = [*lines_overrides(val_set, tmp_path / "run2", "stability.audit_policy=drop"), f"data.val={train_set}"]
    train(compose_config("train", swapped))
    assert set(json.loads((tmp_path / "run2" / "audit.json").read_text())[0]["violations"]) == {
        "below_ratio",
        "infeasible",
    }


def test_evaluation_audits_the_scored_split_and_can_drop(tmp_path: Path) -> None:
    clean = write_lines(tmp_path / "lines", {"ok": "abc", "ok2": "cab", "ok3": "ba"})
    out = tmp_path / "run"
    train(compose_config("train", lines_overrides(clean, out)))  # trained with audit_policy=error
    # t2: too long for its width (21 labels, 16 frames); t3: a symbol the model never saw; t4: under the
    # 2× training rule (9 labels, 16 frames) but alignable, so it is scored
    bad = write_lines(tmp_path / "test", {"t1": "abc", "t2": "abc" * 7, "t3": "abd", "t4": "abcabcabc"})
    scoring = [f"checkpoint={out}/checkpoints/best.ckpt", "data=lines", f"data.test={bad}", "device=cpu"]
    with pytest.raises(AuditError, match=r"Fix the data, or set audit_policy=drop \(and unknown=drop for symbols"):
        evaluate_checkpoint(compose_config("eval", [*scoring, f"paths.output_dir={tmp_path}/e1"]))
    drop_alone = r"(?s)unknown_symbol: 1 — e\.g\. t3\.png.*or set unknown=drop \(skip"  # names the eval key
    with pytest.raises(AuditError, match=drop_alone):
        evaluate_checkpoint(compose_config("eval", [*scoring, "audit_policy=drop", f"paths.output_dir={tmp_path}/e2"]))
    with pytest.raises(ValueError, match=r"unknown=unk: .*best.ckpt was trained without <unk> .*; use unknown=drop"):
        evaluate_checkpoint(compose_config("eval", [*scoring, "unknown=unk", f"paths.output_dir={tmp_path}/e4"]))
    both = ["audit_policy=drop", "unknown=drop", f"paths.output_dir={tmp_path}/e3"]
    metrics = evaluate_checkpoint(compose_config("eval", [*scoring, *both]))
    rows = (tmp_path / "e3" / "predictions_test.tsv").read_text().splitlines()
    assert "test/cer" in metrics and [r.split("\t")[0] for r in rows[1:]] == ["t1.png", "t4.png"]


def test_missing_image_is_named_before_training(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "lines", {"a": "ab", "b": "ba"})
    (tmp_path / "lines" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"missing_file: 1 — e\.g\. b\.png: image .*b\.png \(sample b\.png\) does not"):
        train(compose_config("train", lines_overrides(manifest, tmp_path / "run")))
    overrides = lines_overrides(manifest, tmp_path / "run2", "stability.audit_policy=drop", "trainer.max_epochs=1")
    metrics = train(compose_config("train", overrides))  # under drop: trained without it, and counted
    assert metrics["train/dropped/missing_file"] == 1


@pytest.mark.slow
def test_console_scripts_train_then_eval(data_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(data_root, tmp_path / "unused")[:-1]  # let Hydra pick the run dir
    train_run = run_cli("recognizer-train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert train_run.returncode == 0, train_run.stderr[-3000:]
    assert "val/cer=" in train_run.stdout
    eval_run = run_cli(
        "recognizer-eval",
        f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
        f"data.root={data_root}/digit_lines",
        "data.num_train=96",
        "data.num_val=24",
        "data.num_test=24",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert eval_run.returncode == 0, eval_run.stderr[-3000:]
    assert "test/cer=" in eval_run.stdout and (tmp_path / "eval" / "predictions_test.tsv").is_file()
