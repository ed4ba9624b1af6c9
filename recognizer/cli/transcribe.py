"""Transcribe line images, audio or ALTO/PAGE pages with a checkpoint: text on stdout, JSONL with
scores, confidences and token positions, or the pages' XML with our text.

Examples::

    recognizer-transcribe best.ckpt lines/*.png
    recognizer-transcribe best.ckpt 'pages/*.xml' --out-dir transcribed/   # ALTO/PAGE in, same XML + our text out
    recognizer-transcribe best.ckpt scans/ --decoding beam --lm chars.arpa --lm-weight 0.1
    recognizer-transcribe best.ckpt 'pages/**/*.png' --jsonl out.jsonl --timings --batch-size 64
    recognizer-transcribe asr.ckpt recordings/ --jsonl - --timings

Inputs, preprocessing and what an XML page may name: :mod:`recognizer.transcribe`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recognizer import CONFIG_DIR

#: The beam decoder's options, each a ``--flag`` here and a key of the decoding config.
BEAM_FLAGS = ("beam_size", "lexicon", "lm", "lm_weight", "word_score", "sil_score")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="recognizer-transcribe", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a .ckpt written by recognizer-train")
    p.add_argument("inputs", nargs="+", help="image or audio files, folders or glob patterns (quote globs)")
    p.add_argument("--jsonl", metavar="PATH", help="write JSONL (path, text, score, confidence) here; '-' for stdout")
    p.add_argument("--out-dir", metavar="DIR", help="pages: write each here with our text (folders: of pages)")
    p.add_argument(
        "--image-dir",
        action="append",
        metavar="DIR",
        help="XML pages: another folder with the page images "
        "(relative to each XML's folder; repeatable; default: the checkpoint's data.image_dirs that lie inside "
        "the XML's folder)",
    )
    p.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="XML pages: follow image paths the XML names outside its folder and the --image-dir folders "
        "(symlinks resolved); only for XML you trust (default: such a path is not read)",
    )
    p.add_argument("--timings", action="store_true", help="add per-token frame and x position to the JSONL")
    p.add_argument("--batch-size", type=int, default=16, help="lines per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--decoding", default="greedy", help="greedy | beam | digit_words: a shipped decoding config (default greedy)"
    )
    p.add_argument("--beam-size", type=int, help="beam: hypotheses kept per frame")
    p.add_argument("--lexicon", help="beam: lexicon file (WORD T O K E N S per line)")
    p.add_argument("--lm", help="beam: KenLM model, ARPA or binary")
    p.add_argument("--lm-weight", type=float, help="beam: LM weight")
    p.add_argument("--word-score", type=float, help="beam with --lexicon: word insertion score")
    p.add_argument("--sil-score", type=float, help="beam: score per word separator (lexicon-free insertion)")
    args = p.parse_args(argv)
    if args.timings and not args.jsonl:
        p.error("--timings needs --jsonl PATH (token positions are written to the JSONL only)")
    return args


def decoding_config(name: str, **options: Any) -> DictConfig:
    """The ``decoding`` group's config NAME as Hydra composes it, with the non-None ``options`` set.

    Raises:
        FileNotFoundError: NAME is not in the group (the message lists the ones that are).
        ValueError: a beam option given to a decoder without it.
    """
    from hydra import compose, initialize_config_dir

    group = Path(CONFIG_DIR) / "decoding"
    if not (group / f"{name}.yaml").is_file():
        choices = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
        raise FileNotFoundError(f"--decoding {name}: no such decoding config; use one of {choices}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(overrides=[f"+decoding={name}"]).decoding
    for key, value in options.items():
        if value is None:
            continue
        if key not in cfg:
            raise ValueError(f"--{key.replace('_', '-')} needs --decoding beam (the {name} decoder has no {key})")
        cfg[key] = value
    return cfg


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from recognizer.errors import user_errors
    from recognizer.inference import Transcriber
    from recognizer.transcribe import page_inputs, transcribe, write_results

    with user_errors("recognizer-transcribe"):  # a message and an exit code (recognizer.errors), no traceback
        pages = page_inputs(args.inputs, args.out_dir, args.jsonl)
        decoding = decoding_config(args.decoding, **{k: getattr(args, k) for k in BEAM_FLAGS})
        if pages:
            model = Transcriber.from_checkpoint(args.checkpoint, decoding, args.device, args.batch_size)
            for path in model.transcribe_pages(pages, args.out_dir, args.image_dir, args.allow_outside_images):
                print(path)
            return
        results = transcribe(args.checkpoint, args.inputs, decoding, args.batch_size, args.device)
    if args.jsonl and args.jsonl != "-":
        with open(args.jsonl, "w", encoding="utf-8") as f:
            write_results(results, f, jsonl=True, timings=args.timings)
    else:
        write_results(results, sys.stdout, jsonl=bool(args.jsonl), timings=args.timings)


if __name__ == "__main__":
    main()
