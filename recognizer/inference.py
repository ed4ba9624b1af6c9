"""Transcribe from Python: load a checkpoint once, then transcribe files, PIL images, arrays or pages.

Example::

    from recognizer.inference import Transcriber

    model = Transcriber.from_checkpoint("outputs/train/runs/DATE/checkpoints/best.ckpt")
    [line] = model.transcribe("line.png")                 # a path, a PIL image or a numpy array
    print(line.text, line.confidence, [(t.symbol, t.position) for t in line.tokens])
    model.transcribe([pil_image, np_array])               # several at once, batched
    model.transcribe_pages(["page.xml"], out_dir="out/")  # ALTO/PAGE in, the same XML with our text out

Every input goes through the data set class training used (:class:`~recognizer.data.images.lines.LineDataset`
or :class:`~recognizer.data.audio.speech.AudioDataset`) with the checkpoint's preprocessing; in-memory
images are handed to it as temporary PNG/NPY files, so preprocessing cannot drift from training's.
``recognizer-transcribe`` is a thin command-line layer over this class.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.data.audio.features import LogMel
from recognizer.data.audio.reading import audio_info
from recognizer.data.audio.speech import AudioDataset, AudioRecord
from recognizer.data.base import DataError
from recognizer.data.batching import Collate
from recognizer.data.images.lines import IMAGE_SUFFIXES, LineDataset, Record, _image_size
from recognizer.data.pages.cache import load_page_image
from recognizer.data.pages.formats import parse_page
from recognizer.data.pages.geometry import LineGeometryError, baseline_angle, crop_line, line_box, outline
from recognizer.data.pages.module import BASELINE_ABOVE, BASELINE_BELOW
from recognizer.data.pages.safety import within
from recognizer.data.pages.sources import collect_xml
from recognizer.data.pages.write import LineText, write_page
from recognizer.decoding import GreedyDecoder, build_decoder
from recognizer.engine.precision import resolve_device

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

#: What :meth:`Transcriber.transcribe` accepts: a file path, a PIL image, or a numpy array (images:
#: (H, W) or (H, W, 3|4), uint8 or float in [0, 1]; audio: a 1-D waveform at the model's sample rate).
Input = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Token:
    """One emitted symbol.

    Attributes:
        symbol: the symbol.
        frame: the output frame where it starts.
        position: where it starts in the input: x in pixels of the original image, or seconds of audio.
        confidence: the model's probability of the symbol at that frame.
    """

    symbol: str
    frame: int
    position: float
    confidence: float


@dataclass(frozen=True)
class Transcription:
    """One input's transcription.

    Attributes:
        source: the input's path, or ``<image N>``/``<audio N>`` for an in-memory input.
        text: the transcript.
        confidence: the geometric mean over frames of the best class's probability, in [0, 1].
        score: the decoder's score (greedy: the best path's log-probability).
        tokens: the emitted symbols with their positions.
    """

    source: str
    text: str
    confidence: float
    score: float
    tokens: tuple[Token, ...]


def is_audio(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's data config describes audio (log-mel features)."""
    return "n_mels" in config["data"]


def preprocessing(config: dict[str, Any]) -> tuple[int, bool]:
    """``(height, invert)`` the model was trained with, from a checkpoint's resolved config."""
    data = config["data"]
    if "height" not in data:
        raise ValueError(
            f"the checkpoint's data config ({data.get('_target_')}) has neither an image height nor n_mels: "
            "cannot tell how inputs were preprocessed; use a checkpoint written by recognizer-train"
        )
    return int(data["height"]), bool(data.get("invert", True))  # DigitLinesData always inverts


def input_dataset(config: dict[str, Any], paths: Sequence[Path]) -> tuple[LineDataset | AudioDataset, list[float]]:
    """The dataset that preprocesses ``paths`` as in training, and each input's extent.

    The extent is the original width in pixels (images) or the duration in seconds (audio).
    """
    if is_audio(config):
        data = config["data"]
        features = LogMel.from_config(data)  # the front end the model was trained on
        records = [AudioRecord(str(p), p, "", 0.0) for p in paths]
        extents = [n / rate for n, rate in map(audio_info, paths)]
        return AudioDataset(records, features, data["sample_rate"], resample=data.get("resample", True)), extents
    height, invert = preprocessing(config)
    dataset = LineDataset([Record(str(p), p, "") for p in paths], height, invert=invert)
    return dataset, [float(_width(p)) for p in paths]


