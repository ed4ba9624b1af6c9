"""Reading audio with soundfile (WAV, FLAC, OGG, ... — no FFmpeg) and checking it on the way in.

Every failure raises :class:`~recognizer.data.images.lines.DataError` naming the file and the fix: a
missing, corrupt or unsupported file, one longer than :data:`MAX_AUDIO_SECONDS`, NaN/Inf samples, empty or
all-zero audio, and a sample rate that differs from the model's when resampling is off. Each carries the
audit's reason code, so the pre-flight audit drops and counts such files under
``stability.audit_policy=drop``. Clipping is only counted and logged (it degrades audio but does not break
the CTC contract).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from recognizer.data.images.lines import DataError

log = logging.getLogger(__name__)

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
#: The longest audio, in seconds, that recognizer decodes (utterances for CTC are seconds to minutes long):
#: the counterpart of the images' pixel limit. ``$RECOGNIZER_MAX_AUDIO_SECONDS`` raises it.
MAX_AUDIO_SECONDS = 3600.0
MAX_AUDIO_ENV = "RECOGNIZER_MAX_AUDIO_SECONDS"
#: Channels × sample rate read at most (8 channels at 48 kHz): with the seconds limit, what a file can make
#: recognizer hold (an hour of it is 5.5 GB of float32).
MAX_SAMPLES_PER_SECOND = 8 * 48_000
# bytes per sample of libsndfile's WAV subtypes: turns a truncated data chunk's missing bytes into ms
_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def audio_info(path: Path, max_missing_ms: float = 0.0) -> tuple[int, int]:
    """``(num_samples, sample_rate)`` from the file header, without decoding the audio.

    A WAV whose ``data`` chunk is shorter than its header declares is truncated (a DataError), unless
    at most ``max_missing_ms`` of audio are missing: then it counts as the audio it holds. Some
    corpora are published so (the Mboshi corpus: 78 files end 23 to 68 ms short of their headers).
    """
    if not path.is_file():
        raise DataError(
            f"audio file {path} does not exist: fix the path or remove it from the manifest", "missing_file"
        )
    if path.stat().st_size == 0:
        raise DataError(f"audio {path} is an empty file (0 bytes): remove it from the manifest", "empty_input")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(
            f"cannot read audio {path}: {e}. Supported formats are those of libsndfile "
            "(WAV, FLAC, OGG/Vorbis, MP3, ...); convert the file (e.g. to 16-bit FLAC) or remove it",
            "unreadable",
        ) from None
    missing = wav_missing_bytes(path)
    if missing:
        bytes_per_second = _SAMPLE_BYTES.get(info.subtype, 0) * info.channels * info.samplerate
        missing_ms = 1000 * missing / bytes_per_second if bytes_per_second else math.inf
        if missing_ms > max_missing_ms:
            raise DataError(
                f"audio {path} is truncated: its WAV header declares {missing} more bytes of audio than the file "
                "holds (an interrupted copy or download?): copy it again or remove it from the manifest, or, if "
                f"the corpus is published so, set data.max_missing_ms (now {max_missing_ms:g}) to at least "
                f"{math.ceil(missing_ms)} to read the audio it holds",
                "truncated",
            )
    return int(info.frames), int(info.samplerate)


def header_duration(path: Path, max_missing_ms: float = 0.0) -> float:
    """Seconds of audio in ``path`` from its header, or NaN when the file is missing, corrupt or truncated.

    Corpus readers list recordings with this: a bad file is not their call but the pre-flight
    audit's, which re-reads it with :func:`audio_info` and drops and counts it under
    ``stability.audit_policy=drop`` or stops with the error that names it under ``error``.
    """
    try:
        num_samples, rate = audio_info(path, max_missing_ms)
    except DataError:
        return math.nan
    return num_samples / rate


def wav_missing_bytes(path: Path) -> int:
    """For a RIFF/WAVE file, how many bytes of its ``data`` chunk are missing from the file (0 otherwise).

    libsndfile reads a cut WAV without complaint, as shorter audio, so the transcript would no
    longer match it; the header still declares the original size. Streaming writers that leave the
    size unknown (0 or 0xFFFFFFFF) are not taken for truncated.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return 0
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                if length in (0, 0xFFFFFFFF):
                    return 0
                return max(0, offset + 8 + length - size)
            offset += 8 + length + (length & 1)  # chunks are padded to an even length
    return 0


