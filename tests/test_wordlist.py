"""Compact English word list: lookups, corrections and parity with pyspellchecker."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from spellchecker import SpellChecker

from peb_mail.offline_checks import best_correction
from peb_mail.wordlist import WordList, english_word_list, load_word_list

# Words that the grader and the pre-check look up: common, British, misspelt,
# capitalised, numeric, too long, and with apostrophes and accents.
PARITY_WORDS = (
    "the",
    "The",
    "receive",
    "recieve",
    "definately",
    "acommodation",
    "colour",
    "organise",
    "teh",
    "thx",
    "pls",
    "asap",
    "don't",
    "dont",
    "café",
    "cafe",
    "1.5",
    "42",
    "nan",
    "inf",
    "-",
    "q",
    "qzxv",
    "x" * 60,
)


@pytest.fixture(scope="module")
def english() -> WordList:
    return english_word_list()


@pytest.fixture(scope="module")
def reference() -> SpellChecker:
    return SpellChecker(language="en")


def small_list(document: bytes) -> WordList:
    return load_word_list(io.BytesIO(document))


def test_english_known_word(english: WordList) -> None:
    assert english.known(["The", "receive"]) == {"the", "receive"}
    assert "Receive" in english


def test_english_unknown_word(english: WordList) -> None:
    assert english.known(["qzxv", "recieve"]) == set()
    assert "qzxv" not in english
    assert english.frequency("qzxv") == 0


def test_english_frequency_order(english: WordList) -> None:
    assert english.frequency("the") > english.frequency("receive")
    assert english.frequency("receive") > english.frequency("relieve") > 0


def test_english_corrections_by_frequency(english: WordList) -> None:
    assert english.candidates("recieve") == {"receive", "relieve"}
    assert best_correction("recieve", english) == "receive"
    assert best_correction("definately", english) == "definitely"


def test_numbers_never_known(english: WordList) -> None:
    assert english.known(["1.5", "42"]) == set()
    assert english.candidates("1.5") == {"1.5"}


@pytest.mark.parametrize("word", PARITY_WORDS)
def test_parity_with_pyspellchecker(
    english: WordList, reference: SpellChecker, word: str
) -> None:
    assert english.known([word]) == reference.known([word])
    assert english.frequency(word) == reference[word]
    assert english.candidates(word) == reference.candidates(word)


def test_parity_of_list_facts(english: WordList, reference: SpellChecker) -> None:
    frequencies = reference.word_frequency
    assert len(english) == frequencies.unique_words
    assert english.letters == frequencies.letters
    assert english.longest_word_length == frequencies.longest_word_length


def test_small_list_lookups() -> None:
    words = small_list(b'{\n"apple": 5,\n"apply": 9,\n"zest": 1\n}\n')
    assert len(words) == 3
    assert words.known(["Apple", "pear"]) == {"apple"}
    assert words.frequency("APPLY") == 9


def test_small_list_ranks_candidates() -> None:
    words = small_list(b'{\n"apple": 5,\n"apply": 9\n}')
    assert words.candidates("appla") == {"apple", "apply"}
    assert best_correction("appla", words) == "apply"


def test_frequency_tie_breaks_alphabetically() -> None:
    words = small_list(b'{\n"apple": 5,\n"apply": 5\n}')
    assert best_correction("appla", words) == "apple"


def test_small_list_edit_distance_two() -> None:
    words = small_list(b'{\n"banana": 3\n}')
    assert words.candidates("bananaxx") == {"banana"}
    assert words.candidates("bananaxxx") is None


def test_large_and_negative_counts_kept() -> None:
    words = small_list(b'{\n"apple": 5,\n"apply": 1099511627776,\n"pear": -1\n}')
    assert words.frequency("apple") == 5
    assert words.frequency("apply") == 2**40
    assert words.frequency("pear") == -1


def test_other_layout_is_loaded() -> None:
    # One line, not sorted, with a word in upper case: counts add up as in
    # pyspellchecker.
    words = small_list(b'{"pear": 1, "Apple": 2, "apple": 3}')
    assert words.frequency("apple") == 5
    assert words.known(["APPLE", "pear"]) == {"apple", "pear"}
    assert words.candidates("appel") == {"apple"}


def test_unsorted_lines_are_loaded() -> None:
    words = small_list(b'{\n"pear": 1,\n"apple": 2\n}')
    assert words.known(["apple", "pear"]) == {"apple", "pear"}
    assert words.frequency("pear") == 1


def test_load_peak_memory_small() -> None:
    # pyspellchecker's own loader raised peak RSS by about 39 MiB, and this
    # one by about 6 MiB on the development machine.
    code = (
        "import resource\n"
        "from peb_mail.wordlist import english_word_list\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "english_word_list()\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert int(result.stdout) < 12
