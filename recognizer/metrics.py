"""Character and word error rates, accumulated as edit counts (exact over any number of batches)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance between two sequences (unit costs)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def nfc(text: str) -> str:
    """``text`` in Unicode NFC: the form in which references and hypotheses are scored."""
    return unicodedata.normalize("NFC", text)


class ErrorRates:
    """Accumulates character and word edits against reference lengths.

    CER = char edits / reference chars; WER = word edits / reference words (words split on
    whitespace). An empty reference counts its hypothesis length as errors. Both sides are compared in
    Unicode NFC (:func:`nfc`), the form transcripts are encoded in: a decomposed ``é`` in a manifest is
    one character, as the model reads it.
    """

    def __init__(self) -> None:
        self.char_errors = self.chars = self.word_errors = self.words = 0

    def update(self, references: Sequence[str], hypotheses: Sequence[str]) -> None:
        for ref, hyp in zip(references, hypotheses, strict=True):
            ref, hyp = nfc(ref), nfc(hyp)
            self.char_errors += edit_distance(ref, hyp)
            self.chars += len(ref)
            self.word_errors += edit_distance(ref.split(), hyp.split())
            self.words += len(ref.split())

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.chars, 1)

    @property
    def wer(self) -> float:
        return self.word_errors / max(self.words, 1)
