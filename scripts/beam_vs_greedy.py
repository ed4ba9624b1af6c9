"""Greedy vs beam search (lexicon + n-gram LM built from the training transcripts) on a checkpoint.

Usage::

    python scripts/beam_vs_greedy.py CHECKPOINT [OUT_DIR]

From the training transcripts of the checkpoint's data config (digit lines by default) it writes a
lexicon of the symbols (one-symbol words: the digit lines have no spaces) and a character trigram
ARPA LM. ``lm_weight`` and ``word_score`` are chosen on the validation split
(:func:`recognizer.decoding.tune_lm`), then every decoding is scored on val and test with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.data.loaders import make_loader
from recognizer.decoding import (
    BeamDecoder,
    GreedyDecoder,
    decode_loader,
    token_names,
    tune_lm,
    write_arpa,
    write_lexicon,
)
from recognizer.engine.precision import resolve_precision
from recognizer.metrics import ErrorRates

LM_WEIGHTS = (0.1, 0.3, 0.5, 1.0)
WORD_SCORES = (0.0, 1.0, 2.0)


def main(argv: list[str]) -> None:
    checkpoint, out = argv[0], Path(argv[1] if len(argv) > 1 else "outputs/beam_vs_greedy")
    out.mkdir(parents=True, exist_ok=True)
    model, alphabet = build_model(load_checkpoint(checkpoint))
    precision = resolve_precision("32", torch.device("cpu"))
    data = instantiate(load_checkpoint(checkpoint)["config"]["data"])
    texts = data.dataset("train").texts
    lm = str(write_arpa([token_names(list(t))[1:] for t in texts], out / "chars3.arpa", order=3))
    lexicon = str(write_lexicon(alphabet.symbols, out / "lexicon.txt"))
    loaders = {}
    for split in ("val", "test"):
        dataset = data.dataset(split)
        loaders[split], _ = make_loader(dataset, list(range(len(dataset))), alphabet, 64, False, 0, "error")
    chosen, table = tune_lm(model, loaders["val"], alphabet, precision, LM_WEIGHTS, WORD_SCORES, lexicon=lexicon, lm=lm)
    print("val char errors per (lm_weight, word_score):", " ".join(f"({w}, {s}): {e}" for w, s, e in table))
    print(f"chosen on val: {chosen}")
    decoders = {
        "greedy": GreedyDecoder(),
        "beam": BeamDecoder(alphabet.symbols),
        "beam+lexicon": BeamDecoder(alphabet.symbols, lexicon=lexicon),
        "beam+lexicon+lm": BeamDecoder(alphabet.symbols, lexicon=lexicon, lm=lm, **chosen),
    }
    for split, loader in loaders.items():
        for name, decoder in decoders.items():
            rows = decode_loader(model, loader, decoder, alphabet, precision)
            r = ErrorRates()
            r.update([ref for _, ref, _ in rows], [hyp for _, _, hyp in rows])
            print(f"{split:4s} {name:16s} cer={r.cer:.4%} ({r.char_errors}/{r.chars} chars) wer={r.wer:.4%}")


if __name__ == "__main__":
    main(sys.argv[1:])
