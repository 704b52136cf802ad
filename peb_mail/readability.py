"""Coleman-Liau index and words per sentence, counted the way textstat 0.7 counts.

The offline grader used textstat for these two figures. Importing textstat cost
about 30 MiB and 0.25 s, so this module counts words, letters and sentences
itself with textstat 0.7.13's rules, and gives the same floats for the same text:

- A word is a whitespace-separated token after removing every character that
  is not a word character, whitespace or an apostrophe, and every apostrophe
  that does not start a contraction ending (t, s, d, ve, ll, re).
- A letter is any word character (``\\w``: letters, digits and underscore).
- A sentence is a run of text from a word boundary up to ``.``, ``!`` or
  ``?`` with its closing marks. Runs of two words or fewer are not counted,
  and a non-empty text has at least one sentence.
"""

from __future__ import annotations

import re

# An apostrophe that does not start "n't", "'s", "'d", "'ve", "'ll" or "'re".
_LOOSE_APOSTROPHE = re.compile(r"'(?!t|s|d|ve|ll|re)")
_NOT_WORD_PART = re.compile(r"[^\w\s']")
_WORD_CHARACTER = re.compile(r"\w")
_SENTENCE = re.compile(r"\b[^.!?]+[.!?]*")
# Sentences of this many words or fewer ("Hi Tom," or "Thanks!") are skipped.
MAX_SKIPPED_SENTENCE_WORDS = 2


def count_words(text: str) -> int:
    """Count the words of ``text`` by the rules in the module docstring."""
    without_punctuation = _NOT_WORD_PART.sub("", _LOOSE_APOSTROPHE.sub("", text))
    return len(without_punctuation.split())


def count_letters(text: str) -> int:
    """Count the word characters (letters, digits, underscore) of ``text``."""
    return len(_WORD_CHARACTER.findall(text))


def count_sentences(text: str) -> int:
    """Count the sentences longer than two words, and at least 1 unless empty."""
    if not text:
        return 0
    counted = sum(
        count_words(sentence) > MAX_SKIPPED_SENTENCE_WORDS
        for sentence in _SENTENCE.findall(text)
    )
    return max(1, counted)


def words_per_sentence(text: str) -> float:
    """Return the mean sentence length in words, or 0.0 for an empty text."""
    sentences = count_sentences(text)
    if sentences == 0:
        return 0.0
    return count_words(text) / sentences


def coleman_liau_index(text: str) -> float:
    """Return the Coleman-Liau index, a US school grade, or 0.0 for no words.

    The index is 0.058 * L - 0.296 * S - 15.8, where L is letters and S is
    sentences per 100 words. The arithmetic runs in textstat's order, so the
    floats match to the last bit.
    """
    words = count_words(text)
    if words == 0:
        return 0.0
    letters_per_100 = count_letters(text) / words * 100
    sentences_per_100 = count_sentences(text) / words * 100
    if letters_per_100 == 0 or sentences_per_100 == 0:
        return 0.0
    return (0.058 * letters_per_100) - (0.296 * sentences_per_100) - 15.8
