"""Speech data sets: NeMo-style JSONL manifests and the dataset that turns audio into log-mel inputs.

A manifest line is ``{"audio_filepath": ..., "duration": seconds, "text": ...}`` (``id`` optional);
relative paths are relative to the manifest's folder. Input lengths (feature frames) are known
from the audio headers without decoding, so the pre-flight audit checks every utterance before
the first step; an item's input is ``(1, n_mels, frames)``, time as width, like a line image.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from recognizer.data.audio.augment import WaveAugment
from recognizer.data.audio.features import LogMel
from recognizer.data.audio.reading import audio_info, read_audio, resampled_length
from recognizer.data.base import RecordDataset, check_unique, read_jsonl
from recognizer.data.batching import SampleKey
from recognizer.data.images.lines import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioRecord:
    """One utterance: a unique id, the audio file, its transcript and duration in seconds."""

    id: str
    path: Path
    text: str
    duration: float


def read_audio_manifest(path: str | Path) -> list[AudioRecord]:
    """Read a JSONL manifest with ``audio_filepath``, ``duration`` and ``text`` per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist: point data.train/val/test at a .jsonl audio manifest")

    def record(obj: dict) -> AudioRecord:
        audio, duration, text = obj["audio_filepath"], float(obj["duration"]), obj["text"]
        return AudioRecord(str(obj.get("id", audio)), path.parent / audio, str(text), duration)

    records = read_jsonl(path, record, "'audio_filepath', 'duration' and 'text'")
    if not records:
        raise DataError(f"manifest {path} lists no utterances")
    check_unique(records, path)
    return records


def filter_duration(
    records: list[AudioRecord],
    min_duration: float | None,
    max_duration: float | None,
    source: str,
    warn: bool = False,
) -> list[AudioRecord]:
    """Keep utterances with ``min_duration <= duration <= max_duration`` (seconds); log what was dropped.

    Args:
        warn: log the removal as a WARNING (for val/test: it changes what the metrics cover), else INFO.

    An utterance of unknown (NaN) duration, an unreadable file, is kept for the audit to report.
    """

    def within(duration: float) -> bool:
        if math.isnan(duration):
            return True
        return (min_duration is None or duration >= min_duration) and (max_duration is None or duration <= max_duration)

    kept = [r for r in records if within(r.duration)]
    if len(kept) < len(records):
        log.log(
            logging.WARNING if warn else logging.INFO,
            "%s: dropped %d of %d utterances outside data.min_duration=%s .. data.max_duration=%s s%s",
            source,
            len(records) - len(kept),
            len(records),
            min_duration,
            max_duration,
            "; they are not scored (counted as filtered/duration in audit.json and metrics.json)" if warn else "",
        )
    if not kept:
        raise DataError(
            f"{source}: no utterance is within data.min_duration={min_duration} .. data.max_duration={max_duration} s"
        )
    return kept


