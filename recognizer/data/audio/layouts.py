"""Speech corpora in their own layouts, read as they are (no conversion step).

- A folder of recordings with a sidecar transcript per file (the audio counterpart of kraken's
  ``NAME.png`` + ``NAME.gt.txt``): ``NAME.wav`` + ``NAME.txt``, or Mboshi's ``NAME.wav`` +
  ``NAME.mb.cleaned``; the transcript extension is configurable.
- The Free Spoken Digit Dataset (FSDD, https://github.com/Jakobovski/free-spoken-digit-dataset):
  ``recordings/{digit}_{speaker}_{index}.wav``, the label in the file name. Its README's split puts
  indices 0–4 of every speaker and digit in test; the held-out-speaker split tests on one speaker
  that train and validation never hear.

Both return :class:`~recognizer.data.audio.speech.AudioRecord` lists that the shared
:class:`~recognizer.data.audio.speech.AudioDataset` turns into features, with every audio check it makes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from recognizer.data.audio.reading import header_duration
from recognizer.data.audio.speech import AudioRecord
from recognizer.data.audio.spoken_digits import WORDS
from recognizer.data.base import DataError, check_unique

_SPACES = re.compile(r"\s+")
FSDD_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z0-9-]+)_(?P<index>[0-9]+)\.wav$")
FSDD_SCHEMES = ("standard", "speaker")
FSDD_TEST_INDICES = range(5)  # the dataset README: "Recordings numbered 0-4 (inclusive) are in the test"


def read_sidecar_folder(
    folder: str | Path, audio_ext: str = ".wav", transcript_ext: str = ".txt", max_missing_ms: float = 0.0
) -> list[AudioRecord]:
    """Every ``NAME{audio_ext}`` under ``folder`` (recursively) with its transcript ``NAME{transcript_ext}``.

    Ids are the paths relative to ``folder`` without the audio extension; whitespace in a transcript
    (line breaks included) collapses to single spaces. Durations come from the audio headers; a WAV
    up to ``max_missing_ms`` shorter than its header declares counts as the audio it holds; an
    unreadable or truncated file gets a NaN duration and is left to the audit (dropped and counted
    under ``stability.audit_policy=drop``).

    Raises:
        DataError: the folder is missing or holds no ``*{audio_ext}``, or a recording has no transcript.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"audio folder {folder} does not exist: point data.train/val/test at a folder of recordings")
    records = []
    for audio in sorted(folder.rglob(f"*{audio_ext}")):
        stem = str(audio.relative_to(folder))[: -len(audio_ext)]
        sidecar = folder / f"{stem}{transcript_ext}"
        if not sidecar.is_file():
            raise DataError(
                f"{audio} has no transcript {sidecar}: write one beside it, remove the recording, or set "
                f"data.transcript_ext to the transcripts' extension (now {transcript_ext!r})"
            )
        text = _SPACES.sub(" ", sidecar.read_text(encoding="utf-8-sig")).strip()
        records.append(AudioRecord(stem, audio, text, header_duration(audio, max_missing_ms)))
    if not records:
        raise DataError(
            f"folder {folder} holds no *{audio_ext} recordings: set data.audio_ext to your files' extension"
        )
    check_unique(records, folder)
    return records


def fsdd_split(scheme: str, speaker: str, index: int, test_speaker: str, val_indices: range) -> str:
    """The split (train | val | test) of one FSDD recording.

    ``standard``: indices 0–4 are test (the dataset's split), ``val_indices`` of the rest are val.
    ``speaker``: every recording of ``test_speaker`` is test, ``val_indices`` of the others are val.
    """
    if scheme == "standard":
        if index in FSDD_TEST_INDICES:
            return "test"
    elif speaker == test_speaker:
        return "test"
    return "val" if index in val_indices else "train"


