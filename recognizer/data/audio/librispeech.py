"""The LibriSpeech directory layout: ``SUBSET/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` and one
``SPEAKER-CHAPTER.trans.txt`` per chapter (``UTT_ID TRANSCRIPT`` per line, upper case).

Nothing is downloaded: get the subsets from https://www.openslr.org/12 (``train-clean-100.tar.gz``,
``dev-clean.tar.gz``, ``test-clean.tar.gz``, ...), unpack them into one folder (the archives create
``LibriSpeech/<subset>/``) and point ``data.root`` at that ``LibriSpeech`` folder. Audio is FLAC,
read with soundfile (no FFmpeg needed).
"""

from __future__ import annotations

import re
from pathlib import Path

from recognizer.data.audio.reading import header_duration
from recognizer.data.audio.speech import AudioRecord
from recognizer.data.base import check_unique
from recognizer.data.images.lines import DataError

_SPACES = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool = True) -> str:
    """LibriSpeech normalisation: collapse whitespace, optionally lower-case (letters, ' and space remain)."""
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def read_librispeech(root: str | Path, subsets: list[str], lowercase: bool = True) -> list[AudioRecord]:
    """All utterances of ``subsets`` (e.g. ``["train-clean-100", "train-clean-360"]``) under ``root``.

    Durations come from the FLAC headers (NaN for an unreadable file: the audit reports it). Raises
    DataError naming the folder, transcript line or audio file that does not fit the layout.
    """
    root = Path(root)
    records: list[AudioRecord] = []
    for subset in subsets:
        folder = root / subset
        if not folder.is_dir():
            raise DataError(
                f"LibriSpeech subset {subset!r} not found at {folder}: download it from "
                "https://www.openslr.org/12, unpack it and set data.root to the LibriSpeech folder"
            )
        transcripts = sorted(folder.glob("*/*/*.trans.txt"))
        if not transcripts:
            raise DataError(f"{folder} has no SPEAKER/CHAPTER/*.trans.txt files: is it a LibriSpeech subset?")
        for trans in transcripts:
            records += _read_chapter(trans, lowercase)
    check_unique(records, root)
    return records


def _read_chapter(trans: Path, lowercase: bool) -> list[AudioRecord]:
    records = []
    for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, _, text = line.partition(" ")
        audio = trans.parent / f"{utt}.flac"
        if not audio.is_file():
            raise DataError(f"{trans}:{lineno}: utterance {utt} has no audio file {audio}")
        records.append(AudioRecord(utt, audio, normalize_text(text, lowercase), header_duration(audio)))
    return records
