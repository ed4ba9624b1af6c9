"""Tests for recognizer.metrics: Levenshtein distance and accumulated CER/WER."""

import pytest

from recognizer.metrics import ErrorRates, edit_distance


@pytest.mark.parametrize(
    ("ref", "hyp", "distance"),
    [
        ("kitten", "sitting", 3),  # k→s, e→i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("abcdef", "azced", 3),  # b→z, -d, f→d
        ("abc", "abc", 0),
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("ab", "ba", 2),  # no transpositions
        ("aaa", "a", 2),
    ],
)
def test_edit_distance_strings(ref, hyp, distance):
    assert edit_distance(ref, hyp) == distance
    assert edit_distance(hyp, ref) == distance


def test_edit_distance_on_word_lists_and_ids():
    assert edit_distance(["the", "cat", "sat"], ["the", "sat"]) == 1
    assert edit_distance(["the", "cat"], ["a", "cat", "sat"]) == 2  # the→a, +sat
    assert edit_distance([1, 2, 3], (1, 3, 3)) == 1


def test_error_rates_known_strings():
    m = ErrorRates()
    m.update(["hello world", "abc"], ["helo world", "abd"])
    # chars: "hello world"→"helo world" is one deletion; "abc"→"abd" one substitution
    assert m.char_errors == 2
    assert m.chars == 11 + 3
    # words: hello→helo is one substituted word; abc→abd one more
    assert m.word_errors == 2
    assert m.words == 3
    assert m.cer == pytest.approx(2 / 14)
    assert m.wer == pytest.approx(2 / 3)


def test_wer_splits_on_any_whitespace():
    m = ErrorRates()
    m.update(["a  b\tc"], ["a b c"])
    # 2 extra chars (" " and "\t"→" ": one deletion, one substitution); the words agree
    assert m.char_errors == 2
    assert m.words == 3
    assert m.wer == 0.0


def test_empty_hypothesis():
    m = ErrorRates()
    m.update(["abc de"], [""])
    # every reference char (6, space included) and word (2) is deleted
    assert (m.char_errors, m.chars, m.word_errors, m.words) == (6, 6, 2, 2)
    assert m.cer == 1.0
    assert m.wer == 1.0


def test_empty_reference_counts_hypothesis_as_errors():
    m = ErrorRates()
    m.update([""], ["xy"])
    assert m.char_errors == 2
    assert m.chars == 0
    assert m.cer == 2.0  # errors / max(chars, 1)
    assert m.wer == 1.0  # one inserted word over max(0, 1)


def test_fresh_metric_is_zero():
    m = ErrorRates()
    assert m.cer == 0.0
    assert m.wer == 0.0


def test_perfect_match():
    m = ErrorRates()
    m.update(["same text", "x"], ["same text", "x"])
    assert m.cer == 0.0
    assert m.wer == 0.0


def test_accumulation_over_two_updates_equals_one():
    refs = ["the quick fox", "jumps over", "a lazy dog", ""]
    hyps = ["the quack fox", "jump over it", "", "oops"]
    once = ErrorRates()
    once.update(refs, hyps)
    twice = ErrorRates()
    twice.update(refs[:2], hyps[:2])
    twice.update(refs[2:], hyps[2:])
    assert vars(once) == vars(twice)
    assert once.cer == twice.cer
    assert once.wer == twice.wer
    # corpus-level rate, not a mean of per-batch rates
    chars = sum(len(r) for r in refs)
    assert once.cer == pytest.approx(sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True)) / chars)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        ErrorRates().update(["a", "b"], ["a"])


def test_references_and_hypotheses_are_compared_in_nfc():
    rates = ErrorRates()
    rates.update(["e\u0301te\u0301"], ["\u00e9t\u00e9"])  # a manifest's decomposed accents, the model's composed ones
    assert (rates.char_errors, rates.chars, rates.word_errors) == (0, 3, 0)
