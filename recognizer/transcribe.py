"""Transcribe line images, audio or ALTO/PAGE pages with a checkpoint: text on stdout, JSONL with
scores, confidences and token positions, or the pages' XML with our text.

Examples::

    recognizer-transcribe best.ckpt lines/*.png
    recognizer-transcribe best.ckpt 'pages/*.xml' --out-dir transcribed/   # ALTO/PAGE in, same XML + our text out
    recognizer-transcribe best.ckpt scans/ --decoding beam --lm chars.arpa --lm-weight 0.1
    recognizer-transcribe best.ckpt 'pages/**/*.png' --jsonl out.jsonl --timings --batch-size 64
    recognizer-transcribe asr.ckpt recordings/ --jsonl - --timings

Inputs are files, folders (their images or audio files, sorted) or glob patterns. Inputs get the
preprocessing the model was trained with, read from the checkpoint's config: images are grayscale,
inverted and resized to ``data.height``; audio is resampled to ``data.sample_rate`` and turned into
the same log-mel features. XML inputs are pages: their lines are cut as in ``data=pages`` and each
file is written to ``--out-dir`` with our text (and confidence) in every line, atomically, never over
an input (links included). An image path the XML names is read only inside the XML's folder and the
``--image-dir`` folders (``--allow-outside-images`` lifts this for XML you trust); see
:mod:`recognizer.data.pages.safety` for what an XML file can and cannot do.

A thin layer over :class:`recognizer.inference.Transcriber`, the Python API.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf

from recognizer import CONFIG_DIR
from recognizer.data.images.lines import IMAGE_SUFFIXES
from recognizer.errors import user_errors
from recognizer.inference import (  # noqa: F401 (is_audio, preprocessing, input_dataset: also used from here)
    AUDIO_SUFFIXES,
    Transcriber,
    Transcription,
    input_dataset,
    is_audio,
    preprocessing,
)

BEAM_FLAGS = ("beam_size", "lexicon", "lm", "lm_weight", "word_score")


def collect_inputs(patterns: Sequence[str], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Expand files, folders (their inputs, sorted) and glob patterns into input files with ``suffixes``.

    Raises:
        FileNotFoundError: naming the first pattern that matches no image.
    """
    paths: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
        found = [f for f in found if f.suffix.lower() in suffixes]
        if not found:
            raise FileNotFoundError(
                f"{pattern}: no input matches (expected a file, a folder or a glob of {', '.join(suffixes)} files)"
            )
        paths += found
    return list(dict.fromkeys(paths))


def decoding_config(name: str, **options: Any) -> DictConfig:
    """``recognizer/conf/decoding/NAME.yaml`` with the non-None ``options`` set (beam options need ``beam``)."""
    path = Path(CONFIG_DIR) / "decoding" / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise FileNotFoundError(f"no decoding config {path}: use one of {choices}")
    own = OmegaConf.load(path)
    assert isinstance(own, DictConfig), f"{path} must hold a mapping"
    # the group's own defaults list (digit_words: beam's keys, then its own), as Hydra would compose it
    bases = [decoding_config(str(base)) for base in own.pop("defaults", []) if base != "_self_"]
    cfg = OmegaConf.merge(*bases, own)
    assert isinstance(cfg, DictConfig)
    for key, value in options.items():
        if value is None:
            continue
        if key not in cfg:
            raise ValueError(f"--{key.replace('_', '-')} needs --decoding beam (the {name} decoder has no {key})")
        cfg[key] = value
    return cfg


def transcribe(
    checkpoint: str | Path,
    inputs: Sequence[str],
    decoding: DictConfig,
    batch_size: int = 16,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Transcribe files, folders or globs; returns one dict per input, in order (see :func:`as_row`)."""
    model = Transcriber.from_checkpoint(checkpoint, decoding, device, batch_size)
    paths = collect_inputs(inputs, model.suffixes)
    return [as_row(t, "time" if model.audio else "x") for t in model.transcribe(paths)]


def as_row(t: Transcription, unit: str) -> dict[str, Any]:
    """``{"path", "text", "score", "confidence", "tokens"}``; ``tokens`` lists ``{"token", "frame", unit,
    "confidence"}`` where each symbol starts (``x``: column in the original image; ``time``: seconds)."""
    tokens = [{"token": k.symbol, "frame": k.frame, unit: k.position, "confidence": k.confidence} for k in t.tokens]
    return {"path": t.source, "text": t.text, "score": t.score, "confidence": t.confidence, "tokens": tokens}


def write_results(results: list[dict[str, Any]], out: TextIO, jsonl: bool, timings: bool) -> None:
    """Write ``path<TAB>text`` lines, or JSONL objects (``tokens`` only when ``timings``)."""
    for r in results:
        if jsonl:
            row = r if timings else {k: v for k, v in r.items() if k != "tokens"}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            out.write(f"{r['path']}\t{r['text']}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="recognizer-transcribe", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a .ckpt written by recognizer-train")
    p.add_argument("inputs", nargs="+", help="image or audio files, folders or glob patterns (quote globs)")
    p.add_argument("--jsonl", metavar="PATH", help="write JSONL (path, text, score, confidence) here; '-' for stdout")
    p.add_argument("--out-dir", metavar="DIR", help="XML pages: write each page here with our text (required for .xml)")
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
    p.add_argument("--word-score", type=float, help="beam: word insertion score")
    args = p.parse_args(argv)
    if args.timings and not args.jsonl:
        p.error("--timings needs --jsonl PATH (token positions are written to the JSONL only)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    pages = [i for i in args.inputs if i.lower().endswith(".xml")]
    with user_errors("recognizer-transcribe"):  # a message and an exit code (recognizer.errors), no traceback
        decoding = decoding_config(args.decoding, **{k: getattr(args, k) for k in BEAM_FLAGS})
        if pages:
            if len(pages) != len(args.inputs) or not args.out_dir or args.jsonl:
                raise ValueError("XML pages are transcribed alone, into --out-dir DIR (no --jsonl, no other inputs)")
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
