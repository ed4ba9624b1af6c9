"""Data sets: embedded handwritten digit lines and spoken digits; users' line images, ALTO/PAGE pages,
audio manifests, audio folders with sidecar transcripts, FSDD and LibriSpeech copies."""

from recognizer.data.modules import DigitLinesData, LinesData
from recognizer.data.pages import PagesData
from recognizer.data.speech_modules import (
    AudioFolderData,
    AudioManifestData,
    FSDDData,
    LibriSpeechData,
    SpokenDigitsData,
)

__all__ = [
    "AudioFolderData",
    "AudioManifestData",
    "DigitLinesData",
    "FSDDData",
    "LibriSpeechData",
    "LinesData",
    "PagesData",
    "SpokenDigitsData",
]
