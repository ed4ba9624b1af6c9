"""Data sets, one folder per kind of input: ``images/`` (line-image manifests, the embedded digit
lines), ``pages/`` (ALTO/PAGE XML with their scans) and ``audio/`` (manifests, sidecar folders, FSDD,
LibriSpeech, the embedded spoken digits). Shared by all: ``base`` (the record data set, DataError) and
``batching`` (length-bucketed batches, padding, keyed samples for augmentation)."""

from recognizer.data.audio.modules import (
    AudioFolderData,
    AudioManifestData,
    FSDDData,
    LibriSpeechData,
    MboshiData,
    SpokenDigitsData,
)
from recognizer.data.images.modules import DigitLinesData, LinesData
from recognizer.data.pages import PagesData

__all__ = [
    "AudioFolderData",
    "AudioManifestData",
    "DigitLinesData",
    "FSDDData",
    "LibriSpeechData",
    "LinesData",
    "MboshiData",
    "PagesData",
    "SpokenDigitsData",
]
