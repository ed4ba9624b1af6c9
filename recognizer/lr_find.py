"""Suggest ``optimizer.lr`` for your data and model with a learning-rate range test (:func:`find_lr`).

Same Hydra config as ``recognizer-train`` (same groups, same overrides): it builds the data, the
alphabet and the model as training would, audits the train split, then trains from the initial
weights for ``lr_find.num_steps`` steps while the learning rate grows geometrically from
``lr_find.min_lr`` to ``lr_find.max_lr`` (:mod:`recognizer.engine.lr_finder`). It writes the curve
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

from recognizer.alphabet import Alphabet
from recognizer.builders import check_head, make_loader, run_audit
from recognizer.engine.loop import TrainState
from recognizer.engine.lr_finder import LRFindResult, cycle, lr_range_test, plot
from recognizer.engine.precision import resolve_device, resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.engine.seeding import seed_everything
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.runtime import make_ctc

log = logging.getLogger(__name__)


def find_lr(cfg: DictConfig) -> LRFindResult:
    """Build data and model as ``recognizer-train`` would and run the range test; write the PNG and JSON."""
    seed_everything(cfg.seed)
    opts = instantiate(cfg.lr_find)
    trainer = instantiate(cfg.trainer)
    if trainer.num_threads:
        import torch

        torch.set_num_threads(trainer.num_threads)
    data = instantiate(cfg.data)
    train_set = data.dataset("train")
    alphabet = data.alphabet() or Alphabet.from_texts(train_set.texts, with_unk=cfg.stability.unknown == "unk")
    model = instantiate(cfg.model, num_classes=alphabet.num_classes)
    check_head(model, alphabet)
    report = run_audit("train", train_set, alphabet, model, cfg.stability)
    loader, sampler = make_loader(
        train_set,
        report.kept,
        alphabet,
        data.batch_size,
        shuffle=True,
        seed=cfg.seed,
        unknown=cfg.stability.unknown,
        **data.loader_options(),
        bucketing=trainer.bucketing,
        bucket_pool_batches=trainer.bucket_pool_batches,
        augment=True,  # the curve of the run you would start: augmented lines when the data config asks
    )
    device = resolve_device(trainer.device)
    precision = resolve_precision(trainer.precision, device)
    model.to(device)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    # "skip" with no tolerance: the first non-finite step is reported as not applied and ends the test
    state = TrainState(model, optimizer, constant(optimizer, 1), precision, NonFiniteGuard("skip", 1))
    augment = data.train_augment
    batches = (augment(b) if augment else b for b in cycle(loader, sampler))
    result = lr_range_test(state, batches, make_ctc(cfg.stability), trainer.grad_clip, opts)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lr_find.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    title = f"{type(model).__name__} on {type(data).__name__}, batch {data.batch_size}, {len(result.lrs)} steps"
    plot(result, out / "lr_find.png", title)
    return result
