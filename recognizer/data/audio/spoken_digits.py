"""Embedded speech data: digit strings spoken as words, synthesised offline with eSpeak NG.

Each utterance is 1..``max_digits`` digits read as words and transcribed as words ("four seven
two": letters and space, as in real ASR, so WER counts words). eSpeak NG comes from the
``espeakng-loader`` wheel, which bundles the shared library and its data; it is driven through
ctypes and returns 22,050 Hz int16 audio. Per utterance the English accent (language), the voice
variant, the rate, pitch, word gap, leading/trailing silence and the white-noise SNR are drawn at
random; the test split uses voice variants that train and validation never hear.

The corpus is written in the audio-manifest layout (``{split}/*.flac`` + ``{split}.jsonl`` with
``audio_filepath``, ``duration``, ``text``) that :mod:`recognizer.data.audio.speech` reads for users'
own data. eSpeak's output depends on the history of calls in a process, so each split is
generated in a fresh Python process in a fixed order: the same settings give the same audio.
A finished split is marked by its manifest, written last (atomically).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from recognizer.data.base import generation_lock, write_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_RATE = 22050  # eSpeak NG's synthesis rate (Hz)
MIN_SECONDS_PER_CHAR = 0.09  # 9 frames of 10 ms per symbol → 2.25 frames per symbol after 4× subsampling
LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
TRAIN_VARIANTS = ("m1", "m2", "m4", "m5", "m6", "f1", "f3", "f4", "klatt", "klatt3", "adam", "linda", "robert", "steph")
TEST_VARIANTS = ("m3", "m7", "f2", "f5", "klatt2", "paul", "ed")  # held out: never in train/val

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_RATE, _PITCH, _WORDGAP = 1, 3, 7
_CHARS_UTF8, _POS_CHARACTER = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class ESpeak:
    """eSpeak NG through ctypes: ``synth(text, voice, rate, pitch, word_gap)`` → int16 samples at 22,050 Hz.

    Only one instance per process: the library keeps global state.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise RuntimeError(
                "the spoken_digits data set needs eSpeak NG from the espeakng-loader wheel: "
                "pip install espeakng-loader (it is a dependency of recognizer; reinstall with pip install -e .)"
            ) from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"eSpeak NG initialisation failed (returned {rate}) with data at {data.decode()}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the library calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def synth(self, text: str, voice: str, rate: int, pitch: int, word_gap: int) -> np.ndarray:
        """Speak ``text``; ``rate`` in words per minute, ``pitch`` 0..100, ``word_gap`` in 10 ms units."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_WORDGAP, word_gap)):
            self.lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        encoded = text.encode() + b"\0"
        self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def utterance_plan(rng: np.random.Generator, split: str, max_digits: int) -> dict:
    """Draw one utterance's text and voice settings (the test split uses held-out variants)."""
    digits = rng.integers(0, 10, size=int(rng.integers(1, max_digits + 1)))
    variants = TEST_VARIANTS if split == "test" else TRAIN_VARIANTS
    return {
        "text": " ".join(WORDS[d] for d in digits),
        "voice": f"{LANGUAGES[rng.integers(len(LANGUAGES))]}+{variants[rng.integers(len(variants))]}",
        "rate": int(rng.integers(100, 161)),  # words per minute (eSpeak's default 175 is brisk)
        "pitch": int(rng.integers(25, 76)),
        "word_gap": int(rng.integers(0, 8)),  # extra pause between words, 10 ms units
        "lead": float(rng.uniform(0.1, 0.35)),  # seconds of silence before and after
        "trail": float(rng.uniform(0.1, 0.35)),
        "snr_db": float(rng.uniform(10.0, 35.0)),
        "gain": float(rng.uniform(0.3, 0.9)),  # peak level
    }