def read_fsdd(
    root: str | Path,
    split: str,
    scheme: str = "standard",
    test_speaker: str = "theo",
    val_indices: tuple[int, int] = (5, 9),
) -> list[AudioRecord]:
    """The FSDD recordings of ``split``, each transcribed as its digit's word ("seven").

    Args:
        root: the FSDD checkout (it holds ``recordings/``).
        split: train | val | test.
        scheme: ``standard`` (test = indices 0–4 of every speaker) or ``speaker`` (test = ``test_speaker``).
        test_speaker: the held-out speaker of the ``speaker`` scheme.
        val_indices: first and last index (inclusive) that go to val instead of train.

    Raises:
        DataError: no ``recordings/`` folder, a file name outside the layout, an unknown speaker,
            val indices that overlap the standard test indices, or an empty split.
    """
    if scheme not in FSDD_SCHEMES:
        raise DataError(f"data.scheme must be one of {FSDD_SCHEMES}, got {scheme!r}")
    first, last = val_indices
    val = range(first, last + 1)
    if scheme == "standard" and set(val) & set(FSDD_TEST_INDICES):
        raise DataError(
            f"data.val_indices={list(val_indices)} overlap the standard test indices 0-4: choose indices from 5 on"
        )
    folder = Path(root) / "recordings"
    if not folder.is_dir():
        raise DataError(
            f"FSDD recordings not found at {folder}: clone https://github.com/Jakobovski/free-spoken-digit-dataset "
            "and set data.root to the checkout"
        )
    records, speakers = [], set()
    for wav in sorted(folder.glob("*.wav")):
        m = FSDD_NAME.match(wav.name)
        if m is None:
            raise DataError(
                f"{wav} does not follow FSDD's {{digit}}_{{speaker}}_{{index}}.wav naming: rename or remove it"
            )
        speakers.add(m["speaker"])
        if fsdd_split(scheme, m["speaker"], int(m["index"]), test_speaker, val) != split:
            continue
        records.append(AudioRecord(wav.stem, wav, WORDS[int(m["digit"])], header_duration(wav)))
    if scheme == "speaker" and test_speaker not in speakers:
        raise DataError(
            f"data.test_speaker={test_speaker!r} is not an FSDD speaker; the speakers are {sorted(speakers)}"
        )
    if not records:
        raise DataError(f"FSDD at {folder}: the {split} split of scheme={scheme} is empty")
    return records


MBOSHI_SCHEMES = ("utterance", "speaker")


def mboshi_speaker(record: AudioRecord) -> str:
    """The speaker of a Mboshi recording: the first ``_`` field of its name (``abiayi_2015-09-08-..._1``)."""
    return Path(record.id).name.split("_")[0]


def check_mboshi_options(scheme: str, val_fraction: float) -> None:
    if scheme not in MBOSHI_SCHEMES:
        raise ValueError(f"data.scheme must be one of {', '.join(MBOSHI_SCHEMES)}, got {scheme!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")


def split_mboshi(
    train: list[AudioRecord],
    dev: list[AudioRecord],
    scheme: str = "utterance",
    val_fraction: float = 0.1,
    test_speaker: str = "martial",
    seed: int = 0,
) -> dict[str, list[AudioRecord]]:
    """The Mboshi corpus's splits, with validation never drawn from what is scored as test.

    ``utterance``: test is the corpus's ``dev`` (514 sentences); validation is ``val_fraction`` of the
    ``train`` sentences, drawn by ``seed``; train is the rest. ``speaker``: test is every sentence of
    ``test_speaker`` (train and dev folders together); validation is ``val_fraction`` of the other two
    speakers' sentences, drawn by ``seed``; train is the rest (the published speaker-held-out setting
    trains on two speakers and tests on the third).

    Raises:
        ValueError: an unknown scheme, a fraction outside (0, 1), or a test speaker with no sentence.
    """
    check_mboshi_options(scheme, val_fraction)
    if scheme == "utterance":
        test, pool = list(dev), list(train)
    else:
        everything = [*train, *dev]
        speakers = sorted({mboshi_speaker(r) for r in everything})
        if test_speaker not in speakers:
            raise ValueError(f"data.test_speaker={test_speaker!r} has no recording; the speakers are {speakers}")
        test = [r for r in everything if mboshi_speaker(r) == test_speaker]
        pool = [r for r in everything if mboshi_speaker(r) != test_speaker]
    pool.sort(key=lambda r: r.id)
    rng = np.random.default_rng(seed)
    n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)  # both splits keep a sentence
    val_ids = {pool[i].id for i in rng.permutation(len(pool))[:n_val]}
    return {
        "train": [r for r in pool if r.id not in val_ids],
        "val": [r for r in pool if r.id in val_ids],
        "test": test,
    }
