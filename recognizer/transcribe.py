"""Transcribe line images, audio or ALTO/PAGE pages with a checkpoint: text on stdout, JSONL with
scores, confidences and token positions, or the pages' XML with our text.

Inputs are files, folders (their images or audio files, sorted) or glob patterns. Inputs get the
preprocessing the model was trained with, read from the checkpoint's config: images are grayscale,
inverted and resized to ``data.height``; audio is resampled to ``data.sample_rate`` and turned into
the same log-mel features. XML inputs are pages: their lines are cut as in ``data=pages`` and each
file is written to ``--out-dir`` with our text (and confidence) in every line, atomically, never over
an input (links included). An image path the XML names is read only inside the XML's folder and the
``--image-dir`` folders (``--allow-outside-images`` lifts this for XML you trust); see
:mod:`recognizer.data.pages.safety` for what an XML file can and cannot do.

A thin layer over :class:`recognizer.inference.Transcriber`, the Python API; the command
``recognizer-transcribe`` (:mod:`recognizer.cli.transcribe`) is a thin layer over this module.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from recognizer.data.images.lines import IMAGE_SUFFIXES
from recognizer.inference import Transcriber, Transcription


def page_inputs(inputs: Sequence[str], out_dir: str | None, jsonl: str | None) -> list[str]:
    """The inputs that are ALTO/PAGE pages: ``.xml`` files and, with ``out_dir``, folders (of pages); none
    where the inputs are line images or audio.

    Raises:
        ValueError: pages mixed with other inputs, pages without ``out_dir`` or with ``jsonl``, or
            ``out_dir`` without pages.
    """
    pages = [i for i in inputs if i.lower().endswith(".xml") or (out_dir and Path(i).is_dir())]
    if pages and (len(pages) != len(inputs) or not out_dir or jsonl):
        raise ValueError("XML pages are transcribed alone, into --out-dir DIR (no --jsonl, no other inputs)")
    if out_dir and not pages:
        raise ValueError(
            "--out-dir is where transcribed ALTO/PAGE pages go: give .xml pages or folders of them "
            "(line images and audio print to stdout or --jsonl)"
        )
    return pages


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
