"""Suggest ``optimizer.lr`` for your data and model with a learning-rate range test (:func:`find_lr`).

Same Hydra config as ``recognizer-train`` (same groups, same overrides): it builds the data, the
alphabet and the model as training would, audits the train split, then trains from the initial
weights for ``lr_find.num_steps`` steps while the learning rate grows geometrically from
``lr_find.min_lr`` to ``lr_find.max_lr`` (:mod:`recognizer.engine.lr_range_test`). It writes the curve
to ``lr_find.png`` and the numbers to ``lr_find.json`` in the run directory; the command
``recognizer-lr-find`` (:mod:`recognizer.cli.lr_find`) prints the suggested ``optimizer.lr``.
Nothing is trained for keeps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from recognizer.engine.loop import TrainState
from recognizer.engine.lr_range_test import LRFindResult, cycle, lr_range_test, plot
from recognizer.engine.schedulers import constant
from recognizer.engine.seeding import seed_everything
from recognizer.run import build_run
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.runtime import make_ctc

log = logging.getLogger(__name__)


def find_lr(cfg: DictConfig) -> LRFindResult:
    """Build data and model as ``recognizer-train`` would and run the range test; write the PNG and JSON."""
    seed_everything(cfg.seed)
    opts = instantiate(cfg.lr_find)
    run = build_run(cfg, splits=["train"])
    loader, sampler = run.train_loader()  # the curve of the run you would start: augmented when it would be
    assert run.precision is not None
    optimizer = instantiate(cfg.optimizer)(params=run.model.parameters())
    # "skip" with no tolerance: the first non-finite step is reported as not applied and ends the test
    state = TrainState(run.model, optimizer, constant(optimizer, 1), run.precision, NonFiniteGuard("skip", 1))
    augment = run.data.train_augment
    batches = (augment(b) if augment else b for b in cycle(loader, sampler))
    result = lr_range_test(state, batches, make_ctc(run.stability), run.trainer.grad_clip, opts)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lr_find.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    title = (
        f"{type(run.model).__name__} on {type(run.data).__name__}, batch {run.data.batch_size}, {len(result.lrs)} steps"
    )
    plot(result, out / "lr_find.png", title)
    return result
