"""Write a character n-gram ARPA LM (and optionally a lexicon) from transcripts, for beam search.

Usage::

    python scripts/char_lm.py TRANSCRIPTS OUT.arpa [--order 3] [--lexicon OUT_LEXICON.txt]

TRANSCRIPTS is a manifest (``.tsv``/``.jsonl``, as the data configs read them) or a text file with
one transcript per line. Characters become LM words in the decoder's token names (a space is
``<space>``), which is what lexicon-free decoding with ``decoding.lm`` expects. ``--lexicon`` writes
the distinct space-separated words of the transcripts. For large corpora prefer KenLM's ``lmplz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recognizer.data.images.lines import read_records
from recognizer.decoding import token_names, write_arpa, write_lexicon


def read_transcripts(path: Path) -> list[str]:
    if path.suffix in (".tsv", ".jsonl"):
        return [r.text for r in read_records(path)]
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("transcripts", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--lexicon", type=Path)
    args = p.parse_args()
    texts = read_transcripts(args.transcripts)
    print(write_arpa([token_names(list(t))[1:] for t in texts], args.out, order=args.order))
    if args.lexicon:
        print(write_lexicon([w for t in texts for w in t.split()], args.lexicon))


if __name__ == "__main__":
    main()
