"""Data sets: embedded handwritten digit lines and users' line images."""

from recognizer.data.modules import DigitLinesData, LinesData

__all__ = ["DigitLinesData", "LinesData"]
