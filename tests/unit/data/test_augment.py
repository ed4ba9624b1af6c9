"""Line augmentation: per-(seed, epoch, sample) draws, shapes and values, loaders, configs, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from recognizer.alphabet import Alphabet
from recognizer.checkpoint import load_checkpoint
from recognizer.data.batching import EpochBatchSampler, SampleKey
from recognizer.data.images.augment import Affine, Blur, Contrast, Elastic, LineAugment, Noise, Stroke
from recognizer.data.images.lines import LineDataset, read_records
from recognizer.data.loaders import make_loader
from recognizer.models.crnn import CRNN
from recognizer.train import train
from tests.conftest import compose_config, tiny_overrides

ROOT = Path(__file__).resolve().parents[3]


def everything(**changes: float) -> LineAugment:
    """Every transform, each applied to every line (p = 1) unless ``changes`` say otherwise."""
    return LineAugment(
        affine=Affine(p=changes.get("affine", 1.0)),
        elastic=Elastic(p=changes.get("elastic", 1.0)),
        stroke=Stroke(p=changes.get("stroke", 1.0)),
        blur=Blur(p=changes.get("blur", 1.0)),
        contrast=Contrast(p=changes.get("contrast", 1.0)),
        noise=Noise(p=changes.get("noise", 1.0)),
    )


def line(height: int = 32, width: int = 160, seed: int = 0) -> torch.Tensor:
    """A ``(1, H, W)`` line of bright random strokes on a 0 background, as LineDataset loads one."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), dtype=np.float32)
    for x in range(4, width - 8, 12):
        top = int(rng.integers(2, height // 3))
        image[top : height - top, x : x + 3] = rng.uniform(0.7, 1.0)  # a down-stroke
        image[height // 2 : height // 2 + 2, x : x + 10] = 0.9  # a joint
    return torch.from_numpy(image).unsqueeze(0)


def write_lines(folder: Path, count: int, height: int = 24) -> Path:
    """A kraken folder of ``count`` dark-on-light PNG lines of varied widths; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        ink = line(height, 40 + 9 * i, seed=i)[0].numpy()
        Image.fromarray(np.round(255 * (1.0 - ink)).astype(np.uint8), mode="L").save(folder / f"l{i:02d}.png")
        (folder / f"l{i:02d}.gt.txt").write_text("ab"[i % 2] * (1 + i % 3), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- the draws


def test_same_seed_epoch_and_sample_give_the_same_image() -> None:
    augment, x = everything(), line()
    first = augment(x, 7, 3, 11)
    assert torch.equal(first, augment(x.clone(), 7, 3, 11))
    assert not torch.equal(first, augment(x, 7, 4, 11))  # another epoch
    assert not torch.equal(first, augment(x, 7, 3, 12))  # another sample
    assert not torch.equal(first, augment(x, 8, 3, 11))  # another run seed
    assert torch.equal(augment(x, -5, 0, 0), augment(x, -5, 0, 0))  # negative seeds are seeds too


@pytest.mark.parametrize(
    "transform",
    [
        Affine(p=1.0, shear=1.0, rotation=15.0, scale=0.5, stretch=0.5),
        Elastic(p=1.0, magnitude=0.2, spacing=0.05),
        Stroke(p=1.0, radius=5),
        Blur(p=1.0, sigma=10.0),
        Contrast(p=1.0, gain=0.05, gamma=2.0, background=0.04),
        Noise(p=1.0, std=0.5),
    ],
    ids=lambda t: type(t).__name__,
)
def test_each_transform_at_its_extreme_keeps_height_width_and_range(transform: object) -> None:
    geometric = isinstance(transform, (Affine, Elastic))
    augment = LineAugment(**{type(transform).__name__.lower(): transform})
    for index in range(25):
        x = line(height=16 + index, width=30 + 17 * index, seed=index)
        y = augment(x, 0, 0, index)
        assert y.dtype == torch.float32 and y.shape[:2] == (1, x.shape[1])  # the height the model expects
        assert y.shape[2] >= x.shape[2]  # never narrower than the audited width
        assert geometric or y.shape == x.shape
        assert torch.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0
        assert not torch.equal(y, x)


def test_widening_changes_widen_the_canvas_and_no_ink_is_cut_at_the_ends() -> None:
    x = torch.zeros(1, 20, 100)
    x[0, 8:12, :4], x[0, 8:12, -4:] = 1.0, 1.0  # ink touching both ends
    wide = LineAugment(affine=Affine(p=1.0, shear=0.0, rotation=0.0, scale=0.0, stretch=0.5))
    for index in range(20):
        y = wide(x, 0, 0, index)
        stretch = y.shape[2] / 100
        assert 1.0 <= stretch <= 1.51
        if stretch > 1.02:  # widened: both end marks are still there
            assert y[0, :, : y.shape[2] // 4].sum() > 0 and y[0, :, -y.shape[2] // 4 :].sum() > 0


def test_model_output_lengths_never_shrink_under_augmentation() -> None:
    """The pre-flight audit checks the stored widths; augmented widths must give at least as many frames."""
    model = CRNN(num_classes=5, height=16)
    augment = LineAugment(affine=Affine(p=1.0, shear=0.5, rotation=3.0, scale=0.5, stretch=0.5), elastic=Elastic(p=1.0))
    widths = torch.tensor([9, 16, 33, 64, 131])
    augmented = torch.tensor([augment(line(16, int(w), seed=i), 1, 2, i).shape[2] for i, w in enumerate(widths)])
    assert (model.output_lengths(augmented) >= model.output_lengths(widths)).all()


def test_nothing_drawn_returns_the_image_itself() -> None:
    x = line()
    assert everything(affine=0, elastic=0, stroke=0, blur=0, contrast=0, noise=0)(x, 1, 2, 3) is x
    assert LineAugment()(x, 1, 2, 3) is x


def test_geometry_resamples_once_and_exactly_where_nothing_moves() -> None:
    x = line()
    only_noise = LineAugment(noise=Noise(p=1.0, std=0.0))  # draws nothing that changes a pixel
    assert torch.equal(only_noise(x, 0, 0, 0), x)
    still = LineAugment(affine=Affine(p=1.0, shear=0.0, rotation=0.0, scale=0.0, stretch=0.0))
    assert torch.equal(still(x, 0, 0, 0), x)  # the identity map keeps every value bit for bit


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Affine(p=1.5), r"^data.augment.affine.p must be in \[0, 1\], got 1.5$"),
        (lambda: Elastic(spacing=0.0), r"^data.augment.elastic.spacing must be in \[0.05, inf\], got 0$"),
        (lambda: Stroke(radius=0), r"^data.augment.stroke.radius must be in \[1, 5\], got 0$"),
        (
            lambda: Contrast(gain=0.3, background=0.3),
            r"^data.augment.contrast.background \(0.3\) must stay below contrast.gain \(0.3\): the paper would",
        ),
    ],
)
def test_bad_magnitudes_name_the_key(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------- datasets and loaders


def test_sampler_keys_carry_epoch_and_seed_and_resume_mid_epoch() -> None:
    sampler = EpochBatchSampler(range(10), 4, shuffle=True, seed=3, keyed=True)
    plain = EpochBatchSampler(range(10), 4, shuffle=True, seed=3)
    sampler.set_epoch(2)
    plain.set_epoch(2)
    keyed = list(sampler)
    assert [[k.index for k in b] for b in keyed] == list(plain)  # the same order as without keys
    assert {(k.epoch, k.seed) for b in keyed for k in b} == {(2, 3)}
    sampler.set_epoch(2, start_batch=1)
    assert list(sampler) == keyed[1:]


def test_only_sample_keys_augment_and_only_the_train_split(tmp_path: Path) -> None:
    from recognizer.data import LinesData

    folder = write_lines(tmp_path / "lines", 4)
    data = LinesData(str(folder), str(folder), height=24, augment=everything())
    train_set, val_set = data.dataset("train"), data.dataset("val")
    assert train_set.augmented and not val_set.augmented and val_set.augment is None
    stored = train_set.load(1)
    assert torch.equal(train_set[1]["input"], stored)  # a plain index (evaluation, audit): as stored
    assert torch.equal(val_set[SampleKey(1, 0, 0)]["input"], stored)  # val never augments
    augmented = train_set[SampleKey(1, 0, 0)]
    assert augmented["id"] == "l01" and augmented["text"] == "bb"
    assert torch.equal(augmented["input"], everything()(stored, 0, 0, 1))
    off = LinesData(str(folder), str(folder), height=24, augment=LineAugment(enabled=False, noise=Noise(p=1.0)))
    assert off.augment is None and not off.dataset("train").augmented


def batches(dataset: LineDataset, num_workers: int, epochs: int = 2, augment: bool = True) -> list:
    indices = list(range(len(dataset)))
    loader, sampler = make_loader(
        dataset, indices, Alphabet("ab"), 3, True, 5, "error", num_workers=num_workers, augment=augment
    )
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out += [(b.ids, b.inputs, b.input_lengths) for b in loader]
    return out


def same(a: list, b: list) -> bool:
    return all(ia == ib and torch.equal(xa, xb) and torch.equal(la, lb) for (ia, xa, la), (ib, xb, lb) in zip(a, b))


def test_workers_do_not_change_the_batches(tmp_path: Path) -> None:
    dataset = LineDataset(read_records(write_lines(tmp_path / "lines", 8)), 24, augment=everything())
    in_process = batches(dataset, num_workers=0)
    assert len(in_process) == 6 and same(in_process, batches(dataset, num_workers=2))
    first, second = in_process[:3], in_process[3:]
    one, two = ({i: x for b in half for i, x in zip(b[0], b[1])} for half in (first, second))
    assert any(not torch.equal(one[k], two[k]) for k in one)  # each epoch draws anew
    stored = batches(dataset, num_workers=0, augment=False)  # an evaluation loader over the same set
    assert not same(in_process, stored)
    assert same(stored, batches(LineDataset(dataset.records, 24), num_workers=0, augment=False))


def test_augmentation_off_leaves_batches_bit_identical(tmp_path: Path) -> None:
    """``data.augment.enabled=false`` (the default) trains on exactly the batches of a dataset without it."""
    folder = write_lines(tmp_path / "lines", 6)
    cfg = compose_config("train", ["data=lines", f"data.train={folder}", f"data.val={folder}", "data.height=24"])
    data = instantiate(cfg.data, num_workers=0)
    assert cfg.data.augment.enabled is False and data.augment is None
    today = LineDataset(read_records(folder), 24)
    assert same(batches(data.dataset("train"), 0), batches(today, 0, augment=False))


def test_config_turns_every_transform_on_with_one_key(tmp_path: Path) -> None:
    cfg = compose_config("train", ["data.augment.enabled=true", "data.augment.blur.sigma=0.5"])
    data = instantiate(cfg.data)
    assert isinstance(data.augment, LineAugment)
    assert isinstance(data.augment.affine, Affine) and isinstance(data.augment.elastic, Elastic)
    assert [type(t) for t in data.augment.pixels] == [Stroke, Blur, Contrast, Noise]
    assert data.augment.pixels[1].sigma == 0.5
    assert compose_config("train", ["data=lines"]).data.augment.enabled is False  # off unless asked


# --------------------------------------------------------------------------- training


def step_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_augmented_training_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    on = "data.augment.enabled=true"
    workers = ("data.num_workers=2", "data.persistent_workers=false")
    plain, full, parts = tmp_path / "plain", tmp_path / "full", tmp_path / "parts"
    train(compose_config("train", tiny_overrides(data_root, full, on, *workers)))
    train(compose_config("train", tiny_overrides(data_root, parts, on, "trainer.max_steps=4")))  # in process
    assert load_checkpoint(parts / "checkpoints" / "last.ckpt")["batch_in_epoch"] == 4  # mid-epoch
    train(compose_config("train", tiny_overrides(data_root, parts, on, *workers, "trainer.resume=auto")))
    assert step_losses(parts) == step_losses(full)  # bit for bit, whatever the workers
    assert sorted(step_losses(full)) == list(range(1, 13))
    train(compose_config("train", tiny_overrides(data_root, plain, "trainer.max_steps=1")))
    assert step_losses(plain)[1] != step_losses(full)[1]  # the augmentation did change the inputs


@pytest.mark.slow
def test_show_augment_writes_a_picture(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "augment.png"
    overrides = tiny_overrides(data_root, tmp_path)[:4]  # the shared tiny digit lines
    script = str(ROOT / "scripts" / "show_augment.py")
    result = subprocess.run(
        [sys.executable, script, "--lines", "3", "--copies", "2", "--out", str(out), *overrides],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "3 lines × 2 augmented copies; height 16" in result.stdout and "ms per augmented line" in result.stdout
    with Image.open(out) as im:
        assert im.mode == "L" and im.height == 3 * 3 * (16 + 4) + 3 * 4
