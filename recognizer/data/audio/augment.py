"""Augmentation of training recordings on the waveform, drawn per (seed, epoch, sample).

Two perturbations that SpecAugment (masking on the features, :mod:`recognizer.data.audio.features`)
cannot make:

- **speed**: the recording played faster or slower by resampling (tempo, pitch and formants move
  together, like a shorter or longer vocal tract: Ko et al., 2015, "Audio augmentation for speech
  recognition"); the usual cure for a model that has heard few voices;
- **noise**: white noise at a random signal-to-noise ratio over the whole padded clip (its silence
  too), for other microphones and rooms.

Gain is left out: the per-utterance normalisation of the log-mel features (``data.normalize``)
removes a constant gain exactly, except where the power is under ``data.log_floor`` (digital
silence, e.g. ``data.pad_ms`` padding); ``data.top_db`` makes that floor follow the gain too.

The width never shrinks, as for augmented line images: a sped-up recording gets the samples it lost
back as silence (split at random between its two ends, a small time shift), so its frame count is
never below the one the pre-flight audit checked from the header. A slowed-down one is longer, which
only gives CTC more frames.

The generator is :func:`~recognizer.data.images.augment.augment_rng` ``(seed, epoch, index)``: the same
utterance in the same epoch of the same run gets the same draw in whichever loader worker loads it,
and a resumed run repeats the interrupted one. Only numpy and scipy (single-threaded) compute.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import resample_poly

from recognizer.data.images.augment import augment_rng

__all__ = ["SPEED_STEPS", "WaveAugment", "change_speed"]

SPEED_STEPS = 100  # speed factors are multiples of 1/SPEED_STEPS: polyphase ratios stay small (up = 100)


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"data.wave_augment.{name} must be in [{low:g}, {high:g}], got {value:g}")


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """``(N,)`` samples played ``factor`` times as fast (rounded to 1/SPEED_STEPS): ``ceil(N / factor)`` samples."""
    steps = round(factor * SPEED_STEPS)
    if steps == SPEED_STEPS:
        return wave
    return resample_poly(wave, SPEED_STEPS, steps).astype(np.float32)


class WaveAugment:
    """Speed perturbation and additive white noise for one ``(N,)`` float32 waveform.

    Args:
        enabled: False leaves the data module without augmentation (the config's switch).
        speed: the speed factor is drawn in ``[1 - speed, 1 + speed]`` (in steps of 0.01) for every
            utterance; 0 = off. 1.1 plays 10% faster: 9% fewer samples, pitch 10% higher.
        noise_p: probability of adding noise to an utterance.
        snr_db: ``[low, high]`` signal-to-noise ratio of that noise in dB, drawn uniformly; the
            signal's power is the recording's own (before padding).
    """

    def __init__(
        self,
        enabled: bool = False,
        speed: float = 0.1,
        noise_p: float = 0.5,
        snr_db: tuple[float, float] = (10.0, 40.0),
    ) -> None:
        _check("speed", speed, 0.0, 0.5)
        _check("noise_p", noise_p, 0.0, 1.0)
        low, high = float(snr_db[0]), float(snr_db[1])
        if not -20.0 <= low <= high <= 100.0:
            raise ValueError(
                f"data.wave_augment.snr_db must be [low, high] with -20 <= low <= high <= 100, got {list(snr_db)}"
            )
        self.enabled = enabled
        self.speed = speed
        self.noise_p = noise_p
        self.snr_db = (low, high)

    def __call__(self, wave: np.ndarray, pad: int, seed: int, epoch: int, index: int) -> np.ndarray:
        """Perturb one recording and pad it with ``pad`` samples of silence each side.

        Args:
            wave: ``(N,)`` float32 samples at the model's rate, not padded.
            pad: silence (samples) on each side, as the dataset pads unaugmented recordings.
            seed, epoch, index: the draw's key (:func:`~recognizer.data.images.augment.augment_rng`).

        Returns:
            ``(M,)`` float32 samples, ``M >= N + 2 * pad``.
        """
        rng = augment_rng(seed, epoch, index)
        n = wave.shape[0]
        wave = change_speed(wave, rng.uniform(1.0 - self.speed, 1.0 + self.speed))
        lost = max(0, n - wave.shape[0])  # a faster recording gets its lost samples back as silence
        left = int(rng.integers(0, lost + 1))
        out = np.pad(wave, (pad + left, pad + lost - left))
        if rng.random() < self.noise_p:
            power = float(np.mean(np.square(wave, dtype=np.float64)))
            snr = rng.uniform(*self.snr_db)
            std = math.sqrt(power / 10.0 ** (snr / 10.0))
            out = out + rng.normal(0.0, std, size=out.shape).astype(np.float32)
        return out.astype(np.float32, copy=False)
