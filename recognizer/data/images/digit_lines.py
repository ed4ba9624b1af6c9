"""Embedded handwriting data: lines of real handwritten digits, generated offline on first use.

scikit-learn ships 1,797 real handwritten digits (8×8, 16 grey levels, from 43 writers). They are
split once, per class, into disjoint train / val / test pools, so validation and test lines use
digit images never seen in training. Each line holds 1..``max_digits`` digits, each upscaled to a
random size, slightly sheared, placed with random gaps and vertical jitter, then rendered as dark
ink on light paper with a little noise — the same look as a scanned line, written in the same
layout (PNG files + ``{split}.tsv`` manifests) that :mod:`recognizer.data.images.lines` reads for users'
own data. Generation is deterministic for a seed and is cached: a finished split is marked by its
manifest, which is written last (atomically).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from recognizer.data.base import generation_lock, write_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
POOL_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def digit_pools(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split sklearn's digits per class into disjoint pools: ``{split: (images (N,8,8) in [0,1], labels)}``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    pools: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(len(idx) * POOL_FRACTIONS["train"])
        n_val = round(len(idx) * POOL_FRACTIONS["val"])
        pools["train"] += idx[:n_train].tolist()
        pools["val"] += idx[n_train : n_train + n_val].tolist()
        pools["test"] += idx[n_train + n_val :].tolist()
    return {s: (images[np.array(ix)], labels[np.array(ix)]) for s, ix in pools.items()}


def render_line(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, max_digits: int, height: int
) -> tuple[np.ndarray, str]:
    """Compose one line: ``(uint8 image (height, W), transcript)``."""
    n = int(rng.integers(1, max_digits + 1))
    picks = rng.integers(0, len(images), size=n)
    margin = int(rng.integers(2, 7))
    glyphs, x = [], margin
    for k in picks:
        size = int(rng.integers(round(0.6 * height), round(0.85 * height) + 1))
        width = max(4, round(size * rng.uniform(0.75, 1.1)))
        shear = rng.uniform(-0.25, 0.25)
        glyph = Image.fromarray(images[k], mode="F").resize((width, size), Image.Resampling.BICUBIC)
        glyph = glyph.transform(
            glyph.size,
            Image.Transform.AFFINE,
            (1, shear, -shear * size / 2, 0, 1, 0),
            resample=Image.Resampling.BILINEAR,
        )
        y = int(rng.integers(0, height - size + 1))
        glyphs.append((x, y, np.clip(np.asarray(glyph, dtype=np.float32), 0.0, 1.0)))
        x += width + int(rng.integers(-1, round(0.3 * height)))
    width = x + margin
    ink = np.zeros((height, width), dtype=np.float32)
    for gx, gy, g in glyphs:
        h, w = g.shape
        region = ink[gy : gy + h, gx : gx + w]
        np.maximum(region, g[:, : region.shape[1]], out=region)
    contrast = rng.uniform(0.6, 1.0)
    paper = rng.uniform(0.85, 1.0)
    page = paper - contrast * ink + rng.normal(0.0, 0.03, size=ink.shape)
    return (np.clip(page, 0.0, 1.0) * 255).round().astype(np.uint8), "".join(map(str, labels[picks]))


def generate_split(root: Path, split: str, num_lines: int, max_digits: int, height: int, seed: int) -> Path:
    """Write ``root/split/*.png`` and ``root/split.tsv``; return the manifest path."""
    images, labels = digit_pools(seed)[split]
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image\ttext"]
    for i in range(num_lines):
        pixels, text = render_line(rng, images, labels, max_digits, height)
        name = f"{split}/{split}-{i:06d}.png"
        Image.fromarray(pixels, mode="L").save(root / name, compress_level=1)
        rows.append(f"{name}\t{text}")
    return write_manifest(root / f"{split}.tsv", rows)


def ensure_digit_lines(
    root: str | Path,
    sizes: dict[str, int],
    max_digits: int = 8,
    height: int = 16,
    seed: int = 0,
) -> dict[str, Path]:
    """Generate the missing splits under a folder named by the generation settings; return manifests.

    The folder name encodes every setting, so changing one never reuses a stale cache.
    """
    tag = f"h{height}_d{max_digits}_s{seed}_" + "_".join(f"{s}{sizes[s]}" for s in SPLITS)
    base = Path(root) / tag
    manifests = {split: base / f"{split}.tsv" for split in SPLITS}
    if all(m.is_file() for m in manifests.values()):
        return manifests
    with generation_lock(base):  # parallel jobs on an empty cache: one generates, the others wait
        for split, manifest in manifests.items():
            if not manifest.is_file():
                log.info("generating %d %s lines of handwritten digits into %s", sizes[split], split, base)
                generate_split(base, split, sizes[split], max_digits, height, seed)
    return manifests
