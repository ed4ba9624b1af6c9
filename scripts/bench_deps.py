"""Why recognizer depends on neither torchvision nor torchmetrics: the same work, timed both ways.

    pip install torchvision torchmetrics   # not dependencies of recognizer: only this comparison needs them
    python scripts/bench_deps.py

1. Error rates of 946 random line pairs: ``recognizer.metrics.ErrorRates`` against torchmetrics'
   ``CharErrorRate``/``WordErrorRate`` (the figures must agree to the last digit).
2. Line augmentation of a 48 × 1000 line, one thread: ``data.augment`` (recognizer's default transforms,
   seeded per (seed, epoch, sample)) against torchvision ``transforms.v2`` doing affine + elastic + blur +
   colour jitter, seeded the same way with ``torch.random.fork_rng``. torchvision's affine keeps the input
   width (a slanted line loses its ends) and it has no stroke-width transform.
"""

from __future__ import annotations

import random
import time

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recognizer import CONFIG_DIR
from recognizer.metrics import ErrorRates


def error_rates() -> None:
    from torchmetrics.text import CharErrorRate, WordErrorRate

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz ,."
    refs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(20, 50))) for _ in range(946)]
    hyps = ["".join(c if rng.random() > 0.12 else rng.choice(alphabet) for c in r if rng.random() > 0.03) for r in refs]
    start = time.perf_counter()
    ours = ErrorRates()
    ours.update(refs, hyps)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    cer, wer = CharErrorRate()(hyps, refs).item(), WordErrorRate()(hyps, refs).item()
    theirs_s = time.perf_counter() - start
    print(
        f"error rates, 946 lines: recognizer CER {ours.cer:.6f} WER {ours.wer:.6f} in {ours_s * 1000:.0f} ms; "
        f"torchmetrics CER {cer:.6f} WER {wer:.6f} in {theirs_s * 1000:.0f} ms"
    )


def augmentation(n: int = 200) -> None:
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    ours = instantiate(OmegaConf.load(f"{CONFIG_DIR}/data/augment/default.yaml"))
    image = torch.rand(1, 48, 1000)
    start = time.perf_counter()
    for i in range(n):
        ours(image, 0, 0, i)
    ours_ms = (time.perf_counter() - start) / n * 1000
    theirs = v2.Compose(
        [
            v2.RandomApply([v2.RandomAffine(degrees=1, shear=(-17, 17), scale=(0.9, 1.1))], p=0.5),
            v2.RandomApply([v2.ElasticTransform(alpha=20.0, sigma=5.0)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3),
            v2.RandomApply([v2.ColorJitter(contrast=0.3, brightness=0.2)], p=0.5),
        ]
    )
    start = time.perf_counter()
    for i in range(n):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((0, 0, i)) & 0xFFFFFFFF)
            theirs(image)
    theirs_ms = (time.perf_counter() - start) / n * 1000
    print(
        f"augmentation, 48x1000 line, 1 thread: recognizer {ours_ms:.1f} ms/line; "
        f"torchvision v2 {theirs_ms:.1f} ms/line"
    )


if __name__ == "__main__":
    error_rates()
    augmentation()