def resampled_length(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Exactly the length :func:`resample_wave` returns: ``ceil(n × new / orig)``."""
    if orig_rate == new_rate:
        return num_samples
    return -(-num_samples * new_rate // orig_rate)


def resample_wave(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a ``(N,)`` float32 waveform with a polyphase filter; ``resampled_length(N, ...)`` samples.

    scipy's polyphase filter is ~25× faster than torchaudio's windowed sinc for ratios like 441:320
    and as good for speech; the embedded spoken digits are resampled the same way.
    """
    from scipy.signal import resample_poly

    g = math.gcd(orig_rate, new_rate)
    return resample_poly(wave, new_rate // g, orig_rate // g).astype(np.float32)


def max_audio_seconds() -> float:
    """The length limit in force: ``$RECOGNIZER_MAX_AUDIO_SECONDS`` if set, else :data:`MAX_AUDIO_SECONDS`."""
    value = os.environ.get(MAX_AUDIO_ENV, "").strip()
    if not value:
        return MAX_AUDIO_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"{MAX_AUDIO_ENV}={os.environ[MAX_AUDIO_ENV]!r}: expected a positive number of seconds")
    return seconds


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """``(samples (N, channels) float32, rate)``, at most :func:`max_audio_seconds` of them: a longer file is
    refused (reason ``too_large``) after reading one sample past the limit, never decoded whole (a few kB of
    FLAC can hold hours of one value, and its header need not say how long it is)."""
    try:
        with sf.SoundFile(str(path)) as f:
            seconds = max_audio_seconds()
            rate, limit = f.samplerate, math.ceil(seconds * f.samplerate)
            if f.channels * rate > MAX_SAMPLES_PER_SECOND:  # the seconds limit bounds memory only below this
                raise DataError(
                    f"audio {path} has {f.channels} channel(s) at {rate} Hz, over the {MAX_SAMPLES_PER_SECOND:,} "
                    "samples a second recognizer reads: convert it to mono at the model's rate (e.g. 16 kHz)",
                    "too_large",
                )
            samples = f.read(limit + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        if not path.is_file():
            raise DataError(
                f"audio file {path} does not exist: fix the path or remove it from the manifest", "missing_file"
            ) from None
        raise DataError(
            f"cannot read audio {path}: {e}. Convert it (e.g. to 16-bit FLAC) or remove it", "unreadable"
        ) from None
    if len(samples) > limit:
        raise DataError(
            f"audio {path} is longer than {seconds:g} s: refused before decoding it all. If it is a "
            f"genuine recording, cut it into utterances, or raise the limit with the environment variable "
            f"{MAX_AUDIO_ENV}=SECONDS",
            "too_large",
        )
    return samples, rate


def read_audio(path: Path, sample_rate: int, resample: bool = True) -> Tensor:
    """Decode ``path`` to a mono ``(N,)`` float32 waveform at ``sample_rate`` in [-1, 1], checked.

    Multi-channel audio is averaged to mono. Raises DataError for unreadable, empty, silent or
    non-finite audio, and for a rate mismatch when ``resample`` is False.
    """
    samples, rate = _decode(path)
    wave = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(wave).all():
        n = int((~np.isfinite(wave)).sum())
        raise DataError(
            f"audio {path} has {n} non-finite sample(s) (NaN/Inf): fix or remove the file; "
            "non-finite inputs make the CTC loss NaN",
            "non_finite",
        )
    if wave.size == 0:
        raise DataError(f"audio {path} is empty (0 samples): remove it from the manifest", "empty_input")
    if not np.any(wave):
        raise DataError(
            f"audio {path} is silent (all {wave.size} samples are 0): remove it from the manifest", "silent"
        )
    clipped = int((np.abs(wave) >= CLIP_LEVEL).sum())
    if clipped:
        log.warning("audio %s: %d of %d samples are clipped (|x| >= %g)", path, clipped, wave.size, CLIP_LEVEL)
    if rate != sample_rate:
        if not resample:
            raise DataError(
                f"audio {path} is sampled at {rate} Hz but the model expects {sample_rate} Hz: set "
                f"data.resample=true, or resample the file, or set data.sample_rate={rate}",
                "wrong_rate",
            )
        wave = resample_wave(wave, rate, sample_rate)  # length: resampled_length(N, rate, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(wave))
