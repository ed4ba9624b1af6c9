"""scripts/kraken_digit_lines.py: the layout both tools read, the held-out digit pool, the same lines per seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.scripts import load_script

kraken_digit_lines = load_script("kraken_digit_lines")


def test_writes_kraken_and_recognizer_layouts_with_unseen_val_digits(tmp_path: Path) -> None:
    out = tmp_path / "lines"
    kraken_digit_lines.main(["--out", str(out), "--n-train", "6", "--n-val", "3"])
    train = (out / "train.txt").read_text().splitlines()
    val = (out / "val.txt").read_text().splitlines()
    assert [Path(p).name for p in train] == [f"tr_{j:05d}.png" for j in range(6)]
    assert len(val) == 3 and all(Path(p).is_absolute() and Path(p).exists() for p in train + val)
    for p in map(Path, train + val):
        image = np.asarray(Image.open(p))
        text = p.with_suffix("").with_suffix(".gt.txt").read_text().strip()
        assert image.shape[0] == 48 and image.dtype == np.uint8 and image[0].min() == 255  # white margin
        assert 3 <= len(text) <= 8 and text.isdigit()
        assert image.shape[1] >= 32 * len(text)  # one 32 px digit per character, gaps between
    pools = json.loads((out / "pools.json").read_text())
    assert len(pools["train"]) + len(pools["val"]) == 1797 and not set(pools["train"]) & set(pools["val"])


def test_the_same_seed_writes_the_same_lines(tmp_path: Path) -> None:
    for name in ("a", "b"):
        kraken_digit_lines.main(["--out", str(tmp_path / name), "--n-train", "3", "--n-val", "2", "--seed", "5"])
    for split in ("train", "val"):
        a = sorted((tmp_path / "a" / split).iterdir())
        assert [f.read_bytes() for f in a] == [(tmp_path / "b" / split / f.name).read_bytes() for f in a]
