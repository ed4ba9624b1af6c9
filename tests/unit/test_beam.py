"""Beam search (flashlight via torchaudio), the ARPA writer, and evaluation with decoding=beam."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recognizer.alphabet import Alphabet
from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.ctc import greedy_decode
from recognizer.data.batching import Batch
from recognizer.data.loaders import make_loader
from recognizer.decoding import (
    BeamDecoder,
    GreedyDecoder,
    tune_lm,
    write_arpa,
    write_lexicon,
)
from recognizer.engine.precision import resolve_precision
from recognizer.evaluate import evaluate_checkpoint
from recognizer.train import train
from tests.conftest import compose_config
from tests.helpers.tiny_checkpoint import tiny_checkpoint

DIGITS = list("0123456789")


def emissions(frames: list[dict[int, float]], num_classes: int) -> torch.Tensor:
    """``(1, T, C)`` log-probs: each frame puts the given probabilities on its ids, the rest on blank."""
    probs = torch.full((len(frames), num_classes), 1e-4)
    for t, frame in enumerate(frames):
        for i, p in frame.items():
            probs[t, i] = p
        probs[t, 0] = max(1.0 - sum(frame.values()), 1e-4)
    return (probs / probs.sum(-1, keepdim=True)).log().unsqueeze(0)


def ids(text: str, symbols: list[str]) -> list[int]:
    return [symbols.index(c) + 1 for c in text]


# "1", blank, then a frame torn between "2" (0.45) and "3" (0.55), blank: greedy says "13"
AMBIGUOUS = [{2: 0.9}, {}, {3: 0.45, 4: 0.55}, {}]


def test_greedy_decoder_gives_ids_frames_and_path_score() -> None:
    x = emissions([{2: 0.9}, {2: 0.9}, {}, {4: 0.8}, {}], 11)
    (hyp,) = GreedyDecoder(DIGITS)(x, torch.tensor([5]))
    assert hyp.ids == [2, 4] == greedy_decode(x, torch.tensor([5]))[0]
    assert hyp.frames == [0, 3]
    assert hyp.score == pytest.approx(float(x[0].max(-1).values.sum()))


def test_beam_without_lm_matches_greedy_on_peaky_emissions() -> None:
    x = torch.cat([emissions([{2: 0.9}, {}, {2: 0.8}, {5: 0.7}, {5: 0.9}, {}], 11)] * 2)
    lengths = torch.tensor([6, 3])  # the second sample stops after "1", blank, "1"
    hyps = BeamDecoder(DIGITS, beam_size=8)(x, lengths)
    assert [h.ids for h in hyps] == [[2, 2, 5], [2, 2]] == greedy_decode(x, lengths)
    assert hyps[0].frames == [0, 2, 3]


def test_character_lm_overrides_an_ambiguous_frame(tmp_path: Path) -> None:
    x = emissions(AMBIGUOUS, 11)
    assert greedy_decode(x, torch.tensor([4]))[0] == ids("13", DIGITS)
    lm = write_arpa([list("12")] * 20 + [list("1")], tmp_path / "lm.arpa")
    (hyp,) = BeamDecoder(DIGITS, lm=str(lm), lm_weight=1.0)(x, torch.tensor([4]))
    assert hyp.ids == ids("12", DIGITS)


def test_lexicon_without_space_keeps_outputs_in_the_lexicon(tmp_path: Path) -> None:
    x = emissions([{2: 0.9}, {2: 0.9}, {}, *AMBIGUOUS[2:], {}], 11)  # "1" held two frames, then "2|3"
    lexicon = write_lexicon(["12", "7"], tmp_path / "lexicon.txt")
    (hyp,) = BeamDecoder(DIGITS, lexicon=str(lexicon))(x, torch.tensor([6]))
    assert hyp.ids == ids("12", DIGITS)


def test_lexicon_without_space_ends_the_last_word_at_the_end_of_the_line(tmp_path: Path) -> None:
    # one-digit words; sample 0 ends on "2" held two frames, sample 1 (padded) on "1" at its last frame:
    # no blank follows either, yet the end of a line is a word boundary (flashlight alone drops them)
    x = torch.cat([emissions([{2: 0.9}, {}, {3: 0.9}, {3: 0.9}], 11), emissions([{}, {2: 0.9}, {}, {}], 11)])
    lengths = torch.tensor([4, 2])
    lexicon = write_lexicon(DIGITS, tmp_path / "lexicon.txt")
    hyps = BeamDecoder(DIGITS, lexicon=str(lexicon))(x, lengths)
    assert [h.ids for h in hyps] == [ids("12", DIGITS), ids("1", DIGITS)] == greedy_decode(x, lengths)
    assert [h.frames for h in hyps] == [[0, 2], [1]]


def test_lexicon_with_spaces_decodes_words(tmp_path: Path) -> None:
    symbols = [" ", "a", "b"]
    # "ab ba" where the last frame leans to "b": greedy gives "ab bb", not words of the lexicon
    x = emissions([{2: 0.9}, {3: 0.9}, {1: 0.9}, {3: 0.9}, {}, {2: 0.4, 3: 0.5}, {}], 4)
    assert greedy_decode(x, torch.tensor([7]))[0] == ids("ab bb", symbols)
    lexicon = write_lexicon(["ab", "ba"], tmp_path / "lexicon.txt")
    assert lexicon.read_text() == "ab a b\nba b a\n"
    (hyp,) = BeamDecoder(symbols, lexicon=str(lexicon))(x, torch.tensor([7]))
    assert hyp.ids == ids("ab ba", symbols)


# "a", a frame torn between the space (0.45) and the blank (0.55), "b": greedy says "ab"
TORN_SPACE = [{2: 0.9}, {}, {1: 0.45}, {}, {3: 0.9}, {}]


def test_lexicon_free_insertion_is_sil_score_and_word_score_is_ignored() -> None:
    symbols = [" ", "a", "b"]
    x = emissions(TORN_SPACE, 4)
    assert greedy_decode(x, torch.tensor([6]))[0] == ids("ab", symbols)

    def decode(**scores: float) -> list[int]:
        (hyp,) = BeamDecoder(symbols, beam_size=8, **scores)(x, torch.tensor([6]))
        return hyp.ids

    assert decode(sil_score=2.0) == ids("a b", symbols)
    assert decode(sil_score=-2.0) == decode(word_score=2.0) == decode(word_score=-2.0) == ids("ab", symbols)


class FixedLogits(torch.nn.Module):
    """A "model" that returns the same log-probs for any input: decoding alone is under test."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits, torch.full((len(inputs),), self.logits.shape[1])


