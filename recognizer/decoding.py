"""CTC decoding: greedy best path and lexicon/LM beam search. Blank is id 0 (see :mod:`recognizer.ctc`).

Both decoders are built by Hydra from ``recognizer/conf/decoding/*.yaml`` with the checkpoint's alphabet
(``instantiate(cfg.decoding, symbols=alphabet.symbols)``) and map ``(B, T, C)`` logits with ``(B,)``
lengths to one :class:`Hypothesis` per sample. Hypothesis text is always built from the label ids
(``alphabet.decode(h.ids)``): in lexicon-free mode flashlight returns no words.

The beam decoder is torchaudio's flashlight ``ctc_decoder``. Its token names are the alphabet's
symbols, with the space written ``<space>``; the word separator ("silence") token is ``<space>`` when
the alphabet has a space, else an extra ``<sil>`` token: lexicon-free, the model never predicts it
(log-probability -1e4); with a lexicon it ends every spelling and scores like a blank frame, so that
words can follow each other without spaces (digit strings, scripts without word spacing). A KenLM model
(ARPA or binary) is read by flashlight's bundled KenLM, so the ``kenlm`` Python package is not needed;
without a lexicon its words are the token names (a character LM, see :func:`write_arpa` and
:func:`token_names`); with a lexicon they are the lexicon's words.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from recognizer.ctc import BLANK
from recognizer.metrics import ErrorRates
from recognizer.resources import resource_path

if TYPE_CHECKING:
    from recognizer.alphabet import Alphabet
    from recognizer.data.batching import Batch
    from recognizer.engine.precision import Precision

BLANK_TOKEN = "<blank>"
SPACE_TOKEN = "<space>"
SIL_TOKEN = "<sil>"
SIL_LOGPROB = -1e4  # the synthetic separator column: never chosen, finite so no NaN reaches flashlight


@dataclass
class Hypothesis:
    """One decoded sample.

    Attributes:
        ids: label ids in ``1..C-1`` (turn into text with ``Alphabet.decode``).
        score: greedy: the best path's log-probability; beam: flashlight's total score (acoustic
            log-probability + ``lm_weight`` × LM log-probability + insertion scores).
        frames: output frame at which each label starts (same length as ``ids``).
    """

    ids: list[int]
    score: float
    frames: list[int] = field(default_factory=list)


class GreedyDecoder:
    """Best-path decoding (``recognizer/conf/decoding/greedy.yaml``).

    Args:
        symbols: the alphabet's symbols (ids ``1..len(symbols)``); unused, accepted so that every
            decoder is built the same way.
    """

    def __init__(self, symbols: Sequence[str] = ()) -> None:
        self.symbols = list(symbols)

    def __call__(self, logits: Tensor, lengths: Tensor) -> list[Hypothesis]:
        """Decode ``(B, T, C)`` logits with ``(B,)`` valid lengths."""
        log_probs = logits.detach().float().log_softmax(-1).cpu()
        best, path = log_probs.max(-1)  # (B, T) each
        hyps = []
        for b, n in enumerate(lengths.cpu().tolist()):
            ids, frames, prev = [], [], BLANK
            for t, i in enumerate(path[b, :n].tolist()):
                if i != BLANK and i != prev:
                    ids.append(i)
                    frames.append(t)
                prev = i
            hyps.append(Hypothesis(ids, float(best[b, :n].sum()), frames))
        return hyps


class BeamDecoder:
    """Beam search with torchaudio's flashlight ``ctc_decoder`` (``recognizer/conf/decoding/beam.yaml``).

    Args:
        symbols: the alphabet's symbols (ids ``1..len(symbols)``).
        beam_size: hypotheses kept after each frame.
        beam_threshold: prune hypotheses scoring more than this below the best.
        lexicon: optional lexicon file, one ``WORD TOKEN TOKEN ...`` per line (tokens are symbols,
            ``<space>`` for a space); None decodes lexicon-free (any token sequence).
        lm: optional KenLM model, ARPA (``.arpa``) or binary; None decodes without an LM.
        lm_weight: weight of the LM log-probability.
        word_score: score added per word; the lexicon decoder only (flashlight's lexicon-free
            decoder never reads it).
        sil_score: score added per word-separator token (``<space>``, or ``<sil>``): the insertion
            score of lexicon-free decoding.
        unk_score: score of words outside the lexicon (``-inf`` forbids them).
        log_add: sum the probabilities of merged paths (True) instead of keeping the best (False).
        nbest: hypotheses computed per sample (the best one is returned).
    """

    def __init__(
        self,
        symbols: Sequence[str],
        beam_size: int = 50,
        beam_threshold: float = 50.0,
        lexicon: str | None = None,
        lm: str | None = None,
        lm_weight: float = 0.5,
        word_score: float = 0.0,
        sil_score: float = 0.0,
        unk_score: float = float("-inf"),
        log_add: bool = False,
        nbest: int = 1,
    ) -> None:
        try:
            from torchaudio.models.decoder import ctc_decoder
        except ImportError as e:  # flashlight-text missing
            raise ImportError(
                f"beam decoding needs flashlight-text ({e}): pip install flashlight-text (or pip install -e .)"
            ) from None
        lexicon, lm = (config_file(path) for path in (lexicon, lm))
        for name, path in (("lexicon", lexicon), ("lm", lm)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(
                    f"decoding.{name}={path} does not exist: give an existing file or null to decode without it"
                )
        self.tokens = token_names(symbols)
        self.synthetic_sil = SPACE_TOKEN not in self.tokens
        if self.synthetic_sil:
            self.tokens.append(SIL_TOKEN)
        self.num_symbols = len(symbols)
        # Flashlight's lexicon decoder cannot repeat a word's last token once the word is complete
        # (it may only emit the separator then), so without a space every spelling ends in <sil>,
        # which scores like a blank frame: a word completes on the blank that follows it in CTC.
        self.sil_like_blank = self.synthetic_sil and lexicon is not None
        self._tmp = None
        if self.synthetic_sil and lexicon is not None:
            self._tmp = tempfile.TemporaryDirectory()
            lexicon = _with_final_token(Path(lexicon), Path(self._tmp.name) / "lexicon.txt", SIL_TOKEN)
        lm_dict = None
        if lm is not None and lexicon is None:
            # The lexicon-free decoder scores token i as LM word i, but torchaudio's default word
            # dictionary sorts the token names (shifting every digit by one): list them in id order.
            self._tmp = self._tmp or tempfile.TemporaryDirectory()
            lm_dict = Path(self._tmp.name) / "lm_dict.txt"
            words = self.tokens if "<unk>" in self.tokens else [*self.tokens, "<unk>"]
            lm_dict.write_text("\n".join(words) + "\n", encoding="utf-8")
        with _stdout_to_stderr():  # KenLM prints its loading progress on stdout
            self.decoder = ctc_decoder(
                lexicon=lexicon,
                tokens=self.tokens,
                lm=lm,
                lm_dict=None if lm_dict is None else str(lm_dict),
                nbest=nbest,
                beam_size=beam_size,
                beam_threshold=beam_threshold,
                lm_weight=lm_weight,
                word_score=word_score,
                sil_score=sil_score,
                unk_score=unk_score,
                log_add=log_add,
                blank_token=BLANK_TOKEN,
                sil_token=SPACE_TOKEN if not self.synthetic_sil else SIL_TOKEN,
                unk_word="<unk>",
            )

    def __call__(self, logits: Tensor, lengths: Tensor) -> list[Hypothesis]:
        """Decode ``(B, T, C)`` logits with ``(B,)`` valid lengths."""
        if logits.size(-1) != self.num_symbols + 1:
            raise ValueError(
                f"logits have {logits.size(-1)} classes but the decoder's alphabet has {self.num_symbols} "
                "symbols + blank: build the decoder with the checkpoint's alphabet"
            )
        emissions = logits.detach().float().log_softmax(-1).cpu()  # (B, T, C)
        lengths = lengths.cpu()
        if self.synthetic_sil:
            sil = (
                emissions[..., BLANK : BLANK + 1]
                if self.sil_like_blank
                else emissions.new_full((*emissions.shape[:2], 1), SIL_LOGPROB)
            )
            emissions = torch.cat([emissions, sil], -1)
        if self.sil_like_blank:
            emissions, lengths = _close_last_word(emissions, lengths)
        results = self.decoder(emissions.contiguous(), lengths.to(torch.int32))
        return [self._hypothesis(r[0], int(n)) for r, n in zip(results, lengths.tolist())]

    def _hypothesis(self, hyp: object, length: int) -> Hypothesis:
        ids, frames = [], []
        for token, step in zip(hyp.tokens.tolist(), hyp.timesteps.tolist()):  # type: ignore[attr-defined]
            # flashlight pads the path with a separator frame on each side: steps 1..T are real frames
            if 1 <= token <= self.num_symbols and 1 <= step <= length:
                ids.append(token)
                frames.append(step - 1)
        return Hypothesis(ids, float(hyp.score), frames)  # type: ignore[attr-defined]


def _close_last_word(emissions: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Append one frame per sample where only the separator (last column) is possible, at no cost.

    With spellings that end in the separator, a line's last word completes only on a separator
    frame; the end of a line is a word boundary, but a model that ends on a symbol gives none, and
    flashlight then keeps only the hypotheses that dropped the last word. This frame closes it.
    """
    batch, frames, classes = emissions.shape
    closed = emissions.new_full((batch, frames + 1, classes), SIL_LOGPROB)
    closed[:, :frames] = emissions
    closed[torch.arange(batch), lengths, :] = SIL_LOGPROB
    closed[torch.arange(batch), lengths, -1] = 0.0
    return closed, lengths + 1


