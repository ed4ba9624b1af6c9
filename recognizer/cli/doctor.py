"""recognizer-doctor: diagnose a training config without training (:mod:`recognizer.doctor`).

Same Hydra config as ``recognizer-train``. Prints the verdicts and writes ``doctor.md`` and
``doctor.json`` in the run directory. The exit code is 1 when a blocking problem is found, so it
can gate a job script.

Examples::

    recognizer-doctor                                            # the embedded digit lines + CRNN
    recognizer-doctor data=lines data.train=data/iam/train.tsv data.val=data/iam/val.tsv data.height=64
    recognizer-doctor optimizer.lr=1.0                           # is this learning rate safe?
    recognizer-doctor doctor.num_classes=10                      # check a head of another size
    recognizer-doctor stability.max_label_length=4               # enforce a cap and see who breaks it
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from recognizer import CONFIG_DIR


def main() -> None:
    """The ``recognizer-doctor`` console script (known user errors: a message and an exit code, see
    :mod:`recognizer.errors`; a blocking verdict exits with 1)."""
    from recognizer.errors import run_hydra_main

    run_hydra_main("recognizer-doctor", hydra_main)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="doctor")
def hydra_main(cfg: DictConfig) -> None:
    from recognizer.doctor import run_doctor

    report = run_doctor(cfg)
    if report.blocking:
        sys.exit(1)


if __name__ == "__main__":
    main()
