"""Recognition models. Each returns ``(B, T, C)`` logits and ``(B,)`` output lengths and knows
``output_lengths(input_lengths)`` exactly, so feasibility can be audited before training."""

from recognizer.models.base import Recognizer
from recognizer.models.conformer import ConformerCTC
from recognizer.models.crnn import CRNN

__all__ = ["CRNN", "ConformerCTC", "Recognizer"]