def checkpoint_image_dirs(dirs: Sequence[str]) -> list[str]:
    """The checkpoint's ``data.image_dirs`` that stay inside an XML's folder (relative, no ``..``).

    The others (``../jpg``, absolute folders) would let a stranger's checkpoint choose folders to read:
    they are left out and logged with the ``--image-dir`` that uses them.
    """
    kept = []
    for d in dirs:
        if not Path(d).is_absolute() and ".." not in Path(d).parts:
            kept.append(str(d))
        else:
            log.warning(
                "the checkpoint's data.image_dirs entry %r is outside the XML's folder: not used (give "
                "--image-dir %s to look there)",
                d,
                d,
            )
    return kept


def inside(xml: Path, dirs: Sequence[str]) -> list[str]:
    """The folders of ``dirs`` (relative to ``xml``'s folder) whose real location lies inside that folder: a
    checkpoint's ``image_dirs`` entry ``jpg`` that is a link to a folder elsewhere is left out, as ``../jpg`` is
    (:func:`checkpoint_image_dirs`)."""
    kept = [d for d in dirs if within(xml.parent / d, [xml.parent])]
    for d in dirs:
        if d not in kept:
            log.warning(
                "the checkpoint's data.image_dirs entry %r is a link out of %s: not used (give --image-dir %s to "
                "look there)",
                d,
                xml.parent,
                (xml.parent / d).resolve(),
            )
    return kept


