"""Checks that the offline grader runs on one email: parsing, word lists and findings.

Everything here is deterministic and local: no network and no randomness.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from peb_mail import readability
from peb_mail.models import (
    KeyPoint,
    Scenario,
    Submission,
)
from peb_mail.wordlist import WordList, english_word_list

logger = logging.getLogger(__name__)

# Length limits in words of the body, without greeting and sign-off.
SHORT_BODY_WORDS = 25
VERY_SHORT_BODY_WORDS = 10
LONG_BODY_WORDS = 300
# A single paragraph this long, or any paragraph past WALL_PARAGRAPH_WORDS,
# is a wall of text for a reader on a phone.
WALL_SINGLE_PARAGRAPH_WORDS = 80
WALL_PARAGRAPH_WORDS = 120
LONG_SENTENCE_WORDS = 35
HARD_AVERAGE_SENTENCE_WORDS = 25
# Coleman-Liau index, a US school grade. Grade 14 (university) is our estimate
# of where B1-B2 readers start to struggle, not a published threshold.
HARD_READING_GRADE = 14.0
# Target paragraph size when the revision splits a wall of text.
REVISION_PARAGRAPH_WORDS = 45
EVIDENCE_CHARS = 80

FORMAL_GREETING = re.compile(
    r"^\s*(dear|hi|hello|good\s+(morning|afternoon|evening)|greetings"
    r"|to\s+whom\s+it\s+may\s+concern)\b",
    re.IGNORECASE,
)
CASUAL_GREETING = re.compile(r"^\s*(hey+|hiya|yo|sup|heya)\b", re.IGNORECASE)
CLOSINGS = (
    "all the best",
    "best",
    "best regards",
    "best wishes",
    "cheers",
    "kind regards",
    "many thanks",
    "regards",
    "respectfully",
    "sincerely",
    "thank you",
    "thank you very much",
    "thanks",
    "thanks again",
    "thanks so much",
    "warm regards",
    "warmest regards",
    "with thanks",
    "yours faithfully",
    "yours sincerely",
    "yours truly",
)
# Casual short forms and the formal words the revision puts in their place.
CASUAL_WORDS: dict[str, str] = {
    "asap": "as soon as possible",
    "btw": "by the way",
    "coz": "because",
    "cuz": "because",
    "gonna": "going to",
    "gotta": "have to",
    "idk": "I do not know",
    "lol": "",
    "nope": "no",
    "omg": "",
    "pls": "please",
    "plz": "please",
    "thanx": "thanks",
    "thnx": "thanks",
    "thx": "thanks",
    "u": "you",
    "ur": "your",
    "wanna": "want to",
    "whatever": "",
    "ya": "you",
    "yeah": "yes",
    "yep": "yes",
}
CASUAL_PATTERN = re.compile(
    r"(?<![\w'’])(" + "|".join(sorted(CASUAL_WORDS, key=len, reverse=True)) + r")"
    r"(?![\w'’])",
    re.IGNORECASE,
)
RUDE_PATTERN = re.compile(
    r"\b(not my problem|i don'?t care|deal with it|hurry up|shut up|stupid|"
    r"ridiculous|useless|nonsense|obviously|as i already said|as i said before)\b",
    re.IGNORECASE,
)
BLAME_PATTERN = re.compile(
    r"\b(not my fault|your fault|(it|that) wasn'?t me|blame|the system (did|made|"
    r"messed)|the software (did|made|messed)|someone else (did|made)|"
    r"you should have|because of (you|them|the team))\b",
    re.IGNORECASE,
)
RESPONSIBILITY_PATTERN = re.compile(
    r"\b(i made (a|an|the) (mistake|error|typo)|my (mistake|error|fault)|"
    r"i (will|'ll|am going to) (fix|correct|update|change|send|resend)|"
    r"i have (fixed|corrected|updated)|i apologi[sz]e|i take (full )?"
    r"responsibility|that was my|i entered|i typed|i mistyped)\b",
    re.IGNORECASE,
)
APOLOGY_PATTERN = re.compile(
    r"\b(sorry|apologi[sz]e|apologies|i regret)\b", re.IGNORECASE
)
THANKS_PATTERN = re.compile(r"\b(thank|thanks|grateful|appreciate)", re.IGNORECASE)
POLITE_PATTERN = re.compile(
    r"\b(please|thank|thanks|would|could|kindly|appreciate|grateful)\b",
    re.IGNORECASE,
)
NEXT_STEP_PATTERN = re.compile(
    r"\b(i will|i'll|i am going to|we will|we'll|i can|shall i|"
    r"please (let me know|confirm|send|check|reply|advise)|let me know|"
    r"could you|can you|would you|looking forward|"
    r"by (monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|"
    r"today|tonight|the end of|end of|next week|noon|\d))",
    re.IGNORECASE,
)
PURPOSE_PATTERN = re.compile(
    r"\b(i am writing|i'm writing|i write|this is to|i would like to|i'd like to|"
    r"i want to (let you know|tell you|inform)|i need to (let you know|tell you)|"
    r"this email is|following up|to follow up|i am contacting)\b",
    re.IGNORECASE,
)
ATTACHMENT_PATTERN = re.compile(
    r"\b(attach(ed|ment|ments|ing)?|enclosed)\b", re.IGNORECASE
)
SHOUT_PATTERN = re.compile(r"(?<![\w'’])[A-Z]{3,}(?![\w'’])")
EXCLAMATION_RUN = re.compile(r"!{2,}")
LOWERCASE_I = re.compile(r"(?<![\w'’])i(?=[\s'’,.!?])")
ACRONYMS = frozenset(
    {"CEO", "CFO", "CTO", "EUR", "FAQ", "GBP", "KPI", "PDF", "USD", "VAT", "HR"}
)
VAGUE_SUBJECTS = frozenset(
    {
        "email",
        "fyi",
        "follow up",
        "hello",
        "help",
        "hey",
        "hi",
        "important",
        "info",
        "issue",
        "message",
        "oops",
        "problem",
        "question",
        "quick question",
        "sorry",
        "update",
        "urgent",
    }
)
REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd)\s*:\s*)+", re.IGNORECASE)
# The lookbehind tries an address only at the start of a whitespace-separated
# token, which finds the same matches. Without it, a long run of non-space
# characters with no "@" took quadratic time (40,000 ">" took about 4 s).
EMAIL_OR_URL = re.compile(r"(?<!\S)\S+@\S+|https?://\S+|www\.\S+", re.IGNORECASE)
SPELL_TOKEN = re.compile(r"(?<![\w$€£@'’-])[A-Za-z][A-Za-z'’-]*(?![\w$€£@])")
WORD_PATTERN = re.compile(r"[\w$€£][\w'’$€£.,%-]*")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
# Amounts: "$14,200", "14.2k", "15%", "#58213", "300". Digits next to ":" or
# followed by "am"/"pm" are times and are skipped.
AMOUNT_PATTERN = re.compile(
    r"(?<![\w:.,/-])(?P<currency>[$€£]\s?)?#?"
    r"(?P<digits>\d{1,3}(?:[,. ]\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?P<thousands>\s?k\b)?(?P<percent>\s?%|\s?per\s?cent\b|\s?percent\b)?"
    r"(?![\d:/]|\.\d|\s?(am|pm|a\.m|p\.m)\b)",
    re.IGNORECASE,
)
MONTH_PATTERN = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b\s?",
    re.IGNORECASE,
)
MONTH_BEFORE = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+$"
)
MONEY_WORD = re.compile(r"\s?(dollars?|euros?|pounds?|usd|eur|gbp)\b")
DATE_SUFFIX = re.compile(r"(st|nd|rd|th)\b", re.IGNORECASE)
# Words that show a sentence gives a value as the right one.
CORRECT_CUE = re.compile(
    r"\b(correct|right|should be|actual|real|accurate|updated|new (number|figure|"
    r"total|amount)|is now)\b",
    re.IGNORECASE,
)
# Words that show a number is a difference ("$1,800 higher").
DIFFERENCE_CUE = re.compile(
    r"\b(higher|lower|more|less|difference|increase|decrease|bigger|smaller)\b",
    re.IGNORECASE,
)
# Plain numbers below this are not checked against the facts.
MIN_CHECKED_COUNT = 100
# Sums and differences are built for at most this many money values.
MAX_MONEY_VALUES = 40
ARTEFACT_READ_CHARS = 100_000
COMMON_WORDS = frozenset(
    {
        "that",
        "this",
        "with",
        "from",
        "have",
        "will",
        "your",
        "about",
        "there",
        "their",
        "which",
        "would",
        "could",
        "should",
        "because",
        "correct",
        "number",
        # Question words and pronouns would match any sentence of ``knows``.
        "what",
        "when",
        "where",
        "whom",
        "whose",
        "them",
        "they",
        "then",
        "than",
        "were",
        "been",
        "does",
        "also",
        "some",
        "into",
        "just",
        "very",
        "shall",
        "here",
    }
)
# Keywords that name a number, a day or a time; a key point whose keywords are
# mostly such words asks for a concrete detail.
CONCRETE_KEYWORD = re.compile(
    r"\d|\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|today|"
    r"tomorrow|noon|midnight|morning|afternoon|evening)\b",
    re.IGNORECASE,
)
VOWELS = frozenset("aeiou")
APOSTROPHES = re.compile(r"[’‘`´]")
# Contractions expand to one form on both sides of a keyword match. The forms
# without an apostrophe ("cant", "dont") are the ones learners often type.
CONTRACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(can'?t|cannot)\b"), "can not"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (
        re.compile(
            r"\b(do|does|did|is|are|was|were|has|have|had|could|would|should|"
            r"must|need)n'?t\b"
        ),
        r"\1 not",
    ),
    (re.compile(r"\bi'?m\b"), "i am"),
    (re.compile(r"\b(i|you|we|they|he|she|it)'ll\b"), r"\1 will"),
    (re.compile(r"\b(i|you|we|they)'ve\b"), r"\1 have"),
    (re.compile(r"\bive\b"), "i have"),
    (re.compile(r"\b(i|you|we|they|he|she)'d\b"), r"\1 would"),
    (re.compile(r"\b(you|we|they)'?re\b"), r"\1 are"),
    (re.compile(r"\b(it|that|what|there|here)'s\b"), r"\1 is"),
    (re.compile(r"\blet's\b"), "let us"),
)
# Contractions typed without the apostrophe, and their correct form. Some of
# them ("cant", "wont") are rare English words, so the word list accepts them.
MISSING_APOSTROPHE: dict[str, str] = {
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "im": "I'm",
    "isnt": "isn't",
    "ive": "I've",
    "shouldnt": "shouldn't",
    "theyre": "they're",
    "wasnt": "wasn't",
    "werent": "weren't",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
}
HONORIFICS = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof"})
# British forms that pyspellchecker 0.9's English list lacks and that no suffix
# rule below turns into a listed American form.
BRITISH_WORDS = frozenset({"cheque", "cheques", "programme", "programmes"})
BRITISH_SUFFIXES = (
    ("isation", "ization"),
    ("ising", "izing"),
    ("ised", "ized"),
    ("ises", "izes"),
    ("ise", "ize"),
    ("yse", "yze"),
    ("ysed", "yzed"),
    ("our", "or"),
    ("ours", "ors"),
    ("oured", "ored"),
    ("tre", "ter"),
    ("tres", "ters"),
    ("logue", "log"),
    ("lled", "led"),
    ("lling", "ling"),
    ("ence", "ense"),
)


def spell_checker() -> WordList:
    """Return the English word list that all graders share, loading it once."""
    return english_word_list()


@dataclass(frozen=True)
class Misspelling:
    """A word missing from the word list and its most frequent close match."""

    word: str
    correction: str


@dataclass
class ParsedEmail:
    """The student's text split into greeting, body and sign-off."""

    text: str
    greeting_line: str = ""
    greeting_is_casual: bool = False
    # True when the greeting line also carries body text ("Hi Ana, I am ...").
    greeting_inline: bool = False
    closing_line: str = ""
    signed_name: str = ""
    body: str = ""
    paragraphs: list[str] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    body_words: int = 0


