"""Data sets: embedded handwritten digit lines and spoken digits; users' line images, ALTO/PAGE pages,
audio manifests and LibriSpeech copies."""

from recognizer.data.modules import DigitLinesData, LinesData
from recognizer.data.pages import PagesData
from recognizer.data.speech_modules import AudioManifestData, LibriSpeechData, SpokenDigitsData

__all__ = ["AudioManifestData", "DigitLinesData", "LibriSpeechData", "LinesData", "PagesData", "SpokenDigitsData"]