def render(engine: ESpeak, plan: dict, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Synthesise a plan to float32 samples in [-1, 1] at ``sample_rate`` with silence and noise."""
    from recognizer.data.audio.reading import resample_wave  # polyphase, as recognizer resamples users' files

    speech = engine.synth(plan["text"], plan["voice"], plan["rate"], plan["pitch"], plan["word_gap"])
    x = speech.astype(np.float32) / 32768.0
    if sample_rate != ESPEAK_RATE:
        x = resample_wave(x, ESPEAK_RATE, sample_rate)
    # Trailing silence brings fast utterances to at least MIN_SECONDS_PER_CHAR per transcript symbol,
    # so that 4× subsampling leaves >= 2 frames per label (the audit's safety rule).
    lead = round(plan["lead"] * sample_rate)
    need = round(MIN_SECONDS_PER_CHAR * len(plan["text"]) * sample_rate)
    trail = max(round(plan["trail"] * sample_rate), need - lead - len(x))
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    x *= plan["gain"] / max(float(np.abs(x).max()), 1e-6)
    power = float(np.mean(x**2))
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (plan["snr_db"] / 10)), size=x.shape).astype(np.float32)
    return np.clip(x + noise, -1.0, 1.0)


def generate_split(root: Path, split: str, num: int, max_digits: int, sample_rate: int, seed: int) -> Path:
    """Write ``root/split/*.flac`` and ``root/split.jsonl`` (call in a fresh process); return the manifest."""
    import soundfile as sf

    engine = ESpeak()
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num):
        plan = utterance_plan(rng, split, max_digits)
        audio = render(engine, plan, rng, sample_rate)
        name = f"{split}/{split}-{i:06d}.flac"
        sf.write(root / name, audio, sample_rate, subtype="PCM_16")
        row = {"audio_filepath": name, "duration": round(len(audio) / sample_rate, 4), "text": plan["text"]}
        rows.append(json.dumps(row | {"voice": plan["voice"]}))
    return write_manifest(root / f"{split}.jsonl", rows)


def spoken_digits_manifests(
    root: str | Path, sizes: dict[str, int], max_digits: int = 5, sample_rate: int = 16000, seed: int = 0
) -> dict[str, Path]:
    """Where :func:`ensure_spoken_digits` keeps each split's manifest for these settings (existing or not)."""
    tag = f"sr{sample_rate}_d{max_digits}_s{seed}_" + "_".join(f"{s}{sizes[s]}" for s in SPLITS)
    return {split: Path(root) / tag / f"{split}.jsonl" for split in SPLITS}


def ensure_spoken_digits(
    root: str | Path,
    sizes: dict[str, int],
    max_digits: int = 5,
    sample_rate: int = 16000,
    seed: int = 0,
) -> dict[str, Path]:
    """Generate the missing splits under a folder named by the settings, each in a fresh process.

    Returns the JSONL manifest of every split. The folder name encodes every setting, so changing
    one never reuses a stale cache.
    """
    manifests = spoken_digits_manifests(root, sizes, max_digits, sample_rate, seed)
    base = manifests["train"].parent
    missing = [s for s in SPLITS if sizes[s] > 0 and not manifests[s].is_file()]
    if not missing:
        return manifests
    with generation_lock(base):  # parallel jobs on an empty cache: one synthesises, the others wait
        for split in missing:
            if manifests[split].is_file():  # written by the job that held the lock before us
                continue
            log.info("synthesising %d %s utterances of spoken digits into %s", sizes[split], split, base)
            # Run this file as a script: a fresh interpreter that imports neither torch nor the package.
            cmd = [sys.executable, str(Path(__file__).resolve()), str(base), split]
            cmd += [str(sizes[split]), str(max_digits), str(sample_rate), str(seed)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"generating the {split} split of spoken digits failed:\n{done.stderr[-2000:]}")
    return manifests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate one split of spoken digits (fresh process).")
    for name, kind in (
        ("root", Path),
        ("split", str),
        ("num", int),
        ("max_digits", int),
        ("sample_rate", int),
        ("seed", int),
    ):
        parser.add_argument(name, type=kind)
    a = parser.parse_args(argv)
    generate_split(a.root, a.split, a.num, a.max_digits, a.sample_rate, a.seed)


if __name__ == "__main__":
    main()