@dataclass(frozen=True)
class WrongNumber:
    """An amount in the student's text that contradicts a key fact."""

    # The amount as the student wrote it, such as "$2,000".
    written: str
    # The fact's amount as the scenario writes it, such as "$1,800".
    expected: str
    fact: KeyPoint
    sentence: str


@dataclass
class Findings:
    """Everything the checks found, shared by the scores and the texts."""

    email: ParsedEmail
    normalised_text: str
    # The scenario's student_error flag: the situation is the student's own
    # mistake, so an apology and responsibility are expected.
    is_error_scenario: bool
    expects_thanks: bool
    covered_facts: list[KeyPoint]
    missing_facts: list[KeyPoint]
    covered_points: list[KeyPoint]
    missing_points: list[KeyPoint]
    casual_words: list[str]
    rude_phrases: list[str]
    shouted_words: list[str]
    # Lower-case parts of the counterpart's and the student's names.
    name_parts: set[str]
    exclamation_runs: int
    has_apology: bool
    has_thanks: bool
    has_responsibility: bool
    blame_phrases: list[str]
    has_next_step: bool
    has_purpose: bool
    attachment_missing: bool
    misspellings: list[Misspelling]
    long_sentences: list[str]
    reading_grade: float
    words_per_sentence: float
    lowercase_i: bool
    lowercase_starts: list[str]
    repeated_word: str
    # The student's text with spelling corrections and straight apostrophes.
    corrected_text: str = ""
    # Amounts the student writes that contradict a key fact.
    wrong_numbers: list[WrongNumber] = field(default_factory=list)
    # Sentences of the body that end with a question mark.
    questions: list[str] = field(default_factory=list)


