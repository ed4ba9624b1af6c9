"""Charset ↔ label ids. Id 0 is reserved for the CTC blank; symbols are ids 1..len(symbols).

Invisible format characters (Unicode category Cf: zero-width space U+200B, ZWNJ/ZWJ U+200C/D, the
direction marks U+200E/F, the BOM U+FEFF, the soft hyphen U+00AD, ...) show nothing in an image, so
they are never taken into an alphabet built from transcripts: the pre-flight audit reports them
(reason ``invisible``), and :func:`strip_format_chars` removes them (``stability.strip_format_chars``).
A script that needs one (ZWNJ in Persian) lists it in an alphabet file.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from recognizer.ctc import BLANK, num_classes_for

UNK = "<unk>"
#: What a decoded ``<unk>`` reads as: Unicode's replacement character, one character, so that an unknown symbol
#: costs one edit in CER (not five) and a transcript keeps one character per symbol
UNK_TEXT = "\ufffd"
FORMAT_CATEGORY = "Cf"  # Unicode "Other, format": invisible characters that only steer rendering


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
        self._text = [UNK_TEXT if s == UNK else s for s in self.symbols]  # what decode writes for each id - 1

    @classmethod
    def from_texts(cls, texts: Iterable[str], with_unk: bool = False) -> Alphabet:
        """The sorted set of characters seen in ``texts`` (``<unk>`` last when asked for).

        Invisible format characters (:func:`is_format_char`) are left out: no image shows them, so they
        would be symbols the model can only guess. The audit names the transcripts that hold them.
        """
        chars = sorted({c for t in texts for c in normalize(t) if not is_format_char(c)})
        return cls(chars + ([UNK] if with_unk else []))

    @classmethod
    def from_file(cls, path: str | Path) -> Alphabet:
        """One symbol per line, UTF-8; a line ``<space>`` stands for the space character.

        Symbols are read in Unicode NFC, as transcripts are (:func:`normalize`): a file that lists the Greek
        question mark U+037E lists ``;``, the symbol its transcripts hold.

        Raises:
            ValueError: a line that is not one symbol, or two lines that are the same symbol, named.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"alphabet file {path} does not exist")
        # split on "\n" only: str.splitlines() also breaks on U+2028, U+0085, ... which are symbols;
        # utf-8-sig: a BOM that an editor put at the start is not part of the first symbol
        lines = [s.removesuffix("\r") for s in path.read_text(encoding="utf-8-sig").split("\n")]
        symbols = []
        for number, line in enumerate(lines, 1):
            symbol = {"": "", "<space>": " ", UNK: UNK}.get(line, normalize(line))
            if symbol != line and len(symbol) != 1:  # NFC made it several characters
                codes = " ".join(f"U+{ord(c):04X}" for c in line)
                raise ValueError(
                    f"alphabet file {path}, line {number}: {line!r} ({codes}) is {len(symbol)} characters in Unicode "
                    "NFC, the form transcripts are read in; list each character on a line of its own"
                )
            if symbol:
                symbols.append(symbol)
        try:
            return cls(symbols)
        except ValueError as error:
            raise ValueError(
                f"alphabet file {path}: {error} (symbols are read in Unicode NFC, as transcripts are)"
            ) from None

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
        """Map ids back to text; the blank is skipped (no repeat collapsing: see decoding), ``<unk>`` reads as
        :data:`UNK_TEXT`."""
        return "".join(self._text[i - 1] for i in ids if i != BLANK)


def normalize(text: str) -> str:
    """Unicode NFC, so that composed and decomposed accents are the same symbol."""
    return unicodedata.normalize("NFC", text)


def is_format_char(char: str) -> bool:
    """Whether ``char`` is an invisible format character (Unicode category Cf, e.g. U+200B, U+FEFF)."""
    return unicodedata.category(char) == FORMAT_CATEGORY


def describe_char(char: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: a character named so that an invisible one can be found."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" {name}" if name else "")


def strip_format_chars(text: str, keep: Iterable[str] = ()) -> str:
    """``text`` without its invisible format characters, except those in ``keep`` (an alphabet's symbols)."""
    kept = set(keep)
    return "".join(c for c in text if c in kept or not is_format_char(c))
