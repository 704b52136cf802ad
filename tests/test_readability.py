"""Coleman-Liau index and words per sentence, checked against hand counts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peb_mail.readability import (
    coleman_liau_index,
    count_letters,
    count_sentences,
    count_words,
    words_per_sentence,
)

# 9 words, 27 letters, 2 sentences.
PLAIN = "The cat sat on the mat. It was happy."


def test_plain_text_counts() -> None:
    assert count_words(PLAIN) == 9
    assert count_letters(PLAIN) == 27
    assert count_sentences(PLAIN) == 2


def test_plain_text_words_per_sentence() -> None:
    assert words_per_sentence(PLAIN) == 4.5


def test_plain_text_coleman_liau() -> None:
    # L = 27 / 9 * 100 = 300, S = 2 / 9 * 100 = 22.22...
    expected = 0.058 * 300 - 0.296 * (200 / 9) - 15.8
    assert coleman_liau_index(PLAIN) == pytest.approx(expected)
    assert coleman_liau_index(PLAIN) == pytest.approx(-4.97778, abs=1e-5)


def test_contraction_apostrophe_kept() -> None:
    # "'no'" loses both quotes, "didn't" stays one word of 5 letters.
    text = "I said 'no' and didn't go."
    assert count_words(text) == 6
    assert count_letters(text) == 17
    assert words_per_sentence(text) == 6.0


def test_hyphen_and_decimal_join_parts() -> None:
    assert count_words("a well-known fact") == 3
    assert count_letters("well-known") == 9
    assert count_words("3.5 apples") == 2
    assert count_letters("3.5 apples") == 8


def test_short_sentences_not_counted() -> None:
    # "Hi Tom." and "Thanks!" have two words or fewer.
    text = "Hi Tom. Thanks! The report is ready today."
    assert count_sentences(text) == 1
    assert words_per_sentence(text) == 8.0


def test_empty_text_scores_zero() -> None:
    assert count_sentences("") == 0
    assert words_per_sentence("") == 0.0
    assert coleman_liau_index("") == 0.0


def test_punctuation_only_text() -> None:
    assert count_words("!!! ...") == 0
    assert count_sentences("!!! ...") == 1
    assert words_per_sentence("!!! ...") == 0.0
    assert coleman_liau_index("!!! ...") == 0.0


def test_grader_import_skips_textstat() -> None:
    code = "import sys, peb_mail.offline_grader; print('textstat' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
