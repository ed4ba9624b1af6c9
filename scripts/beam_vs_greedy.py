"""Greedy vs beam search with an n-gram LM built from the training transcripts only, on a checkpoint.

Usage::

    python scripts/beam_vs_greedy.py CHECKPOINT --out DIR [--order 3] [--lexicon symbols|words|none]
        [--lm-weights 0.1 0.3 0.5 1.0] [--insertion-scores 0 1 2] -- [DATA OVERRIDES ...]

    python scripts/beam_vs_greedy.py best.ckpt --out runs/lm --order 6 --lexicon none -- \
        experiment=asr_mboshi_crnn data.root=/path/to/mboshi-french-parallel-corpus

The data come from the overrides (the training config composed with them, as ``recognizer-eval``
does; the checkpoint only sets their preprocessing): nothing in the checkpoint names code to run. The lines
scored are those ``recognizer-eval`` scores with the checkpoint's policies (``stability.audit_policy``,
``stability.unknown``; ``--audit-policy`` and ``--unknown`` replace them): with a recipe that drops bad lines,
lines without an image or with a symbol the model does not know are left out and counted in the log.
From the ``train`` split (never val or test) it writes a character
n-gram ARPA LM of ``--order`` and, with ``--lexicon``, a lexicon: ``symbols`` (one-symbol words: digit
lines, which have no spaces) or ``words`` (the distinct words of the train text; then the LM is a word
n-gram over them and words outside it are allowed at ``--unk-score``). ``lm_weight`` and the insertion
score (``word_score`` with a lexicon, ``sil_score`` without: the lexicon-free decoder ignores
``word_score``) are chosen on the validation split (:func:`recognizer.decoding.tune_lm`), then greedy,
beam without LM and beam with the LM are scored on val and test with them. The figures go to stdout and to
``OUT_DIR/beam_vs_greedy.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recognizer import CONFIG_DIR
from recognizer.checkpoint import build_model, load_checkpoint
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
from recognizer.evaluate import check_unk_scorable, eval_data_config, scored_loader
from recognizer.metrics import ErrorRates
from recognizer.stability.options import StabilityOptions


def language_model(texts: list[str], symbols: list[str], out: Path, order: int, lexicon: str) -> tuple[str | None, str]:
    """Write the lexicon (or None) and the ARPA LM of the train ``texts``; returns their paths."""
    if lexicon == "words":
        words = [t.split() for t in texts]
        lex = write_lexicon([w for ws in words for w in ws], out / "lexicon_words.txt")
        return str(lex), str(write_arpa(words, out / f"words{order}.arpa", order=order))
    lm = str(write_arpa([token_names(list(t))[1:] for t in texts], out / f"chars{order}.arpa", order=order))
    if lexicon == "symbols":
        return str(write_lexicon([c for c in symbols if c != " "], out / "lexicon.txt")), lm
    return None, lm


def score(rows: list[tuple[str, str, str]]) -> dict[str, float | int]:
    rates = ErrorRates()
    rates.update([ref for _, ref, _ in rows], [hyp for _, _, hyp in rows])
    return {"cer": rates.cer, "wer": rates.wer, "char_errors": rates.char_errors, "chars": rates.chars}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", type=Path, default=Path("outputs/beam_vs_greedy"), help="folder for the LM and figures")
    p.add_argument("--order", type=int, default=3, help="n-gram order of the LM (>= 2)")
    p.add_argument("--lexicon", choices=("symbols", "words", "none"), default="symbols")
    p.add_argument("--lm-weights", type=float, nargs="+", default=[0.1, 0.3, 0.5, 1.0])
    p.add_argument(
        "--insertion-scores",
        type=float,
        nargs="+",
        default=[0.0, 1.0, 2.0],
        help="word_score grid with a lexicon, sil_score grid without one (the lexicon-free decoder ignores word_score)",
    )
    p.add_argument("--unk-score", type=float, default=float("-inf"), help="--lexicon words: score of other words")
    p.add_argument("--beam-size", type=int, default=50)
    p.add_argument("--audit-policy", choices=("error", "drop"), help="default: the checkpoint's stability.audit_policy")
    p.add_argument("--unknown", choices=("error", "drop", "unk"), help="default: the checkpoint's stability.unknown")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # after "--": config overrides naming the data
    args, overrides = p.parse_args(argv[:cut]), argv[cut + 1 :]
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(args.checkpoint)
    model, alphabet = build_model(ckpt)
    precision = resolve_precision("32", torch.device("cpu"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [*overrides, "paths.output_dir=."])
    # the lines recognizer-eval scores: the checkpoint's training policies, unless --audit-policy/--unknown say
    stability = StabilityOptions.from_config(ckpt["config"]["stability"], strict=False)
    chosen_policies = {"audit_policy": args.audit_policy, "unknown": args.unknown}
    stability = stability.replace(**{k: v for k, v in chosen_policies.items() if v is not None})
    trained_unknown = ckpt["config"]["stability"]["unknown"]
    check_unk_scorable(stability.unknown, alphabet, str(args.checkpoint), trained_unknown, key="--unknown")
    data = instantiate(eval_data_config(cfg.data, ckpt, stability.audit_policy))
    lexicon, lm = language_model(
        list(data.dataset("train").texts), list(alphabet.symbols), args.out, args.order, args.lexicon
    )
    beam = {"lexicon": lexicon, "beam_size": args.beam_size, "unk_score": args.unk_score}
    loaders = {}
    for split in ("val", "test"):
        loaders[split], _ = scored_loader(
            split,
            data.dataset(split),
            alphabet,
            model,
            stability,
            batch_size=32,
            audit_key="--audit-policy",
            unknown_key="--unknown",
        )
    chosen, table = tune_lm(
        model, loaders["val"], alphabet, precision, args.lm_weights, args.insertion_scores, lm=lm, **beam
    )
    print("val char errors per (lm_weight, insertion score):", " ".join(f"({w}, {s}): {e}" for w, s, e in table))
    print(f"chosen on val: {chosen}")
    decoders = {
        "greedy": GreedyDecoder(),
        "beam": BeamDecoder(alphabet.symbols, beam_size=args.beam_size),
        f"beam+{args.lexicon}+lm{args.order}": BeamDecoder(alphabet.symbols, lm=lm, **beam, **chosen),  # type: ignore[arg-type]
    }
    figures: dict[str, dict[str, dict[str, float | int]]] = {}
    for split, loader in loaders.items():
        for name, decoder in decoders.items():
            figures.setdefault(split, {})[name] = s = score(decode_loader(model, loader, decoder, alphabet, precision))
            print(
                f"{split:4s} {name:24s} cer={s['cer']:.4%} ({s['char_errors']}/{s['chars']} chars) wer={s['wer']:.4%}"
            )
    report = {"lm": lm, "lexicon": lexicon, "order": args.order, "chosen_on_val": chosen, "grid": table, **figures}
    (args.out / "beam_vs_greedy.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
