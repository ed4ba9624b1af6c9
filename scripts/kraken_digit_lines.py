"""kraken's digit-line set: the lines the time-to-accuracy figures against kraken 7 were measured on
(docs/training.md, "Time to accuracy against kraken").

Each line is 3 to 8 random scikit-learn digits (8×8, upscaled to 32×32 with PIL's bilinear filter), joined
with random gaps of 0–6 px, centred in a 48 px high line, dark ink on white, saved as 8-bit grayscale PNG.
The 1,797 digit images are split 80/20 into a train and a val pool first, so no val line holds a digit
image seen in training. The layout is the one both tools read:

- ``OUT/train/tr_NNNNN.png`` + ``.gt.txt`` and ``OUT/val/va_NNNNN.png`` + ``.gt.txt``
  (``recognizer-train data=lines data.train=OUT/train data.val=OUT/val``);
- ``OUT/train.txt`` and ``OUT/val.txt``, one absolute PNG path per line (``ketos train -f path -t ... -e ...``);
- ``OUT/pools.json``, the digit images of each pool.

The same seed writes the same lines (the draws of the set the figures used: ``--seed 0``, the defaults).

Usage::

    python scripts/kraken_digit_lines.py --out DIR [--n-train 2000] [--n-val 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DIGIT_SIZE = 32  # px, each 8×8 digit upscaled
LINE_HEIGHT = 48  # px


def digit_image(digit: np.ndarray) -> np.ndarray:
    """An 8×8 digit (0..16, ink high) as 32×32 uint8, ink high."""
    a = np.clip(np.round(digit * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a, mode="L").resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def make_line(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, pool: np.ndarray, max_gap: int = 6
) -> tuple[np.ndarray, str]:
    """One line of 3–8 digits drawn from ``pool``: the image (dark ink on white) and its text."""
    n = int(rng.integers(3, 9))
    parts, text = [], []
    for k, i in enumerate(rng.choice(pool, size=n, replace=True)):
        if k > 0:
            gap = int(rng.integers(0, max_gap + 1))
            if gap:
                parts.append(np.zeros((DIGIT_SIZE, gap), np.uint8))
        parts.append(images[i])
        text.append(str(int(labels[i])))
    line = np.concatenate(parts, axis=1)
    canvas = np.zeros((LINE_HEIGHT, line.shape[1]), np.uint8)
    top = (LINE_HEIGHT - DIGIT_SIZE) // 2
    canvas[top : top + DIGIT_SIZE] = line
    return 255 - canvas, "".join(text)


def write_split(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    n: int,
    folder: Path,
    prefix: str,
) -> list[Path]:
    """``n`` lines as ``folder/PREFIX_NNNNN.png`` + ``.gt.txt``; their absolute PNG paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in range(n):
        image, text = make_line(rng, images, labels, pool)
        stem = folder / f"{prefix}_{j:05d}"
        Image.fromarray(image, mode="L").save(stem.with_suffix(".png"))
        stem.with_suffix(".gt.txt").write_text(text + "\n", encoding="utf-8")
        paths.append(stem.with_suffix(".png").resolve())
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument("--n-train", type=int, default=2000, help="train lines")
    parser.add_argument("--n-val", type=int, default=300, help="val lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw")
    parser.add_argument("--train-frac", type=float, default=0.8, help="share of the digit images in the train pool")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    digits = load_digits()
    images = np.stack([digit_image(x) for x in digits.images])
    labels = digits.target
    perm = rng.permutation(len(labels))
    cut = round(args.train_frac * len(labels))
    train_pool, val_pool = np.sort(perm[:cut]), np.sort(perm[cut:])

    train = write_split(rng, images, labels, train_pool, args.n_train, args.out / "train", "tr")
    val = write_split(rng, images, labels, val_pool, args.n_val, args.out / "val", "va")
    for name, paths in (("train.txt", train), ("val.txt", val)):
        (args.out / name).write_text("".join(f"{p}\n" for p in paths))
    pools = {"train": train_pool.tolist(), "val": val_pool.tolist()}
    (args.out / "pools.json").write_text(json.dumps(pools))
    print(f"digit pools: train={len(train_pool)} val={len(val_pool)}; lines: train={len(train)} val={len(val)}")


if __name__ == "__main__":
    main()
