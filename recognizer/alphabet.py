"""Charset ↔ label ids. Id 0 is reserved for the CTC blank; symbols are ids 1..len(symbols)."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from recognizer.ctc import BLANK, num_classes_for

UNK = "<unk>"


class UnknownSymbolError(ValueError):
    """A transcript contains a symbol that the alphabet does not know."""


class Alphabet:
    """An ordered set of symbols (single characters, plus optionally the ``<unk>`` token).

    Args:
        symbols: the symbols in id order; id ``i + 1`` is ``symbols[i]``.
    """

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols: list[str] = list(symbols)
        if len(set(self.symbols)) != len(self.symbols):
            dupes = [s for s, n in Counter(self.symbols).items() if n > 1]
            raise ValueError(f"alphabet has duplicate symbols: {dupes}")
        for s in self.symbols:
            if s != UNK and len(s) != 1:
                raise ValueError(f"alphabet symbols must be single characters, got {s!r}")
        self._ids = {s: i + 1 for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], with_unk: bool = False) -> Alphabet:
        """The sorted set of characters seen in ``texts`` (``<unk>`` last when asked for)."""
        chars = sorted({c for t in texts for c in normalize(t)})
        return cls(chars + ([UNK] if with_unk else []))

    @classmethod
    def from_file(cls, path: str | Path) -> Alphabet:
        """One symbol per line, UTF-8; a line ``<space>`` stands for the space character."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"alphabet file {path} does not exist")
        # split on "\n" only: str.splitlines() also breaks on U+2028, U+0085, ... which are symbols
        lines = [s.removesuffix("\r") for s in path.read_text(encoding="utf-8").split("\n")]
        return cls(" " if s == "<space>" else s for s in lines if s != "")

    def save(self, path: str | Path) -> None:
        """Write the symbols one per line (the inverse of :meth:`from_file`)."""
        text = "\n".join("<space>" if s == " " else s for s in self.symbols)
        Path(path).write_text(text + "\n", encoding="utf-8")

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alphabet) and self.symbols == other.symbols

    def __repr__(self) -> str:
        return f"Alphabet({''.join(s if s != UNK else '∅' for s in self.symbols)!r})"

    @property
    def num_classes(self) -> int:
        """``C`` = symbols + blank: the size of a model's output layer."""
        return num_classes_for(len(self.symbols))

    @property
    def has_unk(self) -> bool:
        return UNK in self._ids

    def unknown(self, text: str) -> list[str]:
        """The distinct symbols of ``text`` that are not in the alphabet, in order of appearance."""
        return list(dict.fromkeys(c for c in normalize(text) if c not in self._ids))

    def encode(self, text: str, policy: str = "error") -> list[int]:
        """Map a transcript to ids in ``1..C-1``.

        Args:
            text: the transcript (NFC-normalised first).
            policy: what to do with an unknown symbol: ``"error"`` raises, ``"unk"`` maps it to
                ``<unk>`` (the alphabet must contain it). Samples are dropped by the audit, never
                symbols: a label silently missing a symbol would teach the model a wrong alignment.
        """
        ids = []
        for c in normalize(text):
            i = self._ids.get(c)
            if i is None:
                if policy == "unk" and self.has_unk:
                    i = self._ids[UNK]
                else:
                    raise UnknownSymbolError(f"symbol {c!r} (U+{ord(c):04X}) in {text!r} is not in the alphabet")
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to text; the blank is skipped (no repeat collapsing: see decoding)."""
        return "".join(self.symbols[i - 1] for i in ids if i != BLANK)


def normalize(text: str) -> str:
    """Unicode NFC, so that composed and decomposed accents are the same symbol."""
    return unicodedata.normalize("NFC", text)