class Transcriber:
    """A trained model ready to transcribe: built once, called many times.

    Args:
        checkpoint: a loaded checkpoint (see :meth:`from_checkpoint`).
        decoding: a ``recognizer/conf/decoding`` node (None: greedy).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        batch_size: inputs per forward pass.
    """

    def __init__(
        self, checkpoint: dict[str, Any], decoding: DictConfig | None = None, device: str = "auto", batch_size: int = 16
    ) -> None:
        self.config: dict[str, Any] = checkpoint["config"]
        self.model, self.alphabet = build_model(checkpoint)
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.decoder = GreedyDecoder() if decoding is None else build_decoder(decoding, self.alphabet.symbols)
        self.batch_size = batch_size
        self.collate = Collate(self.alphabet)
        self.audio = is_audio(self.config)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, decoding: DictConfig | None = None, device: str = "auto", batch_size: int = 16
    ) -> Transcriber:
        """Load ``path`` (a ``.ckpt`` written by recognizer-train) once."""
        return cls(load_checkpoint(path), decoding, device, batch_size)

    # ---- inputs ------------------------------------------------------------------------------------

    @property
    def suffixes(self) -> tuple[str, ...]:
        """The file suffixes this model reads (audio or images)."""
        return AUDIO_SUFFIXES if self.audio else IMAGE_SUFFIXES

    def _to_file(self, item: Image.Image | np.ndarray, folder: Path, n: int) -> Path:
        """Write an in-memory input where the training data set can read it."""
        if self.audio:
            import soundfile as sf

            wave = np.asarray(item, dtype=np.float32)
            if wave.ndim != 1:
                raise DataError(f"audio input {n}: expected a 1-D waveform, got shape {wave.shape}")
            path = folder / f"{n}.wav"
            sf.write(path, wave, int(self.config["data"]["sample_rate"]), subtype="FLOAT")
            return path
        if isinstance(item, Image.Image) and item.mode == "F":  # float pixels: PNG cannot hold them
            item = np.asarray(item, dtype=np.float32)
        if isinstance(item, np.ndarray) and item.dtype.kind == "f":
            arr = item if item.ndim == 2 else item[..., :3].mean(-1)  # colour: the grey level
            path = folder / f"{n}.npy"
            np.save(path, arr.astype(np.float32))
            return path
        image = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item))
        path = folder / f"{n}.png"
        image.save(path)
        return path

    def transcribe(self, inputs: Input | Sequence[Input]) -> list[Transcription]:
        """Transcribe one input or a list of them (paths, PIL images, numpy arrays); results in input order."""
        items: list[Input] = [inputs] if isinstance(inputs, (str, Path, Image.Image, np.ndarray)) else list(inputs)
        kind = "audio" if self.audio else "image"
        with tempfile.TemporaryDirectory(prefix="recognizer-") as tmp:
            paths = [
                Path(x) if isinstance(x, (str, Path)) else self._to_file(x, Path(tmp), n) for n, x in enumerate(items)
            ]
            names = [str(x) if isinstance(x, (str, Path)) else f"<{kind} {n}>" for n, x in enumerate(items)]
            missing = [str(p) for p, x in zip(paths, items) if isinstance(x, (str, Path)) and not p.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise FileNotFoundError(f"{missing[0]} does not exist{more}")
            return self._run(paths, names)

    @torch.no_grad()
    def _run(self, paths: Sequence[Path], names: Sequence[str]) -> list[Transcription]:
        dataset, extents = input_dataset(self.config, paths)
        order = sorted(range(len(paths)), key=lambda i: dataset.widths[i])  # similar widths: less padding
        results: dict[int, Transcription] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.collate([dataset[i] for i in chunk]).to(self.device)
            logits, lengths = self.model(batch.inputs, batch.input_lengths)
            log_probs = logits.float().log_softmax(-1).cpu()  # (B, T, C)
            for b, (i, hyp) in enumerate(zip(chunk, self.decoder(logits, lengths))):
                frames = int(lengths[b])
                best = log_probs[b, :frames].max(-1).values  # (T,)
                per_frame = extents[i] / max(frames, 1)
                tokens = tuple(
                    Token(
                        self.alphabet.decode((s,)),  # as in the text: <unk> reads as U+FFFD
                        f,
                        round(f * per_frame) if not self.audio else round(f * per_frame, 3),
                        round(math.exp(float(log_probs[b, f, s])), 4),
                    )
                    for s, f in zip(hyp.ids, hyp.frames)
                )
                confidence = math.exp(float(best.mean())) if frames else 0.0
                text = self.alphabet.decode(hyp.ids)
                results[i] = Transcription(names[i], text, round(confidence, 4), round(hyp.score, 4), tokens)
        return [results[i] for i in range(len(paths))]

    # ---- pages -------------------------------------------------------------------------------------

    def transcribe_pages(
        self,
        pages: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        image_dirs: Sequence[str] | None = None,
        allow_outside_images: bool = False,
    ) -> list[Path]:
        """Transcribe every line of ALTO/PAGE files and write each XML, with our text, into ``out_dir``.

        Lines are cut as in training (the checkpoint's ``baseline_above``, ``baseline_below``, ``extract_height``
        and ``deskew`` when it was trained on pages). A line whose geometry gives no image keeps its
        old text (and is logged).

        Args:
            pages: XML files, folders, globs or list files (as ``data.train`` of ``data=pages``).
            out_dir: the output folder; each page keeps its file name. It must not be an input's folder,
                and no output may be an input through a link. Each file is written atomically.
            image_dirs: more folders to find page images in (None: those of the checkpoint's ``data.image_dirs``
                that lie inside each XML's folder; a checkpoint never widens where recognizer reads).
            allow_outside_images: follow image paths the XML names outside its folder and ``image_dirs``
                (only for XML you trust; never taken from the checkpoint).

        Returns:
            The written files, in input order.
        """
        if self.audio:
            raise ValueError("this is a speech checkpoint: pages need a handwriting model")
        data = self.config["data"]
        band = {  # how training cut the lines (checkpoints not trained on pages: the pages defaults)
            "baseline_above": data.get("baseline_above", BASELINE_ABOVE),
            "baseline_below": data.get("baseline_below", BASELINE_BELOW),
        }
        height = data.get("extract_height")
        deskew = bool(data.get("deskew", False))
        trusted = image_dirs is not None  # the user's --image-dir; else the checkpoint's, kept inside each XML's folder
        dirs = list(image_dirs) if image_dirs is not None else checkpoint_image_dirs(data.get("image_dirs") or [])
        out = Path(out_dir)
        xmls = collect_xml([str(p) for p in pages] if not isinstance(pages, (str, Path)) else str(pages))
        names = [x.name for x in xmls]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"several input pages are named {dupes[0]}: transcribe them into separate output folders")
        _check_outputs(xmls, out)
        above, below = band["baseline_above"], band["baseline_below"]
        return [
            self._transcribe_page(
                xml,
                out / xml.name,
                dirs if trusted else inside(xml, dirs),
                above,
                below,
                height,
                deskew,
                allow_outside_images,
            )
            for xml in xmls
        ]

    def _transcribe_page(
        self,
        xml: Path,
        out: Path,
        image_dirs: list[str],
        above: float,
        below: float,
        height: int | None,
        deskew: bool = False,
        allow_outside_images: bool = False,
    ) -> Path:
        page = parse_page(xml, image_dirs=image_dirs, allow_outside_images=allow_outside_images)
        image = page.image
        if image is None:
            why = page.missing_image("--image-dir", "--allow-outside-images")
            raise DataError(f"{xml}: page image not found ({why}); pass --image-dir DIR")
        pixels = load_page_image(image)
        scale = page.scale_to((pixels.shape[1], pixels.shape[0]))
        crops: list[np.ndarray] = []
        boxes: list[tuple[int, int, int, int] | None] = []
        for line in page.lines:
            try:
                points = outline(line, scale, above, below)
                box = line_box(pixels.shape, points)
                angle = baseline_angle(line, scale) if deskew else 0.0
                crop = crop_line(pixels, points, height, angle)  # as the line cache stored them for training
            except LineGeometryError as e:
                log.warning("%s: line %s keeps its text: %s", xml, line.id, e)
                boxes.append(None)
                continue
            boxes.append(box)  # both or neither: each text goes back to its own line
            crops.append(crop)
        found = iter(zip(crops, self.transcribe(crops) if crops else []))
        results: list[LineText | None] = []
        for cut in boxes:
            if cut is None:
                results.append(None)
                continue
            crop, t = next(found)
            to_page = (cut[2] - cut[0]) / crop.shape[1]  # crop pixels → page pixels (crops may be rescaled)
            x0, y0, x1, y1 = (v / scale for v in cut)
            chars = tuple((k.symbol, x0 + k.position * to_page / scale, k.confidence) for k in t.tokens)
            results.append(LineText(t.text, t.confidence, (x0, y0, x1, y1), chars))
        log.info("%s → %s: %d lines", xml, out, sum(r is not None for r in results))
        return write_page(xml, results, out)


