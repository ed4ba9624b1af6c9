"""Picture of the line augmentation (``data.augment``), and its cost per line.

Usage::

    python scripts/show_augment.py                                   # embedded digit lines (height 16)
    python scripts/show_augment.py --out augment.png data=lines data.train=LINES_DIR data.height=64
    python scripts/show_augment.py data=lines data.train=LINES_DIR data.augment.blur.p=1   # one transform

The remaining arguments are overrides of the training config (``recognizer/conf/train.yaml``), so the picture
shows exactly what ``recognizer-train`` with the same overrides trains on; the augmentation is
switched on whatever ``data.augment.enabled`` says. For each of the first ``--lines`` train lines
the grid shows the line as loaded (top), then its augmented versions in epochs ``0..copies-1``
(dark ink on white, a grey rule between lines). It prints the augmentation cost per line (loading
excluded; one process, one thread) in CPU time of this process, the mean over the drawn lines of the
fastest of ``--repeat`` runs of each: on a busy machine wall-clock time also counts the other
processes' turns.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from recognizer import CONFIG_DIR

GAP = 4  # pixels between two lines of the grid


def grid(rows: list[list[torch.Tensor]]) -> Image.Image:
    """Stack ``(1, H, W)`` images: each inner list one above the other, a grey rule between lists."""
    width = max(x.shape[-1] for row in rows for x in row)
    height = sum(x.shape[-2] + GAP for row in rows for x in row) + GAP * len(rows)
    canvas = np.ones((height, width), dtype=np.float32)
    y = 0
    for row in rows:
        for x in row:
            h, w = x.shape[-2:]
            canvas[y : y + h, :w] = 1.0 - x[0].numpy()  # bright ink on 0 → dark ink on white
            y += h + GAP
        canvas[y : y + GAP // 2] = 0.6
        y += GAP
    return Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=6, help="train lines shown (default 6)")
    parser.add_argument("--copies", type=int, default=4, help="augmented versions of each (default 4)")
    parser.add_argument("--out", default="augment.png", help="PNG to write (default augment.png)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per drawn line, fastest kept (default 3)")
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. data=lines data.train=DIR")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [*args.overrides, "data.augment.enabled=true", "paths.output_dir=."])
    data = instantiate(cfg.data)
    dataset = data.dataset("train")
    augment = dataset.augment
    count = min(args.lines, len(dataset))
    originals = [dataset.load(i) for i in range(count)]
    rows, seconds = [], 0.0
    for i in range(count):
        row = [originals[i]]
        for epoch in range(args.copies):
            fastest = float("inf")
            for _ in range(max(args.repeat, 1)):
                start = time.process_time()
                augmented = augment(originals[i], cfg.seed, epoch, i)  # what dataset[SampleKey(i, epoch, seed)] adds
                fastest = min(fastest, time.process_time() - start)
            row.append(augmented)
            seconds += fastest
        rows.append(row)
    grid(rows).save(args.out)
    drawn = count * args.copies
    mean_width = sum(x.shape[-1] for x in originals) / max(count, 1)
    print(
        f"{Path(args.out)}: {count} lines × {args.copies} augmented copies; height {data.height}, mean width "
        f"{mean_width:.0f} px; {1000 * seconds / max(drawn, 1):.2f} CPU ms per augmented line (loading excluded)"
    )


if __name__ == "__main__":
    main()