def normalise(text: str) -> str:
    """Lower-case the text, unify apostrophes, expand contractions, collapse spaces.

    Keywords and the student's text go through the same steps, so "i cant",
    "I can't" and "I cannot" all match the keyword "can't".
    """
    # One grading normalises the same scenario keywords about 80 times, so
    # short texts are cached; long ones are student text, seen once.
    if len(text) <= 200:
        return _normalise_short(text)
    return _normalise(text)


@functools.lru_cache(maxsize=4096)
def _normalise_short(text: str) -> str:
    return _normalise(text)


def _normalise(text: str) -> str:
    lowered = APOSTROPHES.sub("'", text).lower()
    for pattern, replacement in CONTRACTIONS:
        lowered = pattern.sub(replacement, lowered)
    return " ".join(lowered.split())


def covers(normalised_text: str, point: KeyPoint) -> bool:
    """Return whether the normalised text contains any keyword of the point."""
    keywords = point.keywords or (point.text,)
    return any(normalise(keyword) in normalised_text for keyword in keywords)


def apply_corrections(text: str, misspellings: Iterable[Misspelling]) -> str:
    """Replace each misspelt word with its correction, keeping its capital."""
    corrected = text
    for item in misspellings:
        corrected = re.sub(
            rf"(?<![\w'’]){re.escape(item.word)}(?![\w'’])",
            lambda match, fix=item.correction: match_case(match.group(), fix),
            corrected,
        )
    return corrected


