"""recognizer-lr-find: suggest ``optimizer.lr`` for your data and model with a learning-rate range test.

Same Hydra config as ``recognizer-train`` (same groups, same overrides); the test itself:
:mod:`recognizer.lr_find`. It prints the suggested ``optimizer.lr`` and writes the curve to
``lr_find.png`` and the numbers to ``lr_find.json`` in the run directory. Nothing is trained for keeps.

Examples::

    recognizer-lr-find                                               # the embedded digit lines + CRNN
    recognizer-lr-find data=lines data.train=data/iam/train.tsv data.val=data/iam/val.tsv
    recognizer-lr-find model=conformer data=spoken_digits lr_find.max_lr=0.1
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from recognizer import CONFIG_DIR


def main() -> None:
    """The ``recognizer-lr-find`` console script: known user errors end with a message and an exit code."""
    from recognizer.errors import run_hydra_main

    run_hydra_main("recognizer-lr-find", hydra_main)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="lr_find")
def hydra_main(cfg: DictConfig) -> None:
    from recognizer.lr_find import find_lr

    result = find_lr(cfg)
    out = Path(cfg.paths.output_dir)
    others = ", ".join(f"{k} {v:.2g}" for k, v in result.suggestions.items() if k != result.method and v)
    if result.suggestion is None:
        raise SystemExit(f"no suggestion: the curve has {len(result.lrs)} points; see {out / 'lr_find.png'}")
    print(f"suggested optimizer.lr={result.suggestion:.2g} ({result.method}; {others})")
    print(f"curve: {out / 'lr_find.png'}, numbers: {out / 'lr_find.json'}")


if __name__ == "__main__":
    main()