def test_tune_lm_tunes_sil_score_without_a_lexicon(tmp_path: Path) -> None:
    alphabet = Alphabet([" ", "a", "b"])
    batch = Batch(torch.zeros(1, 1, 1, 6), torch.tensor([6]), torch.zeros(1, 3), torch.tensor([3]), ["a b"], ["0"])
    lm = write_arpa([list("ab"), list("ba")], tmp_path / "lm.arpa")
    precision = resolve_precision("32", torch.device("cpu"))
    model = FixedLogits(emissions(TORN_SPACE, 4))
    chosen, table = tune_lm(model, [batch], alphabet, precision, (0.0,), (-2.0, 2.0), lm=str(lm), beam_size=8)
    assert chosen == {"lm_weight": 0.0, "sil_score": 2.0}
    assert table == [(0.0, -2.0, 1), (0.0, 2.0, 0)]  # "ab" misses the space; "a b" is right


def test_arpa_conditional_probabilities_sum_to_one(tmp_path: Path) -> None:
    path = write_arpa([list("121"), list("13"), list("2")], tmp_path / "lm.arpa", order=2)
    uni, bi, backoff = {}, {}, {}
    section = 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and "-grams" in line:
            section = int(line[1])
        elif section and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            words = tuple(fields[1].split())
            if section == 1:
                uni[words[0]] = 10 ** float(fields[0])
                if len(fields) == 3:
                    backoff[words[0]] = 10 ** float(fields[2])
            else:
                bi[words] = 10 ** float(fields[0])
    assert "ngram 1=6" in path.read_text() and "ngram 2=8" in path.read_text()
    targets = [w for w in uni if w != "<s>"]
    assert sum(uni[w] for w in targets) == pytest.approx(1.0, abs=1e-5)
    for context in ("<s>", "1", "2"):
        total = sum(bi.get((context, w), backoff[context] * uni[w]) for w in targets)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_arpa_needs_a_bigram(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"order must be at least 2 \(KenLM needs a bigram model\), got 1"):
        write_arpa([["a"]], tmp_path / "lm.arpa", order=1)


def test_beam_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"decoding.lm=.*nope.arpa does not exist: give an existing file"):
        BeamDecoder(DIGITS, lm=str(tmp_path / "nope.arpa"))
    with pytest.raises(ValueError, match=r"logits have 5 classes but the decoder's alphabet has 10 symbols"):
        BeamDecoder(DIGITS)(torch.zeros(1, 3, 5), torch.tensor([3]))