class AudioDataset(RecordDataset):
    """Utterances as log-mel features; items are ``{"id", "input": (1, n_mels, frames), "text"}``.

    Args:
        records: the utterances.
        features: the log-mel front end (it knows the sample rate and the hop).
        sample_rate: the model's audio rate in Hz.
        resample: resample files at another rate; if False such a file is a DataError.
        cache: keep computed features in memory (fp16) after their first load.
        pad_ms: silence (zeros) added before and after every recording, in ms: tightly trimmed
            recordings (FSDD's) are otherwise too short for a model's subsampled frames.
        augment: applied to items asked for by :class:`SampleKey` (the train loader), before the
            padding and the features; items asked for by a plain index, and :meth:`load`, are never
            augmented. With ``cache`` the waveforms are cached too (fp32: 64 kB per second of audio),
            and the features of augmented items are computed anew at every epoch.
        max_missing_ms: a WAV at most this much shorter than its header declares is read as the
            audio it holds instead of being a truncated file (see :func:`~recognizer.data.audio.reading.audio_info`).
    """

    def __init__(
        self,
        records: list[AudioRecord],
        features: LogMel,
        sample_rate: int,
        resample: bool = True,
        cache: bool = False,
        pad_ms: float = 0.0,
        augment: WaveAugment | None = None,
        max_missing_ms: float = 0.0,
    ) -> None:
        if pad_ms < 0:
            raise ValueError(f"data.pad_ms must be >= 0, got {pad_ms}")
        if max_missing_ms < 0:
            raise ValueError(f"data.max_missing_ms must be >= 0, got {max_missing_ms}")
        self.records = records
        self.features = features
        self.sample_rate = sample_rate
        self.resample = resample
        self.cache = cache
        self.pad = round(pad_ms * sample_rate / 1000)  # samples of silence on each side
        self.augment = augment
        self.max_missing_ms = max_missing_ms
        self._cache: dict[int, Tensor] = {}
        self._waves: dict[int, Tensor] = {}  # unpadded waveforms, kept for augmentation when caching
        self._rates: Counter[int] = Counter()  # recordings per file sample rate, counted while probing

    def _width(self, index: int) -> int:
        return self._frames(self.records[index])

    def _probe(self) -> list[int]:
        first = self._widths is None
        widths = super()._probe()
        if first:
            self._log_resampling()  # once per data set, after every header was read
        return widths

    def _log_resampling(self) -> None:
        """Say once per data set which rates are resampled (not once per file)."""
        other = {rate: n for rate, n in sorted(self._rates.items()) if rate != self.sample_rate}
        if other and self.resample:
            rates = ", ".join(f"{n} at {rate} Hz" for rate, n in other.items())
            log.info(
                "resampling %s of %d recordings (%s) to the model's %d Hz (polyphase; data.resample=true)",
                sum(other.values()),
                len(self.records),
                rates,
                self.sample_rate,
            )

    def _frames(self, r: AudioRecord) -> int:
        num_samples, rate = audio_info(r.path, self.max_missing_ms)
        self._rates[rate] += 1
        if num_samples == 0:
            raise DataError(
                f"audio {r.path} (utterance {r.id}) is empty (0 samples): remove it from the manifest", "empty_input"
            )
        if rate != self.sample_rate and not self.resample:
            raise DataError(
                f"audio {r.path} (utterance {r.id}) is sampled at {rate} Hz but the model expects "
                f"{self.sample_rate} Hz: set data.resample=true, or resample the file, or set data.sample_rate={rate}",
                "wrong_rate",
            )
        return self.features.num_frames(resampled_length(num_samples, rate, self.sample_rate) + 2 * self.pad)

    def load(self, index: int) -> Tensor:
        """The ``(1, n_mels, frames)`` fp32 features of utterance ``index`` (no augmentation)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached.float().unsqueeze(0)
        r = self.records[index]
        wave = read_audio(r.path, self.sample_rate, self.resample)
        if self.pad:
            wave = F.pad(wave, (self.pad, self.pad))
        x = self.features(wave)  # (n_mels, frames)
        if self._widths is not None and x.shape[-1] != self._widths[index]:
            raise DataError(
                f"audio {r.path} (utterance {r.id}) decodes to {x.shape[-1]} frames but its header "
                f"promised {self._widths[index]}: re-encode the file as WAV or FLAC",
                "truncated",
            )
        if self.cache:  # return the cached copy so the first epoch sees the same values as later ones
            self._cache[index] = x.half()
            return self.load(index)
        return x.unsqueeze(0)

    def wave(self, index: int) -> Tensor:
        """The ``(N,)`` fp32 waveform of utterance ``index`` at the model's rate, not padded."""
        cached = self._waves.get(index)
        if cached is not None:
            return cached
        wave = read_audio(self.records[index].path, self.sample_rate, self.resample)
        if self.cache:
            self._waves[index] = wave
        return wave

    def __getitem__(self, key: int | SampleKey) -> dict:
        """``{"id", "input": (1, n_mels, frames'), "text"}``; a :class:`SampleKey` augments (frames' >= frames)."""
        index = key.index if isinstance(key, SampleKey) else key
        r = self.records[index]
        if isinstance(key, SampleKey) and self.augment is not None:
            wave = self.augment(self.wave(index).numpy(), self.pad, key.seed, key.epoch, index)
            features = self.features(torch.from_numpy(wave)).unsqueeze(0)
        else:
            features = self.load(index)
        return {"id": r.id, "input": features, "text": r.text}
