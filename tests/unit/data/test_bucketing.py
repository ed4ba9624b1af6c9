"""Length bucketing: same contract as EpochBatchSampler (seeded, resumable, same length), less padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recognizer.checkpoint import load_checkpoint
from recognizer.data.batching import BucketBatchSampler, EpochBatchSampler, padding_cells
from recognizer.train import order_changes, train
from tests.conftest import compose_config, tiny_overrides

WIDTHS = torch.randint(10, 200, (203,), generator=torch.Generator().manual_seed(0)).tolist()


def padding(batches: list[list[int]], widths: list[int]) -> float:
    cells = [padding_cells(torch.tensor([widths[i] for i in b]), max(widths[i] for i in b)) for b in batches]
    return sum(p for p, _ in cells) / sum(t for _, t in cells)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 16])
def test_same_length_and_samples_as_the_plain_sampler(batch_size: int, drop_last: bool) -> None:
    indices = list(range(3, 203))  # the audit may have dropped some
    plain = EpochBatchSampler(indices, batch_size, shuffle=True, seed=1, drop_last=drop_last)
    bucket = BucketBatchSampler(indices, WIDTHS, batch_size, True, seed=1, drop_last=drop_last, pool_batches=4)
    batches = list(bucket)
    assert len(bucket) == len(plain) == len(batches)
    assert sum(len(b) != batch_size for b in batches) == (0 if drop_last or 200 % batch_size == 0 else 1)
    flat = sorted(i for b in batches for i in b)
    assert len(set(flat)) == len(flat) and set(flat) <= set(indices)
    assert len(flat) == (len(plain) * batch_size if drop_last else len(indices))


def test_order_is_a_function_of_seed_and_epoch() -> None:
    def epoch(seed: int, e: int) -> list[list[int]]:
        sampler = BucketBatchSampler(range(203), WIDTHS, 8, shuffle=True, seed=seed, pool_batches=5)
        sampler.set_epoch(e)
        return list(sampler)

    assert epoch(0, 3) == epoch(0, 3)
    assert epoch(0, 3) != epoch(0, 4)
    assert epoch(0, 3) != epoch(1, 3)
    assert {frozenset(b) for b in epoch(0, 3)} != {frozenset(b) for b in epoch(0, 4)}  # pools vary


def test_mid_epoch_resume_yields_the_rest_of_the_epoch() -> None:
    sampler = BucketBatchSampler(range(203), WIDTHS, 8, shuffle=True, seed=2)
    sampler.set_epoch(5)
    full = list(sampler)
    sampler.set_epoch(5, start_batch=11)
    assert list(sampler) == full[11:] and len(sampler) == len(full) - 11


def test_bucketing_pads_less() -> None:
    plain = padding(list(EpochBatchSampler(range(203), 16, shuffle=True, seed=0)), WIDTHS)
    pooled = padding(list(BucketBatchSampler(range(203), WIDTHS, 16, shuffle=True, pool_batches=4)), WIDTHS)
    whole = padding(list(BucketBatchSampler(range(203), WIDTHS, 16, shuffle=True, pool_batches=13)), WIDTHS)
    assert whole < pooled < plain / 2  # one pool of the whole set pads least
    ordered = list(BucketBatchSampler(range(203), WIDTHS, 16, shuffle=False))
    assert [WIDTHS[b[0]] for b in ordered] == sorted(WIDTHS[b[0]] for b in ordered)  # val: sorted, not shuffled


def test_padding_cells_counts_the_padded_share() -> None:
    assert padding_cells(torch.tensor([3, 5, 4]), 5) == (3, 15)


def test_bad_arguments_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match=r"^pool_batches must be >= 1 \(batches per sorting pool\), got 0$"):
        BucketBatchSampler(range(4), [1, 2, 3, 4], 2, shuffle=True, pool_batches=0)
    with pytest.raises(ValueError, match=r"^1 index\(es\) have no width \(first: 4; 4 widths\): pass the widths"):
        BucketBatchSampler(range(5), [1, 2, 3, 4], 2, shuffle=True)


def test_bucketed_training_logs_padding_and_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    on = ("trainer.bucketing=true", "trainer.bucket_pool_batches=2")
    full, parts = tmp_path / "full", tmp_path / "parts"
    train(compose_config("train", tiny_overrides(data_root, full, *on)))
    train(compose_config("train", tiny_overrides(data_root, parts, *on, "trainer.max_steps=4")))
    assert load_checkpoint(parts / "checkpoints" / "last.ckpt")["batch_in_epoch"] == 4  # mid-epoch
    train(compose_config("train", tiny_overrides(data_root, parts, *on, "trainer.resume=auto")))
    rows = {
        run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (full, parts)
    }
    losses = {run: {r["step"]: r["train/loss"] for r in rs if "train/loss" in r} for run, rs in rows.items()}
    assert losses[parts] == losses[full] and sorted(losses[full]) == list(range(1, 13))
    pads = [r["train/padding"] for r in rows[full] if "train/padding" in r]
    assert len(pads) == 12 and all(0.0 <= p < 1.0 for p in pads)


def test_resume_names_changed_batch_order_settings(data_root: Path, tmp_path: Path) -> None:
    cfg = compose_config("train", tiny_overrides(data_root, tmp_path, "trainer.bucketing=true"))
    saved = {"seed": cfg.seed, "data": {"batch_size": 16}, "trainer": {}}  # an older checkpoint's config
    assert order_changes(saved, cfg) == ["trainer.bucketing: False → True"]
    saved["trainer"] = {"bucketing": True, "bucket_pool_batches": 50}
    assert order_changes(saved, cfg) == []
