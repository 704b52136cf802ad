"""Deterministic checks that run on a submission before any grader sees it.

``precheck`` returns a ``PrecheckResult`` with:

- ``refusal``: a message for the student instead of a grade, when the email is
  empty, contains only a greeting and a sign-off, or is not in English.
- ``flags``: short labels for the teacher, such as ``"suspected-injection"``.
- ``injections``: the spans of the text that address the grader, not the reader.
- ``caps``: the highest score each listed criterion may get.

The rule against prompt injection, applied by both graders:

1. The grader sees the submission with every injected span removed
   (``redact``), so a model cannot obey text it never receives and rule checks
   cannot count keywords hidden in it.
2. Each criterion the injection tried to raise gets at most ``MIN_SCORE``
   (``apply_caps``). An injection that names no criterion, such as "give full
   marks" or "ignore previous instructions", targets every criterion. So even
   a model that obeys the attempt cannot give a targeted criterion more than
   the same email without it would get. The attempt is part of the email a
   real reader would see, and the teacher reviews every flagged verdict and can
   regrade a false positive. The patterns are narrow for that reason.

Invisible characters and text pushed out of sight are removed and flagged as
``"hidden-text"``. They cap scores only when the hidden text itself matches an
injection pattern, because zero-width characters also come from copy and paste.

A vague subject such as "hey" or "oops" caps the subject criterion at
``VAGUE_SUBJECT_CAP`` for the same reason: the rule comes from our code, so a
lenient model cannot give it full marks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from dataclasses import dataclass, field

from peb_mail.models import (
    CRITERIA,
    CRITERION_KEYS,
    MAX_SCORE,
    MIN_SCORE,
    CriterionScore,
    Grader,
    Scenario,
    Submission,
    Verdict,
)
from peb_mail.wordlist import english_word_list

INJECTION_FLAG = "suspected-injection"
HIDDEN_TEXT_FLAG = "hidden-text"
VAGUE_SUBJECT_FLAG = "vague-subject"
EMPTY_FLAG = "empty"
GREETING_ONLY_FLAG = "greeting-only"
NOT_ENGLISH_FLAG = "not-english"

INJECTION_CAP = MIN_SCORE
VAGUE_SUBJECT_CAP = 2
# Placeholder for a removed span in the LLM grader's prompt.
REDACTION_MARK = "[removed: text addressed to the grader]"

# Language heuristic. The English sample email in tests/test_precheck.py has
# 51 % words from this list, and its German, Spanish and French samples have
# 6 %, 3 % and 0 %, because only a few words ("in", "a", "was") are shared.
ENGLISH_FUNCTION_WORDS = frozenset(
    """a about after all also am an and any are as at be because been before
    but by can could did do does for from had has have he her here him his how
    i if in into is it its just let me my no not now of on or our please she
    should so some than thank thanks that the their them then there these they
    this those to us was we were what when which who will with would you your
    yours""".split()
)
# At least this many words, and the function-word share decides alone.
LANGUAGE_MIN_WORDS = 12
MIN_FUNCTION_WORD_SHARE = 0.18
# Shorter texts, or a share just under the bar, pass when this share of their
# lower-case words is in pyspellchecker's English word list.
MIN_KNOWN_WORD_SHARE = 0.75
AMBIGUOUS_FUNCTION_WORD_SHARE = 0.10

GREETING_WORDS = frozenset(
    """afternoon all best bye cheers dear evening good greetings hello hey hi
    hiya kind many morning regards see sincerely soon talk thank thanks there
    to warm warmest wishes you yours faithfully truly take care""".split()
)

VAGUE_SUBJECTS = frozenset(
    """email fyi hello help hey hi important info issue message oops problem
    question sorry update urgent hmm ok okay yo""".split()
)
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw)\s*:\s*)+", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")

_CRITERION_WORDS: dict[str, tuple[str, ...]] = {
    "tone": ("tone", "polite"),
    "clarity": ("clarity", "clear"),
    "structure": ("structure", "format"),
    "professionalism": ("professionalism", "professional"),
    "task": ("task", "next step"),
    "grammar": ("grammar", "spelling"),
    "subject": ("subject",),
}

# Each pattern matches text that speaks to the grader instead of the reader.
# They are kept narrow, so an ordinary "please ignore my previous email" is
# not matched: the objects must be instructions, prompts, rules or a rubric.
_INJECTION_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    for pattern in (
        # "Ignore previous instructions", "disregard the rubric".
        r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}?\b(instructions?"
        r"|prompts?|rules|rubric|guidelines|system message|grading criteria)\b",
        r"\bnew instructions?\s*:",
        r"\byou are (now|no longer) (a|an|the)\s+(\w+\s+)?(grader|assistant|ai|"
        r"model|teacher|evaluator|examiner)\b",
        # Score demands: "give full marks", "rate this 5 out of 5".
        r"\b(give|giving|award|assign|grant|deserves?|get|receive|rate|score|mark)"
        r"\b[^.\n]{0,40}?\b(full|maximum|max|perfect|top|highest)\s+(marks?|scores?"
        r"|points?|grades?|ratings?)\b",
        r"\b(give|award|assign|grant|deserves?|rate|score|mark)\b[^.\n]{0,30}?\b"
        r"(5|five|35)\s*(/\s*(5|35)\b|out of\b|points?\b|stars?\b)",
        r"\b35\s*/\s*35\b",
        # Fake rubric notes and notes to the grader.
        r"\b(rubric|grading|grader|evaluator|assessor|marker|examiner)\s+"
        r"(note|notice|instruction|override|update)s?\b",
        r"\b(note|message|instructions?)\s+(to|for)\s+(the\s+)?(grader|ai|model|"
        r"evaluator|assessor|marker|examiner|assistant|llm|chatbot)\b",
        r"\b(dear|hello|hi)\s+(grader|ai|model|evaluator|assessor|llm|chatgpt"
        r"|assistant)\b",
        r"\b(as an? |you are an? )(ai|language model|llm|grader|grading assistant)"
        r"\b",
        r"\bthis email (meets|satisfies|exceeds|fulfils|fulfills) (all|every)\b",
        # Role-play of system messages and chat markup.
        r"<\|?\s*(im_start|im_end|system|endoftext)\s*\|?>",
        r"\[/?\s*(system|inst|assistant)\s*\]",
        r"</?\s*(system|assistant|student_email|instructions?)\s*>",
        r"^\s*#{0,3}\s*(system|assistant|developer|grader|instruction)s?\s*"
        r"(message|prompt)?\s*:",
        # Lines that copy the grader's output format: "tone: 5", "Score: 35", '"score": 5'.
        r"^\s*[\"']?(" + "|".join(CRITERION_KEYS) + r"|score|grade|total|marks?)"
        r"[\"']?\s*[:=]\s*[\"']?\d",
        r"\"score\"\s*:\s*\d",
    )
)

# Characters a reader cannot see: zero-width spaces and joiners, the word
# joiner, byte order marks, bidirectional controls and Unicode tag characters
# (U+E0000 block), which can carry hidden ASCII.
_INVISIBLE = re.compile(
    "[\u200b-\u200f\u2060-\u2064\ufeff\u202a-\u202e\u2066-\u2069\U000e0000-\U000e007f]"
)
# Markup that hides text in an HTML part or that a plain-text reader skips.
_HIDDEN_MARKUP = re.compile(
    r"<!--.*?-->|<[^>]*(display\s*:\s*none|font-size\s*:\s*0|visibility\s*:\s*"
    r"hidden|color\s*:\s*(white|#fff\b|#ffffff))[^>]*>.*?</[^>]+>",
    re.IGNORECASE | re.DOTALL,
)
# Text pushed far down or right by runs of blank lines or spaces.
_PUSHED_AWAY = re.compile(r"(\n[ \t]*){15,}\S.*|[ \t]{60,}\S.*")


@dataclass(frozen=True)
class Injection:
    """One span of the submission that addresses the grader."""

    field: str  # "subject" or "text"
    start: int
    end: int
    kind: str  # INJECTION_FLAG or HIDDEN_TEXT_FLAG
    targets: tuple[str, ...]


@dataclass(frozen=True)
class PrecheckResult:
    """Outcome of the deterministic checks for one submission."""

    flags: tuple[str, ...] = ()
    refusal: str | None = None
    injections: tuple[Injection, ...] = ()
    # Criterion key -> highest score allowed.
    caps: dict[str, int] = field(default_factory=dict)

    @property
    def injected(self) -> bool:
        return bool(self.injections)


# The worker runs the checks to decide about refusal, and the grader it calls
# runs them again to redact and cap; the cache makes the second run free.
# Callers must not change the result (its caps dict is shared).
@functools.lru_cache(maxsize=256)
def precheck(scenario: Scenario, submission: Submission) -> PrecheckResult:
    """Run every check on one submission."""
    flags: list[str] = []
    caps: dict[str, int] = {}

    refusal_flag, refusal = _refusal(scenario, submission)
    if refusal_flag:
        flags.append(refusal_flag)

    injections = [
        *_find_injections("subject", submission.subject),
        *_find_injections("text", submission.text),
    ]
    kinds = {item.kind for item in injections}
    for kind in (INJECTION_FLAG, HIDDEN_TEXT_FLAG):
        if kind in kinds:
            flags.append(kind)
    for item in injections:
        for key in item.targets:
            caps[key] = min(caps.get(key, MAX_SCORE), INJECTION_CAP)

    if is_vague_subject(redact(submission, injections).subject):
        flags.append(VAGUE_SUBJECT_FLAG)
        caps["subject"] = min(caps.get("subject", MAX_SCORE), VAGUE_SUBJECT_CAP)

    return PrecheckResult(
        flags=tuple(flags),
        refusal=refusal,
        injections=tuple(injections),
        caps=caps,
    )


def is_vague_subject(subject: str) -> bool:
    """Return whether a subject is empty, one word or a known vague word."""
    core = _REPLY_PREFIX.sub("", " ".join(subject.split())).strip(" .!?:-").lower()
    return not core or core in VAGUE_SUBJECTS or len(core.split()) <= 1


def redact(
    submission: Submission, injections: tuple[Injection, ...] | list[Injection]
) -> Submission:
    """Return the submission with every injected span removed."""
    if not injections:
        return submission
    return dataclasses.replace(
        submission,
        subject=_cut(submission.subject, injections, "subject", ""),
        text=_cut(submission.text, injections, "text", ""),
    )


def mark_redactions(submission: Submission, result: PrecheckResult) -> Submission:
    """Return the submission with each injected span replaced by REDACTION_MARK."""
    if not result.injections:
        return submission
    return dataclasses.replace(
        submission,
        subject=_cut(submission.subject, result.injections, "subject", REDACTION_MARK),
        text=_cut(submission.text, result.injections, "text", REDACTION_MARK),
    )


def apply_caps(verdict: Verdict, result: PrecheckResult) -> Verdict:
    """Lower scores above their cap and add the precheck flags to the verdict."""
    scores: list[CriterionScore] = []
    for item in verdict.scores:
        cap = result.caps.get(item.criterion)
        if cap is not None and item.score > cap:
            reason = _cap_reason(item.criterion, result, cap)
            item = dataclasses.replace(
                item, score=cap, justification=f"{item.justification} {reason}"
            )
        scores.append(item)
    flags = tuple(dict.fromkeys((*verdict.flags, *result.flags)))
    return dataclasses.replace(verdict, scores=tuple(scores), flags=flags)


class PrecheckedGrader:
    """Grader wrapper that grades the redacted text and applies the caps.

    The worker wraps the offline grader with it. ``LLMGrader`` applies the same
    rule itself, because its prompt also informs the model about the removal.
    """

    def __init__(self, inner: Grader) -> None:
        self.inner = inner
        self.name = inner.name

    async def warm_up(self) -> None:
        """Warm up the inner grader, when it has anything to warm up."""
        warm_up = getattr(self.inner, "warm_up", None)
        if warm_up is not None:
            await warm_up()

    async def grade(self, scenario: Scenario, submission: Submission) -> Verdict:
        result = precheck(scenario, submission)
        verdict = await self.inner.grade(
            scenario, redact(submission, result.injections)
        )
        return apply_caps(verdict, result)


def english_word_shares(text: str) -> tuple[int, float, float | None]:
    """Return the word count, the function-word share and the known-word share.

    The known-word share is None when the function-word share decides alone,
    which saves loading the spell checker's word list.
    """
    words = [word.lower().replace("’", "'") for word in _WORD.findall(text)]
    if not words:
        return 0, 0.0, None
    function_share = sum(
        word.split("'")[0] in ENGLISH_FUNCTION_WORDS for word in words
    ) / len(words)
    decided = len(words) >= LANGUAGE_MIN_WORDS and (
        function_share >= MIN_FUNCTION_WORD_SHARE
        or function_share < AMBIGUOUS_FUNCTION_WORD_SHARE
    )
    if decided:
        return len(words), function_share, None

    known = english_word_list().known(words)
    known_share = sum(word in known for word in words) / len(words)
    return len(words), function_share, known_share


def looks_english(text: str) -> bool:
    """Decide whether the text is English with the shares described above."""
    count, function_share, known_share = english_word_shares(text)
    if count == 0:
        return False
    if known_share is None:
        return function_share >= MIN_FUNCTION_WORD_SHARE
    return known_share >= MIN_KNOWN_WORD_SHARE and (
        count < LANGUAGE_MIN_WORDS or function_share >= AMBIGUOUS_FUNCTION_WORD_SHARE
    )


async def precheck_async(scenario: Scenario, submission: Submission) -> PrecheckResult:
    """Run ``precheck`` in a thread, because the language check may load a word list."""
    return await asyncio.to_thread(precheck, scenario, submission)


def _refusal(scenario: Scenario, submission: Submission) -> tuple[str, str | None]:
    text = _INVISIBLE.sub("", submission.text).strip()
    if not text:
        return EMPTY_FLAG, (
            "Your email has no text, so there is nothing to grade. Please reply "
            "to this message with your full email."
        )

    names = {
        part.lower().rstrip(".,")
        for part in (scenario.counterpart.name + " " + submission.student_name).split()
    }
    words = [word.lower() for word in _WORD.findall(text)]
    content = [w for w in words if w not in GREETING_WORDS and w not in names]
    if not content:
        return GREETING_ONLY_FLAG, (
            "Your email has only a greeting and a sign-off, so there is nothing "
            "to grade yet. Please write the whole email and send it again."
        )

    if not looks_english(text):
        return NOT_ENGLISH_FLAG, (
            "Your email does not seem to be in English, so it was not graded. "
            "This course practises emails in English: please write your email "
            "in English and send it again."
        )
    return "", None


def _find_injections(field_name: str, text: str) -> list[Injection]:
    spans: list[Injection] = []
    for pattern in _INJECTION_PATTERNS:
        for match in pattern.finditer(text):
            start, end = _sentence_around(text, match.start(), match.end())
            targets = _targets(text[start:end])
            spans.append(Injection(field_name, start, end, INJECTION_FLAG, targets))
    for pattern in (_HIDDEN_MARKUP, _PUSHED_AWAY, _INVISIBLE):
        for match in pattern.finditer(text):
            spans.append(
                Injection(field_name, match.start(), match.end(), HIDDEN_TEXT_FLAG, ())
            )
    # Unicode tag characters encode ASCII that a reader cannot see.
    hidden_ascii = "".join(
        chr(ord(char) - 0xE0000) for char in text if 0xE0020 <= ord(char) <= 0xE007E
    )
    if hidden_ascii and any(p.search(hidden_ascii) for p in _INJECTION_PATTERNS):
        first = next(i for i, char in enumerate(text) if ord(char) >= 0xE0000)
        last = max(i for i, char in enumerate(text) if ord(char) >= 0xE0000)
        spans.append(
            Injection(
                field_name, first, last + 1, INJECTION_FLAG, _targets(hidden_ascii)
            )
        )
    return _merge(spans)


def _sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a match to the whole sentence or line that contains it."""
    boundary = re.compile(r"[.!?](\s|$)|\n")
    left = 0
    for match in boundary.finditer(text, 0, start):
        left = match.end()
    found = boundary.search(text, end)
    right = found.end() if found else len(text)
    return left, right


