"""Transcribe line images or audio with a checkpoint: text on stdout, or JSONL with scores and token positions.

Examples::

    recognizer-transcribe best.ckpt lines/*.png
    recognizer-transcribe best.ckpt scans/ --decoding beam --lm chars.arpa --lm-weight 0.1
    recognizer-transcribe best.ckpt 'pages/**/*.png' --jsonl out.jsonl --timings --batch-size 64
    recognizer-transcribe asr.ckpt recordings/ --jsonl - --timings

Inputs are files, folders (their images or audio files, sorted) or glob patterns. Inputs get the
preprocessing the model was trained with, read from the checkpoint's config: images are grayscale,
inverted and resized to ``data.height``; audio is resampled to ``data.sample_rate`` and turned into
the same log-mel features.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig, OmegaConf

from recognizer import CONFIG_DIR
from recognizer.alphabet import Alphabet
from recognizer.builders import model_from_checkpoint
from recognizer.data.audio import audio_info
from recognizer.data.base import DataError
from recognizer.data.batching import Collate
from recognizer.data.features import LogMel
from recognizer.data.lines import IMAGE_SUFFIXES, LineDataset, Record, _image_size
from recognizer.data.speech import AudioDataset, AudioRecord
from recognizer.decoding import Hypothesis, build_decoder
from recognizer.engine.checkpoint import load_checkpoint
from recognizer.engine.precision import resolve_device
from recognizer.errors import user_errors

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
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
    """``conf/decoding/NAME.yaml`` with the non-None ``options`` set (beam options need ``beam``)."""
    path = Path(CONFIG_DIR) / "decoding" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no decoding config {path}: use greedy or beam")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig), f"{path} must hold a mapping"
    for key, value in options.items():
        if value is None:
            continue
        if key not in cfg:
            raise ValueError(f"--{key.replace('_', '-')} needs --decoding beam (the {name} decoder has no {key})")
        cfg[key] = value
    return cfg


def preprocessing(config: dict[str, Any]) -> tuple[int, bool]:
    """``(height, invert)`` the model was trained with, from a checkpoint's resolved config."""
    data = config["data"]
    if "height" not in data:
        raise ValueError(
            f"the checkpoint's data config ({data.get('_target_')}) has neither an image height nor n_mels: "
            "cannot tell how inputs were preprocessed; use a checkpoint written by recognizer-train"
        )
    return int(data["height"]), bool(data.get("invert", True))  # DigitLinesData always inverts


def is_audio(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's data config describes audio (log-mel features)."""
    return "n_mels" in config["data"]


def input_dataset(config: dict[str, Any], paths: Sequence[Path]) -> tuple[LineDataset | AudioDataset, list[float]]:
    """The dataset that preprocesses ``paths`` as in training, and each input's extent.

    The extent is the original width in pixels (images) or the duration in seconds (audio).
    """
    if is_audio(config):
        data = config["data"]
        keys = ("sample_rate", "n_mels", "win_ms", "hop_ms", "n_fft", "log_floor", "normalize")
        features = LogMel(*(data[k] for k in keys))  # the front end the model was trained on
        records = [AudioRecord(str(p), p, "", 0.0) for p in paths]
        extents = [n / rate for n, rate in map(audio_info, paths)]
        return AudioDataset(records, features, data["sample_rate"], resample=data.get("resample", True)), extents
    height, invert = preprocessing(config)
    dataset = LineDataset([Record(str(p), p, "") for p in paths], height, invert=invert)
    return dataset, [float(_width(p)) for p in paths]


def _width(path: Path) -> int:
    """The original width of an image, read from its header; a DataError names an unreadable file."""
    try:
        return _image_size(path)[0]
    except DataError:
        raise
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}; re-encode it or leave it out of the inputs") from None


@torch.no_grad()
def transcribe(
    checkpoint: str | Path,
    inputs: Sequence[str],
    decoding: DictConfig,
    batch_size: int = 16,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Transcribe files, folders or globs; returns ``{"path", "text", "score", "tokens"}`` per input, in order.

    ``tokens`` lists ``{"token", "frame", "x"}`` (images: column in the original image) or
    ``{"token", "frame", "time"}`` (audio: seconds), where each symbol starts; frames are spread
    evenly over the input.
    """
    ckpt = load_checkpoint(checkpoint)
    model, alphabet = model_from_checkpoint(ckpt)
    audio = is_audio(ckpt["config"])
    paths = collect_inputs(inputs, AUDIO_SUFFIXES if audio else IMAGE_SUFFIXES)
    dev = resolve_device(device)
    model.to(dev).eval()
    decoder = build_decoder(decoding, alphabet.symbols)
    dataset, extents = input_dataset(ckpt["config"], paths)
    collate = Collate(alphabet)
    order = sorted(range(len(paths)), key=lambda i: dataset.widths[i])  # similar widths: less padding
    results: dict[int, dict[str, Any]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([dataset[i] for i in chunk]).to(dev)
        logits, lengths = model(batch.inputs, batch.input_lengths)
        for i, hyp, n in zip(chunk, decoder(logits, lengths), lengths.tolist()):
            results[i] = _result(paths[i], hyp, alphabet, int(n), extents[i], "time" if audio else "x")
    return [results[i] for i in range(len(paths))]


def _result(path: Path, hyp: Hypothesis, alphabet: Alphabet, frames: int, extent: float, unit: str) -> dict[str, Any]:
    def position(f: int) -> float:
        return round(f * extent / max(frames, 1)) if unit == "x" else round(f * extent / max(frames, 1), 3)

    tokens = [{"token": alphabet.symbols[i - 1], "frame": f, unit: position(f)} for i, f in zip(hyp.ids, hyp.frames)]
    return {"path": str(path), "text": alphabet.decode(hyp.ids), "score": round(hyp.score, 4), "tokens": tokens}


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
    p.add_argument("--jsonl", metavar="PATH", help="write JSONL (path, text, score) here; '-' for stdout")
    p.add_argument("--timings", action="store_true", help="add per-token frame and x position to the JSONL")
    p.add_argument("--batch-size", type=int, default=16, help="lines per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--decoding", default="greedy", help="greedy | beam: a file of conf/decoding (default greedy)")
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
    with user_errors("recognizer-transcribe"):  # a message and an exit code (recognizer.errors), no traceback
        decoding = decoding_config(args.decoding, **{k: getattr(args, k) for k in BEAM_FLAGS})
        results = transcribe(args.checkpoint, args.inputs, decoding, args.batch_size, args.device)
    if args.jsonl and args.jsonl != "-":
        with open(args.jsonl, "w", encoding="utf-8") as f:
            write_results(results, f, jsonl=True, timings=args.timings)
    else:
        write_results(results, sys.stdout, jsonl=bool(args.jsonl), timings=args.timings)


if __name__ == "__main__":
    main()
