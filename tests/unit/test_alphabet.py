"""Tests for recognizer.alphabet: ids 1..N (0 is the blank), round trips and error messages."""

import re

import pytest

from recognizer.alphabet import UNK, UNK_TEXT, Alphabet, UnknownSymbolError, normalize
from recognizer.ctc import BLANK
from recognizer.metrics import ErrorRates

E_COMPOSED = "\u00e9"  # é as one code point
E_DECOMPOSED = "e\u0301"  # e + combining acute accent


def test_from_texts_is_sorted_set_of_characters():
    a = Alphabet.from_texts(["cab", "bad a", "ä"])
    assert a.symbols == [" ", "a", "b", "c", "d", "ä"]
    assert len(a) == 6
    assert not a.has_unk


def test_from_texts_with_unk_puts_it_last():
    a = Alphabet.from_texts(["ba"], with_unk=True)
    assert a.symbols == ["a", "b", UNK]
    assert a.has_unk


def test_ids_start_at_one_and_blank_is_never_assigned():
    a = Alphabet.from_texts(["hello world"], with_unk=True)
    assert a.num_classes == len(a) + 1
    ids = a.encode("hello world")
    assert BLANK not in ids
    assert min(ids) >= 1 and max(ids) <= a.num_classes - 1
    every = a.encode("".join(s for s in a.symbols if s != UNK)) + a.encode("?", policy="unk")
    assert sorted(every) == list(range(1, a.num_classes))


def test_encode_known_ids():
    a = Alphabet(["a", "b", " "])
    assert a.encode("ab a") == [1, 2, 3, 1]
    assert a.encode("") == []


@pytest.mark.parametrize("text", ["hello world", "  spaced  ", "naïve café ß", "日本語 テキスト", "a\tb"])
def test_encode_decode_round_trip(text):
    a = Alphabet.from_texts([text])
    assert a.decode(a.encode(text)) == text


def test_decode_skips_blank_without_collapsing_repeats():
    a = Alphabet(["a", "b"])
    assert a.decode([1, 0, 1, 1, 2, 0]) == "aaab"


def test_nfc_normalisation():
    assert len(E_DECOMPOSED) == 2
    assert normalize(E_DECOMPOSED) == E_COMPOSED
    a = Alphabet.from_texts([f"caf{E_DECOMPOSED}"])
    assert a.symbols == ["a", "c", "f", E_COMPOSED]  # sorted by code point: U+00E9 > "f"
    assert a.encode(E_DECOMPOSED) == a.encode(E_COMPOSED) == [4]
    assert a.decode(a.encode(f"caf{E_DECOMPOSED}")) == f"caf{E_COMPOSED}"
    assert a.unknown(E_DECOMPOSED) == []


def test_save_and_from_file_round_trip_with_space(tmp_path):
    a = Alphabet([" ", "a", "é", "<", UNK])
    path = tmp_path / "alphabet.txt"
    a.save(path)
    assert path.read_text(encoding="utf-8") == "<space>\na\né\n<\n<unk>\n"
    b = Alphabet.from_file(path)
    assert b == a
    assert b.encode(" a") == [1, 2]
    assert b.has_unk


def test_from_file_skips_empty_lines(tmp_path):
    path = tmp_path / "alphabet.txt"
    path.write_text("a\n\nb\n<space>\n", encoding="utf-8")
    assert Alphabet.from_file(path).symbols == ["a", "b", " "]


@pytest.mark.parametrize("symbol", ["\u2028", "\x85", "\x0c"])
def test_save_from_file_round_trip_with_unicode_line_separators(tmp_path, symbol):
    a = Alphabet(["a", symbol, "b"])
    path = tmp_path / "alphabet.txt"
    a.save(path)
    assert Alphabet.from_file(path) == a


def test_from_file_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Alphabet.from_file(tmp_path / "nope.txt")


def test_unknown_symbol_error_names_symbol_and_codepoint():
    a = Alphabet(["a", "b"])
    with pytest.raises(UnknownSymbolError) as e:
        a.encode("abz")
    msg = str(e.value)
    assert "'z'" in msg
    assert "U+007A" in msg
    assert "abz" in msg
    with pytest.raises(UnknownSymbolError, match="U\\+20AC"):
        a.encode("a€")


def test_unknown_symbol_error_is_value_error():
    assert issubclass(UnknownSymbolError, ValueError)


def test_unk_policy_maps_to_unk_id():
    a = Alphabet(["a", "b", UNK])
    unk_id = a.symbols.index(UNK) + 1
    assert a.encode("azb€", policy="unk") == [1, unk_id, 2, unk_id]
    # the default policy still raises
    with pytest.raises(UnknownSymbolError):
        a.encode("z")


def test_unk_policy_without_unk_symbol_raises():
    a = Alphabet(["a"])
    with pytest.raises(UnknownSymbolError):
        a.encode("z", policy="unk")


def test_unknown_lists_distinct_symbols_in_order():
    a = Alphabet(["a"])
    assert a.unknown("zaxz") == ["z", "x"]
    assert a.unknown("aaa") == []


def test_duplicates_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Alphabet(["a", "b", "a"])


@pytest.mark.parametrize("symbol", ["ab", "", E_DECOMPOSED, "<pad>"])
def test_multi_char_symbols_rejected(symbol):
    with pytest.raises(ValueError, match="single characters"):
        Alphabet(["a", symbol])


def test_equality():
    assert Alphabet(["a", "b"]) == Alphabet(["a", "b"])
    assert Alphabet(["a", "b"]) != Alphabet(["b", "a"])
    assert Alphabet(["a"]) != ["a"]


def test_a_decoded_unk_is_one_character_so_it_costs_one_edit():
    a = Alphabet(["a", "b", UNK])
    assert a.decode(a.encode("azb", policy="unk")) == "a\ufffdb" == f"a{UNK_TEXT}b"
    rates = ErrorRates()
    rates.update(["aéb"], [a.decode(a.encode("azb", policy="unk"))])
    assert (rates.char_errors, rates.chars) == (1, 3)


def test_an_alphabet_file_is_read_in_nfc_as_transcripts_are(tmp_path):
    path = tmp_path / "alphabet.txt"
    path.write_text("a\n\u037e\nA\u030a\n", encoding="utf-8")  # Greek question mark, A + combining ring
    a = Alphabet.from_file(path)
    assert a.symbols == ["a", ";", "\u00c5"]
    assert a.encode("a;\u00c5") == [1, 2, 3]
    path.write_text("a\n;\n\u037e\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=rf"alphabet file {re.escape(str(path))}: alphabet has duplicate symbols: \[';'\] "
    ):
        Alphabet.from_file(path)
    path.write_text("a\n\u0344\n", encoding="utf-8")  # combining dialytika tonos: two marks in NFC
    with pytest.raises(ValueError, match=r"line 2: '\u0344' \(U\+0344\) is 2 characters in Unicode NFC"):
        Alphabet.from_file(path)