@pytest.mark.slow
def test_evaluation_with_beam_search(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ckpt = tiny_checkpoint(tmp_path_factory, data_root)
    out = tmp_path_factory.mktemp("eval_beam")
    texts = [
        line.split("\t")[1] for line in next(data_root.glob("digit_lines/*/train.tsv")).read_text().splitlines()[1:]
    ]
    lm = write_arpa([list(t) for t in texts], out / "lm.arpa", order=3)
    common = [f"checkpoint={ckpt}", f"data.root={data_root}/digit_lines", "data.num_train=96", "data.num_val=24"]
    common += ["data.num_test=24", "device=cpu"]
    beam = evaluate_checkpoint(compose_config("eval", [*common, f"paths.output_dir={out}/b", "decoding=beam"]))
    assert beam["test/cer"] == beam["test/greedy_cer"]  # without an LM, beam search finds the best path
    with_lm = evaluate_checkpoint(
        compose_config("eval", [*common, f"paths.output_dir={out}/lm", "decoding=beam", f"decoding.lm={lm}"])
    )
    assert with_lm["test/greedy_cer"] == beam["test/greedy_cer"]
    assert 0.0 <= with_lm["test/cer"] <= 1.5 and not math.isnan(with_lm["test/cer"])
    assert (out / "lm" / "predictions_test.tsv").read_text().startswith("id\treference\thypothesis\n")


@pytest.mark.slow
def test_lexicon_and_lm_do_not_lose_to_greedy_on_the_embedded_test_split(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The issue's bar, on a trained model: a small lexicon and an ARPA LM built from the training text,
    weights chosen on validation (``tune_lm``), then the test split through ``recognizer-eval``'s path."""
    root, out = tmp_path_factory.mktemp("beam_data"), tmp_path_factory.mktemp("beam_run")
    data = [f"data.root={root}", "data.num_train=4000", "data.num_val=200", "data.num_test=500"]
    run = ["trainer.max_epochs=5", "trainer.device=cpu", "trainer.progress_bar=false", f"paths.output_dir={out}"]
    train(compose_config("train", [*data, *run]))
    texts = [line.split("\t")[1] for line in next(root.glob("*/train.tsv")).read_text().splitlines()[1:]]
    lm = write_arpa([list(t) for t in texts], out / "chars3.arpa", order=3)
    lexicon = write_lexicon(sorted(set("".join(texts))), out / "lexicon.txt")
    assert lexicon.read_text().splitlines()[:2] == ["0 0", "1 1"]

    ckpt = load_checkpoint(out / "checkpoints" / "best.ckpt")
    model, alphabet = build_model(ckpt)
    val = instantiate(ckpt["config"]["data"]).dataset("val")
    loader, _ = make_loader(val, list(range(len(val))), alphabet, 64, False, 0, "error")
    precision = resolve_precision("32", torch.device("cpu"))
    beam = {"lexicon": str(lexicon), "lm": str(lm)}
    chosen, table = tune_lm(model, loader, alphabet, precision, (0.1, 0.3), (0.0, 1.0, 2.0), **beam)
    assert len(table) == 6 and min(e for *_, e in table) == next(
        e for w, s, e in table if (w, s) == tuple(chosen.values())
    )

    decoding = ["decoding=beam", *(f"decoding.{k}={v}" for k, v in (beam | chosen).items())]
    metrics = evaluate_checkpoint(
        compose_config(
            "eval",
            [f"checkpoint={out}/checkpoints/best.ckpt", *data, "device=cpu", f"paths.output_dir={out}/eval", *decoding],
        )
    )
    assert metrics["test/greedy_cer"] < 0.05  # a trained model, not noise
    assert metrics["test/cer"] <= metrics["test/greedy_cer"], (chosen, metrics)


def test_digit_words_decoding_keeps_fsdd_outputs_to_the_ten_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decoding=digit_words``: a near miss of the greedy path ("sevn") becomes the digit word "seven",
    from any working directory (the lexicon ships in recognizer/resources/), and recognizer-transcribe's
    ``--decoding digit_words`` composes the same node (beam's keys under its own)."""
    from recognizer.cli.transcribe import decoding_config
    from recognizer.data.audio.spoken_digits import WORDS
    from recognizer.decoding import build_decoder, config_file

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("eval", ["checkpoint=x.ckpt", "decoding=digit_words"])
    assert OmegaConf.to_container(decoding_config("digit_words")) == OmegaConf.to_container(cfg.decoding)
    words = Path(config_file(cfg.decoding.lexicon)).read_text().split("\n")
    assert [w.split()[0] for w in words if w] == list(WORDS)  # the ten words, spelled letter by letter
    symbols = list("efghinorstuvwxz")  # FSDD's alphabet (no space)
    s, e, v, n = (symbols.index(c) + 1 for c in "sevn")
    # "s e v" then an "e" weaker than the blank, then "n": greedy drops the second "e"
    x = emissions([{s: 0.9}, {}, {e: 0.9}, {}, {v: 0.9}, {e: 0.3}, {}, {n: 0.9}, {}], len(symbols) + 1)
    assert greedy_decode(x, torch.tensor([9]))[0] == ids("sevn", symbols)
    (hyp,) = build_decoder(cfg.decoding, symbols)(x, torch.tensor([9]))
    assert hyp.ids == ids("seven", symbols)