def _width(path: Path) -> int:
    """The original width of an image, read from its header; a DataError names an unreadable file."""
    try:
        return _image_size(path)[0]
    except DataError:
        raise
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}; re-encode it or leave it out of the inputs") from None


def align_image(checkpoint: str | Path, image: str | Path, reference: str | None, out: str | Path) -> Path:
    """The alignment picture of one input (``recognizer-align``; its panels: :mod:`recognizer.plots`).

    Preprocess ``image`` (a line image, or audio for a speech model) as the checkpoint's model
    expects and write the alignment PNG to ``out`` (audio: the log-mel features are drawn)."""
    from recognizer.plots import align_sample  # matplotlib: imported only when a picture is asked for

    ckpt = load_checkpoint(checkpoint)
    model, alphabet = build_model(ckpt)
    if not Path(image).is_file():
        raise FileNotFoundError(f"input {image} does not exist")
    dataset, _ = input_dataset(ckpt["config"], [Path(image)])
    return align_sample(model, dataset.load(0), alphabet, reference, out)


def _check_outputs(xmls: Sequence[Path], out: Path) -> None:
    """Refuse an output folder that would overwrite an input page.

    Folders and files are compared as files (:func:`_identity`), not as paths: a link, a bind mount or a
    case-insensitive file system gives one folder or file several names that ``Path.resolve()`` does not
    fold into one.
    """
    if out.is_dir() and _identity(out) in {_identity(x.parent) for x in xmls}:
        raise ValueError(f"output folder {out} holds input pages: choose another (inputs are never overwritten)")
    inputs = {_identity(x): x for x in xmls}
    for xml in xmls:  # a link in out_dir to an input, or an input that is a link into out_dir
        if (out / xml.name).exists() and (hit := inputs.get(_identity(out / xml.name))) is not None:
            raise ValueError(
                f"output {out / xml.name} would overwrite the input {hit} (one is a link to the other): "
                "choose another --out-dir (inputs are never overwritten)"
            )


def _identity(path: Path) -> tuple[int, int]:
    """The file ``path`` names, whatever the name: its device and inode."""
    st = path.stat()
    return st.st_dev, st.st_ino