def match_case(original: str, replacement: str) -> str:
    # "ASAP" becomes "as soon as possible", but "Pls" becomes "Please".
    title_case = original[:1].isupper() and not original[1:].isupper()
    if (title_case or original == "U") and replacement:
        return replacement[0].upper() + replacement[1:]

    return replacement


def quote(text: str, start: int, end: int) -> str:
    """Cut a short quotation around text[start:end], trimmed to whole words."""
    margin = max(0, (EVIDENCE_CHARS - (end - start)) // 2)
    left = max(0, start - margin)
    right = min(len(text), end + margin)
    if left > 0:
        space = text.find(" ", left, start)
        left = space + 1 if space != -1 else left

    if right < len(text):
        space = text.rfind(" ", end, right)
        right = space if space != -1 else right
    snippet = " ".join(text[left:right].split())
    return snippet[: EVIDENCE_CHARS + 20]


def first_quote(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return quote(text, match.start(), match.end()) if match else ""


def short(text: str) -> str:
    """Trim a line or sentence to at most EVIDENCE_CHARS characters."""
    flat = " ".join(text.split())
    if len(flat) <= EVIDENCE_CHARS:
        return flat

    return flat[:EVIDENCE_CHARS].rsplit(" ", 1)[0] + " ..."


def count_words(text: str) -> int:
    return len(WORD_PATTERN.findall(text))


def first_name(full_name: str) -> str:
    """Return the given name, keeping the honorific form ("Ms Lopez") if used."""
    parts = full_name.split()
    if not parts:
        return ""

    if parts[0].rstrip(".").lower() in HONORIFICS and len(parts) > 1:
        return " ".join(parts[:2]) if len(parts) == 2 else parts[1]

    return parts[0]


def scenario_text(scenario: Scenario) -> str:
    """Join every text of the scenario that can mention the counterpart."""
    parts = [
        scenario.title,
        scenario.environment,
        scenario.task,
        scenario.grading_focus,
        scenario.counterpart.knows,
        scenario.starter_body or "",
    ]
    for point in (*scenario.key_facts, *scenario.key_points):
        parts.extend((point.text, point.example, point.question))
    for artefact in scenario.artefacts:
        parts.extend((artefact.name, artefact.text or ""))
    return "\n".join(parts)


@functools.lru_cache(maxsize=64)
def counterpart_first_name(scenario: Scenario) -> str:
    """Return the name that greets the counterpart, such as "Mei Lin".

    ``first_name`` takes the first word, which is wrong for two-word given
    names. Scenarios have no field for the given name, so this rule infers it:
    when the name has three or more words without an honorific and the
    scenario texts use the first two words without the third ("sent Mei Lin
    an email" for "Mei Lin Tan"), both words are the given name.
    """
    full = scenario.counterpart.name
    parts = full.split()
    if len(parts) >= 3 and parts[0].rstrip(".").lower() not in HONORIFICS:
        pair = re.escape(" ".join(parts[:2]))
        rest = re.escape(parts[2])
        alone = re.compile(rf"\b{pair}\b(?!\s+{rest}\b)")
        if alone.search(scenario_text(scenario)):
            return " ".join(parts[:2])
    return first_name(full)


def match_closing(line: str) -> tuple[bool, str]:
    """Return whether the line is a sign-off and any name that follows on it."""
    stripped = line.strip()
    lowered = stripped.lower().rstrip(",.!")
    for closing in sorted(CLOSINGS, key=len, reverse=True):
        if lowered == closing:
            return True, ""
        if lowered.startswith(closing + ","):
            name = stripped[len(closing) + 1 :].strip(" ,.!")
            if name and len(name.split()) <= 4:
                return True, name

    return False, ""


def looks_like_name(line: str) -> bool:
    words = line.strip().split()
    if not 1 <= len(words) <= 4:
        return False

    if any(char in line for char in ".!?:;"):
        return False

    return words[0][0].isupper()


def parse_email(text: str) -> ParsedEmail:
    """Split the text into greeting, body paragraphs and sign-off."""
    email = ParsedEmail(text=text)
    lines = text.strip().splitlines()
    filled = [index for index, line in enumerate(lines) if line.strip()]
    body_start = 0
    body_end = len(lines)

    first = lines[filled[0]].strip()
    if FORMAL_GREETING.match(first) or CASUAL_GREETING.match(first):
        email.greeting_is_casual = bool(CASUAL_GREETING.match(first))
        # A long greeting line carries the first sentence of the body too, so
        # only the words before the first comma count as the greeting.
        email.greeting_inline = count_words(first) > 6
        if email.greeting_inline:
            email.greeting_line = first.split(",", 1)[0][:40].strip() + ","
        else:
            email.greeting_line = first
            body_start = filled[0] + 1

    # The sign-off sits in the last three filled lines, with the name on it
    # or on the line after it.
    for position in range(len(filled) - 1, max(-1, len(filled) - 4), -1):
        index = filled[position]
        if index < body_start:
            break
        is_closing, name = match_closing(lines[index])
        if not is_closing:
            continue
        email.closing_line = lines[index].strip()
        following = [lines[i].strip() for i in filled[position + 1 :]]
        if name:
            email.signed_name = name
        elif following and looks_like_name(following[0]):
            email.signed_name = following[0]
        body_end = index
        break

    if not email.closing_line and looks_like_name(lines[filled[-1]]):
        last = filled[-1]
        if last >= body_start and len(filled) > 1:
            email.signed_name = lines[last].strip()
            body_end = last

    email.body = "\n".join(lines[body_start:body_end]).strip()
    email.paragraphs = [
        part.strip() for part in PARAGRAPH_SPLIT.split(email.body) if part.strip()
    ]
    email.sentences = [
        " ".join(part.split())
        for part in SENTENCE_SPLIT.split(email.body)
        if part.strip()
    ]
    email.body_words = count_words(email.body)
    return email


def scenario_vocabulary(scenario: Scenario, submission: Submission) -> set[str]:
    """Collect the lower-case words of the scenario, which spelling ignores."""
    cached = _SCENARIO_WORDS.get(id(scenario))
    if cached is None or cached[0] is not scenario:
        cached = (scenario, frozenset(_words_of(_scenario_texts(scenario))))
        _SCENARIO_WORDS[id(scenario)] = cached
    return set(cached[1]) | _words_of([submission.student_name])


# The words of each scenario by id(), with the scenario to check that the id
# was not reused by another object. Scenarios are loaded once per process.
_SCENARIO_WORDS: dict[int, tuple[Scenario, frozenset[str]]] = {}


def _scenario_texts(scenario: Scenario) -> list[str]:
    parts: list[str] = [
        scenario.title,
        scenario.environment,
        scenario.task,
        scenario.grading_focus,
        scenario.counterpart.name,
        scenario.counterpart.role,
        scenario.counterpart.knows,
        scenario.starter_subject or "",
        scenario.starter_body or "",
        *scenario.subject_keywords,
    ]
    for point in (*scenario.key_facts, *scenario.key_points):
        parts.append(point.text)
        parts.extend(point.keywords)

    for artefact in scenario.artefacts:
        parts.append(artefact.name)
        parts.append(artefact.text or "")
    return parts


def _words_of(parts: list[str]) -> set[str]:
    words: set[str] = set()
    for part in parts:
        for token in re.findall(r"[A-Za-z][A-Za-z'’-]*", part):
            words.add(token.lower().replace("’", "'"))
            words.update(piece for piece in token.lower().split("-") if piece)

    return words


def is_british_form(word: str, checker: WordList) -> bool:
    if word in BRITISH_WORDS:
        return True

    for british, american in BRITISH_SUFFIXES:
        if word.endswith(british):
            variant = word[: -len(british)] + american
            if checker.known([variant]):
                return True

    return False


MAX_CORRECTION_LOOKUPS = 25
MAX_CHECKED_WORD_LENGTH = 15


def best_correction(word: str, checker: WordList) -> str | None:
    """Return the most frequent candidate, breaking ties alphabetically.

    Taking the maximum of the candidate set, as pyspellchecker's
    SpellChecker.correction() does, could give a different word on a frequency
    tie with another string hash seed.
    """
    candidates = checker.candidates(word)
    if not candidates:
        return None
    ranked = sorted(candidates, key=lambda item: (-checker.frequency(item), item))
    best = ranked[0]
    return None if best == word else best


def find_misspellings(
    text: str, vocabulary: set[str], checker: WordList
) -> list[Misspelling]:
    """List misspelt words in order of first appearance.

    Capitalised words are skipped as probable names, so a misspelt word at the
    start of a sentence is missed. Words with no close match in the list are
    taken as jargon and skipped too.
    """
    cleaned = EMAIL_OR_URL.sub(" ", text)
    found: dict[str, Misspelling] = {}
    # Looking up corrections for an unknown word of 8 to 11 letters with no
    # match at edit distance 1 took 0.3 to 0.6 s on the development machine,
    # so garbled text could take minutes. Only this many
    # unknown words get a lookup, and words longer than a normal English word
    # are taken as codes or jargon.
    lookups_left = MAX_CORRECTION_LOOKUPS
    for match in SPELL_TOKEN.finditer(cleaned):
        token = match.group().replace("’", "'").strip("'-")
        if not token or token[0].isupper():
            continue
        for piece in token.split("-"):
            word = piece.lower()
            if word.endswith("'s"):
                word = word[:-2]
            if len(word) < 2 or word in found:
                continue
            if word in MISSING_APOSTROPHE:
                found[word] = Misspelling(
                    word=piece, correction=MISSING_APOSTROPHE[word]
                )
                continue
            if word in vocabulary:
                continue
            if word in CASUAL_WORDS or checker.known([word]):
                continue
            if is_british_form(word, checker):
                continue
            if len(word) > MAX_CHECKED_WORD_LENGTH or lookups_left <= 0:
                continue
            lookups_left -= 1
            correction = best_correction(word, checker)
            if correction:
                found[word] = Misspelling(word=piece, correction=correction)

    return list(found.values())


def shouted_words(text: str, scenario_text: str) -> list[str]:
    words: list[str] = []
    for match in SHOUT_PATTERN.finditer(text):
        word = match.group()
        if word in ACRONYMS or word in scenario_text or word in words:
            continue
        words.append(word)

    return words


def repeated_word(text: str) -> str:
    match = re.search(r"\b(\w+)\s+\1\b", text, re.IGNORECASE)
    if match and not match.group(1).isdigit():
        return match.group()

    return ""


def collect_findings(
    scenario: Scenario, submission: Submission, checker: WordList
) -> Findings:
    """Run every check on the submission once.

    Keyword and phrase checks run on the text with spelling corrections
    applied, so a misspelt "sory" still counts as an apology.
    """
    text = submission.text.strip()
    email = parse_email(text)
    misspellings = find_misspellings(
        text, scenario_vocabulary(scenario, submission), checker
    )
    corrected = APOSTROPHES.sub("'", apply_corrections(text, misspellings))
    normalised_text = normalise(corrected)
    scenario_words = " ".join((scenario.title, scenario.task, scenario.grading_focus))
    scenario_text = " ".join(
        (scenario_words, scenario.starter_body or "", scenario.environment)
    )

    facts = list(scenario.key_facts)
    points = list(scenario.key_points)
    casual = []
    for match in CASUAL_PATTERN.finditer(text):
        word = match.group()
        if word.lower() not in (item.lower() for item in casual):
            casual.append(word)
    body_for_reading = email.body or text
    covered_facts = [point for point in facts if covers(normalised_text, point)]

    return Findings(
        email=email,
        normalised_text=normalised_text,
        is_error_scenario=scenario.student_error,
        expects_thanks=scenario.type == "reply" or "thank" in scenario_words.lower(),
        covered_facts=covered_facts,
        missing_facts=[point for point in facts if point not in covered_facts],
        covered_points=[point for point in points if covers(normalised_text, point)],
        missing_points=[
            point for point in points if not covers(normalised_text, point)
        ],
        casual_words=casual,
        rude_phrases=[match.group() for match in RUDE_PATTERN.finditer(text)],
        shouted_words=shouted_words(text, scenario_text),
        name_parts={
            part.lower().rstrip(".")
            for part in (
                scenario.counterpart.name + " " + submission.student_name
            ).split()
        },
        exclamation_runs=len(EXCLAMATION_RUN.findall(text)),
        has_apology=bool(APOLOGY_PATTERN.search(corrected)),
        has_thanks=bool(THANKS_PATTERN.search(corrected)),
        has_responsibility=bool(RESPONSIBILITY_PATTERN.search(corrected)),
        blame_phrases=[match.group() for match in BLAME_PATTERN.finditer(corrected)],
        has_next_step=bool(NEXT_STEP_PATTERN.search(corrected)) or "?" in email.body,
        has_purpose=bool(PURPOSE_PATTERN.search(corrected)),
        attachment_missing=bool(ATTACHMENT_PATTERN.search(text))
        and not submission.attachments,
        misspellings=misspellings,
        long_sentences=[
            sentence
            for sentence in email.sentences
            if count_words(sentence) > LONG_SENTENCE_WORDS
        ],
        reading_grade=readability.coleman_liau_index(body_for_reading),
        words_per_sentence=readability.words_per_sentence(body_for_reading),
        lowercase_i=bool(LOWERCASE_I.search(text)),
        lowercase_starts=[
            sentence for sentence in email.sentences if sentence[0].islower()
        ],
        repeated_word=repeated_word(text),
        corrected_text=corrected,
        wrong_numbers=find_wrong_numbers(scenario, email.body or text, covered_facts),
        questions=find_questions(email.body or text),
    )


def find_questions(body: str) -> list[str]:
    """List the sentences of the body that end with a question mark."""
    questions: list[str] = []
    for line in body.splitlines():
        for part in SENTENCE_SPLIT.split(line):
            sentence = " ".join(part.split())
            if sentence.endswith("?") and sentence not in questions:
                questions.append(sentence)
    return questions


@dataclass(frozen=True)
class Amount:
    """A number found in a text, with the values it can stand for."""

    text: str
    kind: str
    # "14.200" can be 14200 (European thousands) or 14.2, so a token can
    # stand for more than one value.
    values: frozenset[float]
    start: int


def parse_values(digits: str, thousands: bool) -> set[float]:
    """Read a number token such as "14,200", "14.200", "14 200" or "14.2"."""
    values: set[float] = set()
    plain = digits.replace(",", "").replace(" ", "")
    try:
        values.add(float(plain))
    except ValueError:
        pass
    if re.fullmatch(r"\d{1,3}(\.\d{3})+", digits):
        values.add(float(digits.replace(".", "")))
    if thousands:
        values = {value * 1000 for value in values}
    return values


def find_amounts(text: str) -> list[Amount]:
    """List money amounts, percentages and plain numbers, in order.

    Times ("3:00", "5 pm"), dates ("10 March", "the 14th") and years are left
    out, because students write them in too many correct ways to check.
    """
    amounts: list[Amount] = []
    for match in AMOUNT_PATTERN.finditer(text):
        digits = match.group("digits")
        before = text[max(0, match.start() - 12) : match.start()].lower()
        after = text[match.end() : match.end() + 12].lower()
        is_money = bool(match.group("currency") or MONEY_WORD.match(after))
        if not is_money and MONTH_BEFORE.search(before):
            continue
        if MONTH_PATTERN.match(after.strip()) or DATE_SUFFIX.match(after):
            continue
        if is_money:
            kind = "money"
        elif match.group("percent"):
            kind = "percent"
        else:
            kind = "count"
        values = parse_values(digits, bool(match.group("thousands")))
        if not values:
            continue
        if kind == "count" and re.fullmatch(r"(19|20)\d\d", digits):
            continue
        amounts.append(
            Amount(match.group().strip(), kind, frozenset(values), match.start())
        )
    return amounts


def read_artefact_text(scenario: Scenario) -> str:
    """Join the text of the scenario's artefacts, text files included."""
    parts: list[str] = []
    for artefact in scenario.artefacts:
        parts.append(artefact.name)
        parts.append(artefact.text or "")
        if artefact.path is not None and artefact.content_type.startswith("text/"):
            parts.append(read_small_text(str(artefact.path)))
    return "\n".join(parts)


@functools.lru_cache(maxsize=64)
def read_small_text(path: str) -> str:
    """Read a text artefact once per process; a missing file reads as empty."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(ARTEFACT_READ_CHARS)
    except OSError as error:
        logger.warning("Cannot read artefact %s for number checks: %s", path, error)
        return ""


@functools.lru_cache(maxsize=64)
def known_values(scenario: Scenario) -> frozenset[float]:
    """Collect every value the scenario mentions, with sums and differences.

    A student may give the difference of two amounts ("$1,800 more"), so sums
    and differences of the scenario's money amounts count as known too.
    """
    parts = [
        scenario.title,
        scenario.environment,
        scenario.task,
        scenario.grading_focus,
        scenario.counterpart.knows,
        scenario.starter_subject or "",
        scenario.starter_body or "",
        read_artefact_text(scenario),
    ]
    for point in (*scenario.key_facts, *scenario.key_points):
        parts.extend((point.text, point.example, point.question, *point.keywords))
    values: set[float] = set()
    money: set[float] = set()
    for amount in find_amounts("\n".join(parts)):
        values.update(amount.values)
        if amount.kind == "money":
            money.update(amount.values)
    ordered = sorted(money)[:MAX_MONEY_VALUES]
    for index, first in enumerate(ordered):
        for second in ordered[index + 1 :]:
            values.add(second - first)
            values.add(second + first)
    return frozenset(values)


def checked_kind(amount: Amount) -> bool:
    """Return whether a wrong value of this amount is worth reporting.

    Small plain numbers ("2 days", "3 hours") are left out, because students
    use them freely and they rarely are a key fact.
    """
    if amount.kind == "count":
        return max(amount.values) >= MIN_CHECKED_COUNT
    return True


def fact_amounts(fact: KeyPoint) -> tuple[list[Amount], list[Amount]]:
    """Split the fact's amounts into the right ones (in its keywords) and others."""
    right = [
        amount
        for keyword in fact.keywords
        for amount in find_amounts(keyword)
        if checked_kind(amount)
    ]
    right_values = {value for amount in right for value in amount.values}
    in_text = [amount for amount in find_amounts(fact.text) if checked_kind(amount)]
    shown = [amount for amount in in_text if amount.values & right_values]
    wrong = [amount for amount in in_text if not amount.values & right_values]
    return shown or right, wrong


def fact_difference(fact: KeyPoint, right: list[Amount]) -> Amount | None:
    """Return the gap between the fact's right and wrong amount, such as $1,800."""
    wrong = [
        amount
        for amount in find_amounts(fact.text)
        if checked_kind(amount) and not amount.values & right[0].values
    ]
    if not wrong:
        return None
    gap = abs(max(right[0].values) - max(wrong[0].values))
    sign = "$" if right[0].text.startswith("$") else ""
    text = f"{sign}{gap:,.0f}" if gap == int(gap) else f"{sign}{gap:,.2f}"
    return Amount(text, right[0].kind, frozenset({gap}), 0)


def same_kind(first: Amount, second: Amount) -> bool:
    """Return whether two amounts can stand for the same thing.

    Students often leave out the currency sign, so money and plain numbers
    count as one kind and only percentages stand apart.
    """
    return (first.kind == "percent") == (second.kind == "percent")


def stem(word: str) -> str:
    """Reduce an English word to a stem shared by its common forms.

    A light rule-based stemmer: it strips the plural "-s"/"-ies", "-ed",
    "-ing", "-ly" and a final "-y" after a consonant, then undoubles a final
    consonant and drops a final "e". So "want", "wants" and "wanted" give
    "want", "deliver" and "delivery" give "deliver", and "note", "notes" and
    "noted" give "not". Stems are only compared with each other, so they need
    not be words. Irregular forms ("sent", "paid") keep their own stem.
    """
    word = word.lower()
    if len(word) <= 3:
        return word

    if word.endswith(("ies", "ied")) and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("eed"):
        # "need" stays, "agreed" becomes "agree".
        if len(word) > 5:
            word = word[:-1]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]

    for suffix in ("ing", "ed"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and len(base) >= 3 and VOWELS & set(base):
            word = base
            break

    if word.endswith("ly") and len(word) >= 6 and not word.endswith("ply"):
        word = word[:-2]
    if len(word) >= 6 and word.endswith("y") and word[-2] not in VOWELS:
        word = word[:-1]
    if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "aeiouylsz":
        word = word[:-1]
    if len(word) >= 4 and word.endswith("e"):
        word = word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Return the stems of the words of four or more letters, without common words."""
    return {
        stem(word)
        for word in re.findall(r"[a-z]{4,}", text.lower())
        if word not in COMMON_WORDS
    }


def asks_concrete_detail(point: KeyPoint) -> bool:
    """Return whether most keywords of the point name a number, a day or a time."""
    concrete = [word for word in point.keywords if CONCRETE_KEYWORD.search(word)]
    return bool(point.keywords) and len(concrete) * 2 >= len(point.keywords)


def find_wrong_numbers(
    scenario: Scenario, body: str, covered_facts: list[KeyPoint]
) -> list[WrongNumber]:
    """List amounts in the body that contradict a key fact with an amount.

    An amount is wrong when the scenario never mentions its value and a key
    fact has an amount of the same kind, or when a sentence gives a fact's
    wrong value ("not $12,400" in the fact) as the correct one.
    """
    facts = []
    for fact in scenario.key_facts:
        right, wrong = fact_amounts(fact)
        if right:
            facts.append((fact, right, wrong))
    if not facts:
        return []

    known = known_values(scenario)
    found: list[WrongNumber] = []
    seen: set[str] = set()
    for line in body.splitlines():
        for part in SENTENCE_SPLIT.split(line):
            sentence = " ".join(part.split())
            amounts = [item for item in find_amounts(sentence) if checked_kind(item)]
            for amount in amounts:
                if amount.text in seen:
                    continue
                match = match_wrong_amount(
                    sentence, amount, amounts, facts, known, covered_facts
                )
                if match is not None:
                    seen.add(amount.text)
                    fact, expected = match
                    found.append(
                        WrongNumber(amount.text, expected.text, fact, sentence)
                    )
    return found


def match_wrong_amount(
    sentence: str,
    amount: Amount,
    amounts: list[Amount],
    facts: list[tuple[KeyPoint, list[Amount], list[Amount]]],
    known: frozenset[float],
    covered_facts: list[KeyPoint],
) -> tuple[KeyPoint, Amount] | None:
    """Return the fact that the amount contradicts and the fact's right amount."""
    sentence_values = {value for item in amounts for value in item.values}
    if not amount.values & known:
        candidates = [
            (fact, right)
            for fact, right, _ in facts
            if any(same_kind(item, amount) for item in right)
        ]
        if not candidates:
            return None
        words = content_words(sentence)
        # The fact that shares the most words with the sentence is where the
        # number belongs; a fact the student has not covered wins a tie.
        fact, right = max(
            candidates,
            key=lambda pair: (
                len(words & content_words(pair[0].text)),
                pair[0] not in covered_facts,
                -candidates.index(pair),
            ),
        )
        matching = [item for item in right if same_kind(item, amount)]
        difference = fact_difference(fact, right)
        if DIFFERENCE_CUE.search(sentence) and difference is not None:
            return fact, difference
        return fact, matching[0]

    if not CORRECT_CUE.search(sentence):
        return None
    for fact, right, wrong in facts:
        right_values = {value for item in right for value in item.values}
        says_right = bool(right_values & sentence_values)
        if not says_right and any(amount.values & item.values for item in wrong):
            return fact, right[0]
    return None


def quoted_list(words: Iterable[str]) -> str:
    items = [f'"{word}"' for word in words]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def is_wall_of_text(email: ParsedEmail) -> bool:
    longest = max((count_words(part) for part in email.paragraphs), default=0)
    single_wall = (
        len(email.paragraphs) == 1 and email.body_words >= WALL_SINGLE_PARAGRAPH_WORDS
    )
    return single_wall or longest > WALL_PARAGRAPH_WORDS