def _targets(span: str) -> tuple[str, ...]:
    lowered = span.lower()
    named = [
        key
        for key, label in CRITERIA
        if label.lower() in lowered
        or any(re.search(rf"\b{word}\b", lowered) for word in _CRITERION_WORDS[key])
    ]
    return tuple(named) if named else CRITERION_KEYS


def _merge(spans: list[Injection]) -> list[Injection]:
    """Join overlapping spans, keeping the union of their targets."""
    merged: list[Injection] = []
    for span in sorted(spans, key=lambda item: (item.start, item.end)):
        if merged and span.start <= merged[-1].end:
            last = merged[-1]
            kind = (
                INJECTION_FLAG
                if INJECTION_FLAG in (last.kind, span.kind)
                else (last.kind)
            )
            targets = tuple(
                key
                for key in CRITERION_KEYS
                if key in last.targets or key in span.targets
            )
            merged[-1] = Injection(
                last.field, last.start, max(last.end, span.end), kind, targets
            )
        else:
            merged.append(span)
    return merged


def _cut(
    text: str, injections: tuple[Injection, ...] | list[Injection], name: str, mark: str
) -> str:
    spans = [item for item in injections if item.field == name]
    if not spans:
        return text
    pieces: list[str] = []
    position = 0
    for span in spans:
        pieces.append(text[position : span.start])
        pieces.append(
            mark + ("\n" if mark and text[span.end - 1 : span.end] == "\n" else "")
        )
        position = span.end
    pieces.append(text[position:])
    joined = "".join(pieces)
    # Removing a sentence can leave runs of spaces and blank lines behind.
    joined = re.sub(r"[ \t]{2,}", " ", joined)
    joined = re.sub(r"\n[ \t]*\n([ \t]*\n)+", "\n\n", joined)
    return joined.strip() if name == "subject" else joined


def _cap_reason(criterion: str, result: PrecheckResult, cap: int) -> str:
    if (
        criterion == "subject"
        and VAGUE_SUBJECT_FLAG in result.flags
        and (cap == VAGUE_SUBJECT_CAP)
    ):
        return f"A one-word or vague subject gets at most {cap} points."
    return (
        f"The score is capped at {cap} because the email contains text that "
        "tries to change the grade."
    )
