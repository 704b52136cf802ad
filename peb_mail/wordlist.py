"""Compact English word list with frequencies and pyspellchecker 0.9's lookups.

pyspellchecker's ``SpellChecker(language="en")`` keeps its 160,000 words as a
dict of Python strings and loads them with ``json.loads``, which added about
39 MiB of peak RSS on the development machine. This module reads the same file,
``spellchecker/resources/en.json.gz``, into:

- one bytearray with the UTF-8 words in sorted order, and an array of the
  offsets where each word starts,
- an array of the words' frequencies in the same order,
- a Bloom filter (1 MiB) on Python's string hash, so most strings that are not
  words are rejected without a binary search.

Together they take about 3.6 MiB. A lookup that passes the filter is confirmed
by a binary search on the words, so results are exact and do not depend on
the per-process hash seed: only the speed does.

``known``, ``candidates`` and ``edit_distance_1`` follow the rules of
pyspellchecker 0.9.1's methods of the same names with its defaults (English,
case-insensitive, edit distance 2), so the grader's results are unchanged.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import logging
import re
import string
from array import array
from collections.abc import Iterable, Mapping
from typing import BinaryIO

logger = logging.getLogger(__name__)

# The Bloom filter has 2**23 bits (1 MiB) and sets two of them per word. With
# 160,000 words, an estimated 1 in 700 strings that are not words passes it.
_FILTER_BITS_LOG2 = 23
_FILTER_MASK = (1 << _FILTER_BITS_LOG2) - 1
# One line of pyspellchecker's file: '"word": count,' (no comma on the last
# entry). Other layouts, and words with JSON escapes, take the slow path.
_ENTRY_LINE = re.compile(rb'^"([^"\\\n]*)": (\d+),?$', re.MULTILINE)
# Reading 8 KiB blocks of lines kept the loader's peak about 4 MiB lower than
# 64 KiB blocks on the development machine.
_BLOCK_BYTES = 1 << 13
# Strings that float() parses but that pyspellchecker still checks.
_FLOAT_NAMES = ("nan", "inf", "infinity")


class WordList:
    """Sorted English words with their corpus frequencies."""

    __slots__ = ("_words", "_starts", "_frequencies", "_filter", "_letters", "_longest")

    def __init__(
        self,
        words: bytearray,
        starts: array,
        frequencies: array,
        bloom_filter: bytearray,
        longest_word_length: int,
    ) -> None:
        """Wrap sorted UTF-8 ``words``: word i is ``words[starts[i]:starts[i + 1]]``.

        Build a list with ``load_word_list`` or ``word_list_from_counts``.
        """
        self._words = words
        self._starts = starts
        self._frequencies = frequencies
        self._filter = bloom_filter
        self._longest = longest_word_length
        # Edits insert and replace only the characters found in the words.
        self._letters = frozenset(words.decode("utf-8"))

    def __len__(self) -> int:
        return len(self._frequencies)

    @property
    def letters(self) -> frozenset[str]:
        """The characters that occur in the words."""
        return self._letters

    @property
    def longest_word_length(self) -> int:
        """The length in characters of the longest word."""
        return self._longest

    def index(self, word: str) -> int:
        """Return the position of ``word`` in sorted order, or -1 if absent.

        The lookup is case-sensitive, and the words are stored in lower case.
        """
        word_hash = hash(word)
        bits = self._filter
        bit = word_hash & _FILTER_MASK
        if not bits[bit >> 3] >> (bit & 7) & 1:
            return -1
        bit = (word_hash >> 32) & _FILTER_MASK
        if not bits[bit >> 3] >> (bit & 7) & 1:
            return -1
        return self._search(word)

    def _search(self, word: str) -> int:
        key = word.encode("utf-8", "surrogatepass")
        words, starts = self._words, self._starts
        low, high = 0, len(starts) - 1
        while low < high:
            middle = (low + high) // 2
            if words[starts[middle] : starts[middle + 1]] < key:
                low = middle + 1
            else:
                high = middle
        if low < len(starts) - 1 and words[starts[low] : starts[low + 1]] == key:
            return low
        return -1

    def __contains__(self, word: str) -> bool:
        """Check ``word`` in lower case, like ``SpellChecker.__contains__``."""
        return self.index(word.lower()) >= 0

    def frequency(self, word: str) -> int:
        """Return the count of ``word`` in lower case, or 0 for an unknown word."""
        index = self.index(word.lower())
        return self._frequencies[index] if index >= 0 else 0

    def should_check(self, word: str) -> bool:
        """Tell whether pyspellchecker would look ``word`` up at all.

        Single punctuation marks, numbers and strings more than 3 characters
        longer than the longest word are never known and never corrected.
        """
        if len(word) == 1 and word in string.punctuation:
            return False
        if len(word) > self._longest + 3:
            return False
        if word.lower() in _FLOAT_NAMES:
            return True
        try:
            float(word)
        except ValueError:
            return True
        return False

    def known(self, words: Iterable[str]) -> set[str]:
        """Return the lower-cased ``words`` that are in the list."""
        found: set[str] = set()
        for word in words:
            lowered = word.lower()
            if self.index(lowered) >= 0 and self.should_check(lowered):
                found.add(lowered)
        return found

    def edit_distance_1(self, word: str) -> set[str]:
        """Return every string one delete, swap, replace or insert from ``word``.

        Replaced and inserted characters come from ``letters``.
        """
        lowered = word.lower()
        if not self.should_check(lowered):
            return {lowered}
        letters = self._letters
        splits = [(lowered[:i], lowered[i:]) for i in range(len(lowered) + 1)]
        edits = {left + right[1:] for left, right in splits if right}
        edits.update(
            left + right[1] + right[0] + right[2:]
            for left, right in splits
            if len(right) > 1
        )
        edits.update(
            left + letter + right[1:]
            for left, right in splits
            if right
            for letter in letters
        )
        edits.update(
            left + letter + right for left, right in splits for letter in letters
        )
        return edits

    def candidates(self, word: str) -> set[str] | None:
        """Return the known words closest to ``word``, up to edit distance 2.

        A known word, or one that is never checked, is its own only candidate.
        Words at distance 2 are tried only when none is at distance 1, and
        None means that none is at distance 2 either.
        """
        if self.known([word]) or not self.should_check(word):
            return {word}
        first_edits = self.edit_distance_1(word)
        found = self.known(first_edits)
        if found:
            return found

        second: set[str] = set()
        for edit in first_edits:
            if self.should_check(edit):
                second.update(self.known(self.edit_distance_1(edit.lower())))
        return self.known(second) or None


class _UnexpectedLayout(Exception):
    """The entries are not one sorted, lower-case JSON entry per line."""


def _build(entries: Iterable[tuple[bytes, bytes | int]]) -> WordList:
    """Build a list from lower-case UTF-8 words in strictly increasing order.

    Raises _UnexpectedLayout at the first word out of order.
    """
    words = bytearray()
    starts = array("I", [0])
    frequencies = array("I")
    bloom_filter = bytearray(1 << (_FILTER_BITS_LOG2 - 3))
    mask = _FILTER_MASK
    longest = 0
    previous = None
    # Local names for the bound methods save about a fifth of the load time.
    add_start = starts.append
    add_frequency = frequencies.append
    for encoded, count in entries:
        if previous is not None and encoded <= previous:
            raise _UnexpectedLayout
        previous = encoded
        words += encoded
        add_start(len(words))
        try:
            add_frequency(int(count))
        except OverflowError:
            # Counts outside 0 to 2**32 - 1 need signed 8-byte items.
            frequencies = array("q", frequencies)
            add_frequency = frequencies.append
            add_frequency(int(count))
        word = encoded.decode("utf-8")
        word_hash = hash(word)
        bit = word_hash & mask
        bloom_filter[bit >> 3] |= 1 << (bit & 7)
        bit = (word_hash >> 32) & mask
        bloom_filter[bit >> 3] |= 1 << (bit & 7)
        if len(word) > longest:
            longest = len(word)
    return WordList(words, starts, frequencies, bloom_filter, longest)


def _entries_from_lines(stream: BinaryIO) -> Iterable[tuple[bytes, bytes]]:
    """Yield the words and counts of a JSON object with one entry per line.

    The stream is read in blocks of whole lines, and each block is parsed with
    one regular expression call. Raises _UnexpectedLayout when a line is not
    an entry or a word is not in lower case.
    """
    if stream.readline().strip() != b"{":
        raise _UnexpectedLayout
    pending = b""
    while chunk := stream.read(_BLOCK_BYTES):
        block = pending + chunk
        end = block.rfind(b"\n") + 1
        block, pending = block[:end], block[end:]
        entries = _ENTRY_LINE.findall(block)
        if len(entries) != block.count(b"\n"):
            raise _UnexpectedLayout
        # pyspellchecker lower-cases every word. No character of the block
        # changes under lower() exactly when no word in it changes.
        text = block.decode("utf-8")
        if text.lower() != text:
            raise _UnexpectedLayout
        yield from entries
    if pending.strip() != b"}":
        raise _UnexpectedLayout


def word_list_from_counts(counts: Mapping[str, int]) -> WordList:
    """Build a list from word counts, adding up words that differ only in case."""
    lowered: dict[str, int] = {}
    for word, count in counts.items():
        key = word.lower()
        lowered[key] = lowered.get(key, 0) + count
    return _build(
        sorted((word.encode("utf-8"), count) for word, count in lowered.items())
    )


def load_word_list(stream: BinaryIO) -> WordList:
    """Build a list from a JSON object of word counts, as pyspellchecker ships.

    pyspellchecker's English file has one sorted, lower-case entry per line,
    and is read a line at a time without holding all words as Python objects.
    Any other JSON object is read again from the start of the seekable
    ``stream`` with ``json.load`` and sorted, at more memory.
    """
    try:
        return _build(_entries_from_lines(stream))
    except _UnexpectedLayout:
        stream.seek(0)
        return word_list_from_counts(json.load(stream))


@functools.cache
def english_word_list() -> WordList:
    """Load pyspellchecker's English word list once per process.

    The first call took about 0.2 s on the development machine, so async
    callers run it in a thread.
    """
    resource = importlib.resources.files("spellchecker") / "resources" / "en.json.gz"
    logger.info("Loading the English word list from %s", resource)
    with resource.open("rb") as compressed, gzip.open(compressed) as stream:
        return load_word_list(stream)