def _with_final_token(source: Path, target: Path, token: str) -> str:
    """Copy a lexicon with ``token`` appended to every spelling."""
    lines = [f"{line.rstrip()} {token}" for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(target)


def token_names(symbols: Sequence[str]) -> list[str]:
    """Flashlight token names by id: the blank, then the symbols with the space written ``<space>``."""
    return [BLANK_TOKEN, *(SPACE_TOKEN if s == " " else s for s in symbols)]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Redirect file descriptor 1 (C++ code writes there directly) to stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def write_arpa(sentences: Sequence[Sequence[str]], path: str | Path, order: int = 2, discount: float = 0.5) -> Path:
    """Train a small back-off n-gram LM (interpolated absolute discounting) and write it as ARPA.

    Enough for tests and small vocabularies (digits, characters, a few thousand words); use KenLM's
    ``lmplz`` for real corpora. ``<unk>`` gets the unigram mass of one unseen word.

    Args:
        sentences: token sequences (words, or characters for a lexicon-free character LM).
        path: the ``.arpa`` file to write.
        order: n-gram order, at least 2 (KenLM refuses unigram models).
        discount: absolute discount ``D`` in ``(0, 1)`` subtracted from every seen n-gram count.
    """
    if order < 2:
        raise ValueError(f"order must be at least 2 (KenLM needs a bigram model), got {order}")
    counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[n][ngram tuple]
    for sentence in sentences:
        words = ["<s>", *sentence, "</s>"]
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                gram = tuple(words[i : i + n])
                if n == 1 and gram == ("<s>",):
                    continue
                counts[n][gram] += 1
    total = sum(counts[1].values())
    vocab = len(counts[1]) + 1  # + <unk>
    probs: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    probs[1] = {g: (c + 1) / (total + vocab) for g, c in counts[1].items()}  # add-one unigrams
    probs[1][("<unk>",)] = 1 / (total + vocab)
    probs[1][("<s>",)] = 0.0
    backoff: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    for n in range(2, order + 1):
        context_total: dict[tuple, int] = defaultdict(int)
        context_types: dict[tuple, int] = defaultdict(int)
        for g, c in counts[n].items():
            context_total[g[:-1]] += c
            context_types[g[:-1]] += 1
        for h, c in context_total.items():
            backoff[n - 1][h] = discount * context_types[h] / c
        for g, c in counts[n].items():
            h = g[:-1]
            lower = _lower_prob(probs, backoff, g[1:])
            probs[n][g] = (c - discount) / context_total[h] + backoff[n - 1][h] * lower
    lines = ["", "\\data\\", *(f"ngram {n}={len(probs[n])}" for n in range(1, order + 1)), ""]
    for n in range(1, order + 1):
        lines.append(f"\\{n}-grams:")
        for g, p in sorted(probs[n].items()):
            logp = -99.0 if p == 0.0 else math.log10(p)
            entry = f"{logp:.6f}\t{' '.join(g)}"
            if n < order and g in backoff[n]:
                entry += f"\t{math.log10(backoff[n][g]):.6f}"
            lines.append(entry)
        lines.append("")
    lines.append("\\end\\")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _lower_prob(probs: list[dict[tuple, float]], backoff: list[dict[tuple, float]], gram: tuple) -> float:
    """``p(w | shorter context)`` with back-off, for interpolation."""
    if len(gram) == 1:
        return probs[1].get(gram, probs[1][("<unk>",)])
    if gram in probs[len(gram)]:
        return probs[len(gram)][gram]
    return backoff[len(gram) - 1].get(gram[:-1], 1.0) * _lower_prob(probs, backoff, gram[1:])


def config_file(path: str | None) -> str | None:
    """``path`` as given if it exists (relative to the working directory), else the file of that name
    shipped in ``recognizer/resources/`` (``lexicon: digit_words.lexicon``), else ``path`` unchanged."""
    if path is None or Path(path).is_file():
        return path
    shipped = resource_path(path)
    return str(shipped) if shipped is not None else path


def write_lexicon(words: Sequence[str], path: str | Path) -> Path:
    """Write a flashlight lexicon: one ``WORD T O K E N S`` line per distinct word (spaces → ``<space>``)."""
    lines = [f"{w} {' '.join(token_names(list(w))[1:])}" for w in dict.fromkeys(words) if w]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_decoder(decoding_cfg: object, symbols: Sequence[str]) -> GreedyDecoder | BeamDecoder:
    """Instantiate a ``recognizer/conf/decoding`` node for an alphabet's ``symbols``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(decoding_cfg, symbols=list(symbols))
    except InstantiationException as e:  # a bad path or setting: the decoder's own message, not Hydra's wrapper
        if isinstance(e.__cause__, (FileNotFoundError, ValueError)):
            raise e.__cause__ from None
        raise


@torch.no_grad()
def decode_loader(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    decoder: GreedyDecoder | BeamDecoder,
    alphabet: Alphabet,
    precision: Precision,
) -> list[tuple[str, str, str]]:
    """Run ``model`` over ``loader`` and decode; returns ``(id, reference, hypothesis)`` rows."""
    model.eval()
    rows: list[tuple[str, str, str]] = []
    for batch in loader:
        moved = batch.to(precision.device, non_blocking=True)
        with precision.autocast():
            logits, lengths = model(moved.inputs, moved.input_lengths)
        hyps = decoder(logits, lengths)
        rows += [(i, t, alphabet.decode(h.ids)) for i, t, h in zip(batch.ids, batch.texts, hyps)]
    return rows


@torch.no_grad()
def tune_lm(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    alphabet: Alphabet,
    precision: Precision,
    lm_weights: Sequence[float],
    insertion_scores: Sequence[float],
    **beam: object,
) -> tuple[dict[str, float], list[tuple[float, float, int]]]:
    """Choose ``lm_weight`` and the insertion score for beam search on a held-out split (a grid, as NeMo does).

    The insertion score is ``word_score`` with a lexicon and ``sil_score`` (per word separator) without
    one: flashlight's lexicon-free decoder never reads ``word_score``. The model runs once; every grid
    point decodes the stored outputs. Pick the split you tune on (validation) apart from the one you
    report (test).

    Args:
        model, loader, alphabet, precision: as for :func:`decode_loader`.
        lm_weights, insertion_scores: the grid.
        beam: the other :class:`BeamDecoder` arguments (``lexicon``, ``lm``, ``beam_size`` ...).

    Returns:
        ``({"lm_weight": w, KEY: s}, [(w, s, character errors), ...])`` with KEY ``word_score`` or
        ``sil_score``: the first point of the grid with the fewest character errors, and the whole
        table in grid order.
    """
    key = "word_score" if beam.get("lexicon") is not None else "sil_score"
    model.eval()
    outputs = []
    for batch in loader:
        moved = batch.to(precision.device, non_blocking=True)
        with precision.autocast():
            logits, lengths = model(moved.inputs, moved.input_lengths)
        outputs.append((logits.float().cpu(), lengths.cpu(), batch.texts))
    table = []
    for weight in lm_weights:
        for insertion in insertion_scores:
            decoder = BeamDecoder(alphabet.symbols, lm_weight=weight, **{key: insertion}, **beam)  # type: ignore[arg-type]
            rates = ErrorRates()
            for logits, lengths, texts in outputs:
                rates.update(texts, [alphabet.decode(h.ids) for h in decoder(logits, lengths)])
            table.append((weight, insertion, rates.char_errors))
    best = min(table, key=lambda row: row[2])
    return {"lm_weight": best[0], key: best[1]}, table
