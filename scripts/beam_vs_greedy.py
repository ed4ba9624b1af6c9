"""Greedy vs beam search (lexicon + character n-gram LM built from the train transcripts) on a checkpoint.

Usage::

    python scripts/beam_vs_greedy.py CHECKPOINT [OUT_DIR] [hydra overrides for recognizer-eval ...]

The lexicon lists every symbol as a one-symbol word and the LM is a trigram over symbols, both
written from the training transcripts of the checkpoint's data config (digit lines by default).
``lm_weight=0.3`` was chosen on the validation split.
Prints one line per decoding with test CER/WER.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recognizer import CONFIG_DIR
from recognizer.decoding import token_names, write_arpa, write_lexicon
from recognizer.engine.checkpoint import load_checkpoint
from recognizer.evaluate import evaluate_checkpoint


def main(argv: list[str]) -> None:
    checkpoint, out = argv[0], Path(argv[1] if len(argv) > 1 else "outputs/beam_vs_greedy")
    extra = argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    texts = instantiate(ckpt["config"]["data"]).dataset("train").texts
    lm = write_arpa([token_names(list(t))[1:] for t in texts], out / "chars3.arpa", order=3)
    lexicon = write_lexicon(ckpt["alphabet"], out / "lexicon.txt")
    runs = {
        "greedy": ["decoding=greedy"],
        "beam": ["decoding=beam"],
        "beam+lm": ["decoding=beam", f"decoding.lm={lm}", "decoding.lm_weight=0.3"],
        "beam+lexicon+lm": [
            "decoding=beam",
            f"decoding.lexicon={lexicon}",
            f"decoding.lm={lm}",
            "decoding.lm_weight=0.3",
        ],
    }
    for name, overrides in runs.items():
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval", [f"checkpoint={checkpoint}", f"paths.output_dir={out / name}", *overrides, *extra])
        m = evaluate_checkpoint(cfg)
        print(f"{name:18s} test/cer={m['test/cer']:.4%} test/wer={m['test/wer']:.4%} ({m['test/samples']} lines)")


if __name__ == "__main__":
    main(sys.argv[1:])
