"""Speech features: log-mel spectrograms with per-utterance normalisation, and SpecAugment.

Features are always computed in fp32, outside any autocast region: fp16 overflows in the power
spectrum of loud audio (a known source of NaN losses).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torchaudio.transforms as T
from torch import Tensor, nn

if TYPE_CHECKING:
    from recognizer.data.batching import Batch

NORMALIZE = ("per_feature", "utterance", "none")

#: The data settings that define the front end, in :class:`LogMel`'s argument order. Checkpoints
#: store them under ``data``; a key missing there (a checkpoint older than the key) takes its default.
FEATURE_KEYS = ("sample_rate", "n_mels", "win_ms", "hop_ms", "n_fft", "log_floor", "normalize", "top_db")


class LogMel(nn.Module):
    """Waveform ``(N,)`` → log-mel features ``(n_mels, frames)`` with ``frames = 1 + N // hop``.

    Args:
        sample_rate: audio rate in Hz.
        n_mels: mel bins (the model's input height).
        win_ms: analysis window in milliseconds.
        hop_ms: frame shift in milliseconds.
        n_fft: FFT size; ``None`` → the next power of two >= the window.
        log_floor: the power is clamped to at least this before the log (digital silence).
        normalize: ``per_feature`` (each mel bin to zero mean, unit variance over the utterance),
            ``utterance`` (one mean/std per utterance) or ``none``. Padding with 0 then equals the mean.
        top_db: dynamic range kept below the utterance's loudest mel bin, in dB (``None``: no limit).
            Quieter bins, digital silence included, are raised to that level, so the features no
            longer depend on the recording's gain: without it, the step from a quiet voice to
            zero padding (``log_floor``) is ~20 dB smaller than from a loud one (FSDD's speakers).
            Whisper keeps 80 dB this way.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int | None = None,
        log_floor: float = 1e-6,
        normalize: str = "per_feature",
        top_db: float | None = None,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if top_db is not None and not top_db > 0:
            raise ValueError(f"data.top_db must be > 0 dB or null, got {top_db}")
        self.win_length = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        if self.hop_length < 1 or self.win_length < self.hop_length:
            raise ValueError(f"need 1 <= hop ({hop_ms} ms) <= window ({win_ms} ms) at {sample_rate} Hz")
        n_fft = n_fft or 1 << (self.win_length - 1).bit_length()
        if n_fft < self.win_length:
            raise ValueError(f"n_fft={n_fft} is smaller than the window ({self.win_length} samples)")
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=n_mels,
            center=True,
            pad_mode="constant",  # reflection needs more samples than half a window; zeros work always
            power=2.0,
        )
        self.log_floor = log_floor
        self.normalize = normalize
        self.top_range = None if top_db is None else top_db * math.log(10) / 10  # in natural-log units

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> LogMel:
        """The front end a (checkpoint's) data config describes (see :func:`feature_settings`)."""
        return cls(**feature_settings(data))

    def num_frames(self, num_samples: int) -> int:
        """Exact frame count for ``num_samples`` samples (centred frames)."""
        return 1 + num_samples // self.hop_length

    @torch.no_grad()
    def forward(self, wave: Tensor) -> Tensor:
        """``(N,)`` samples → ``(n_mels, 1 + N // hop)`` fp32 features."""
        threads = torch.get_num_threads()
        if wave.device.type == "cpu" and threads > 1:
            # One utterance is too small to split across threads; on a busy CPU the thread pool
            # makes these calls ~8× slower (measured on 2 shared cores).
            torch.set_num_threads(1)
        try:
            with torch.autocast(wave.device.type, enabled=False):
                x = torch.log(self.mel(wave.float()).clamp(min=self.log_floor))
        finally:
            torch.set_num_threads(threads)
        if self.top_range is not None:
            x = torch.maximum(x, x.max() - self.top_range)
        if self.normalize == "per_feature":
            x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True, unbiased=False) + 1e-5)
        elif self.normalize == "utterance":
            x = (x - x.mean()) / (x.std(unbiased=False) + 1e-5)
        return x


def feature_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every :data:`FEATURE_KEYS` setting of a (checkpoint's) data config; a key it lacks (a checkpoint
    older than the key) takes :class:`LogMel`'s default, the value that checkpoint was trained with."""
    defaults = inspect.signature(LogMel).parameters
    return {key: data[key] if key in data else defaults[key].default for key in FEATURE_KEYS}


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019) on one ``(n_mels, frames)`` feature map, or on
    the train batches (:meth:`batch`).

    Masked values are 0, the mean of normalised features. Training masks whole batches in the main
    process, between the loader and the step (as NeMo masks in the model's forward), never in loader
    workers: the masks draw from the global torch RNG, which is seeded per run and rank and saved in
    checkpoints, so a resumed run draws the same masks whatever ``data.num_workers`` is.

    Args:
        freq_masks: number of frequency masks.
        freq_width: maximum width of each frequency mask (mel bins).
        time_masks: number of time masks.
        time_width: maximum width of each time mask (frames).
        time_ratio: a time mask covers at most this fraction of the utterance (short ones too).
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 15,
        time_masks: int = 2,
        time_width: int = 25,
        time_ratio: float = 0.05,
    ) -> None:
        super().__init__()
        self.freq = nn.ModuleList(T.FrequencyMasking(freq_width) for _ in range(freq_masks))
        self.time = nn.ModuleList(T.TimeMasking(time_width, p=time_ratio) for _ in range(time_masks))

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        x = features.unsqueeze(0)  # torchaudio's maskers take (..., freq, time)
        for mask in [*self.freq, *self.time]:
            x = mask(x)
        return x.squeeze(0)

    @torch.no_grad()
    def batch(self, batch: Batch) -> Batch:
        """Mask every utterance of a padded ``(B, 1, n_mels, T)`` batch within its own length.

        Time masks are drawn inside the real frames (``time_ratio`` of the utterance, not of the
        padded batch), so short utterances in a long batch are masked as much as when alone.
        """
        inputs = batch.inputs.clone()
        for i, n in enumerate(batch.input_lengths.tolist()):
            inputs[i, 0, :, :n] = self(inputs[i, 0, :, :n])
        return dataclasses.replace(batch, inputs=inputs)
