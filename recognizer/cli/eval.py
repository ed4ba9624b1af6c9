"""recognizer-eval: CER/WER of a checkpoint on a data split and a predictions TSV (id, reference, hypothesis).

Examples::

    recognizer-eval checkpoint=outputs/train/runs/DATE/checkpoints/best.ckpt
    recognizer-eval checkpoint=best.ckpt data=lines data.test=data/iam/test.tsv
    recognizer-eval checkpoint=best.ckpt decoding=beam decoding.lexicon=lexicon.txt decoding.lm=lm.arpa
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recognizer import CONFIG_DIR


def main() -> None:
    """The ``recognizer-eval`` console script (known user errors: a message and an exit code, see
    :mod:`recognizer.errors`)."""
    from recognizer.errors import run_hydra_main

    run_hydra_main("recognizer-eval", hydra_main)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> float:
    """Evaluate (:func:`recognizer.evaluate.evaluate_checkpoint`), print the scores, return the CER for sweepers."""
    from recognizer.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(cfg)
    s = cfg.split
    print(
        f"{s}/cer={metrics[f'{s}/cer']:.4f} {s}/wer={metrics[f'{s}/wer']:.4f} "
        f"({metrics[f'{s}/samples']} samples; predictions in {cfg.paths.output_dir})"
    )
    return metrics[f"{s}/cer"]


if __name__ == "__main__":
    main()
