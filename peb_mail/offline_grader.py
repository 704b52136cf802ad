"""Rule-based grader that scores an email on the 7-criterion rubric without a network.

It is the service's default grader: the same scenario and submission always give
the same verdict, built from checks on greeting, tone, key points, spelling and
layout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import textstat
from spellchecker import SpellChecker

from peb_mail.errors import GradingError
from peb_mail.models import (
    CRITERION_KEYS,
    MAX_SCORE,
    MIN_SCORE,
    CriterionScore,
    KeyPoint,
    Scenario,
    Submission,
    Verdict,
)

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
ERROR_SCENARIO_PATTERN = re.compile(
    r"\b(errors?|mistakes?|wrong|incorrect|apolog\w*|sorry|typo)\b", re.IGNORECASE
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
EMAIL_OR_URL = re.compile(r"\S+@\S+|https?://\S+|www\.\S+", re.IGNORECASE)
SPELL_TOKEN = re.compile(r"(?<![\w$€£@'’-])[A-Za-z][A-Za-z'’-]*(?![\w$€£@])")
WORD_PATTERN = re.compile(r"[\w$€£][\w'’$€£.,%-]*")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
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


@functools.lru_cache(maxsize=1)
def spell_checker() -> SpellChecker:
    """Build the English word list once per process.

    Building it took about 0.2 s with pyspellchecker 0.9.1 on the development
    machine, so all graders share one instance.
    """
    logger.info("Loading the pyspellchecker English word list")
    return SpellChecker(language="en")


@dataclass(frozen=True)
class Issue:
    """One problem found in the email and its cost on one criterion."""

    penalty: int
    # Lower-case clause that completes "You ..." style sentences, such as
    # "you start without a greeting".
    reason: str
    # Imperative advice for the comment, such as "Start with "Dear Maria,"."
    tip: str
    evidence: str = ""
    # Issues of several criteria that share a topic get only one tip.
    topic: str = ""


@dataclass
class Assessment:
    """Score inputs for one criterion before they become a CriterionScore."""

    criterion: str
    base: int = MAX_SCORE
    issues: list[Issue] = field(default_factory=list)
    praise: str = ""
    evidence: str = ""

    @property
    def score(self) -> int:
        value = self.base - sum(issue.penalty for issue in self.issues)
        return max(MIN_SCORE, min(MAX_SCORE, value))

    def justification(self) -> str:
        if not self.issues:
            return self.praise
        reasons = [issue.reason for issue in self.issues[:3]]
        if len(reasons) == 1:
            sentence = reasons[0]
        else:
            # A comma before "and" keeps a reason that lists words readable.
            joiner = ", and " if any("," in reason for reason in reasons) else " and "
            sentence = ", ".join(reasons[:-1]) + joiner + reasons[-1]
        return sentence[0].upper() + sentence[1:] + "."

    def to_score(self) -> CriterionScore:
        evidence = self.evidence
        for issue in self.issues:
            if issue.evidence:
                evidence = issue.evidence
                break
        return CriterionScore(
            criterion=self.criterion,
            score=self.score,
            justification=self.justification(),
            evidence=evidence,
        )


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


@dataclass
class Findings:
    """Everything the checks found, shared by the scores and the texts."""

    email: ParsedEmail
    normalised_text: str
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


def normalise(text: str) -> str:
    """Lower-case the text, unify apostrophes and collapse runs of whitespace."""
    return " ".join(text.replace("’", "'").lower().split())


def covers(normalised_text: str, point: KeyPoint) -> bool:
    """Return whether the text contains any keyword of the point."""
    keywords = point.keywords or (point.text,)
    return any(normalise(keyword) in normalised_text for keyword in keywords)


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
        submission.student_name,
        *scenario.subject_keywords,
    ]
    for point in (*scenario.key_facts, *scenario.key_points):
        parts.append(point.text)
        parts.extend(point.keywords)

    for artefact in scenario.artefacts:
        parts.append(artefact.name)
        parts.append(artefact.text or "")
    words: set[str] = set()
    for part in parts:
        for token in re.findall(r"[A-Za-z][A-Za-z'’-]*", part):
            words.add(token.lower().replace("’", "'"))
            words.update(piece for piece in token.lower().split("-") if piece)

    return words


def is_british_form(word: str, checker: SpellChecker) -> bool:
    if word in BRITISH_WORDS:
        return True

    for british, american in BRITISH_SUFFIXES:
        if word.endswith(british):
            variant = word[: -len(british)] + american
            if checker.known([variant]):
                return True

    return False


def best_correction(word: str, checker: SpellChecker) -> str | None:
    """Return the most frequent candidate, breaking ties alphabetically.

    SpellChecker.correction() picks from a set, so on a frequency tie its
    result could change with the string hash seed between processes.
    """
    candidates = checker.candidates(word)
    if not candidates:
        return None
    ranked = sorted(candidates, key=lambda item: (-checker[item], item))
    best = ranked[0]
    return None if best == word else best


def find_misspellings(
    text: str, vocabulary: set[str], checker: SpellChecker
) -> list[Misspelling]:
    """List misspelt words in order of first appearance.

    Capitalised words are skipped as probable names, so a misspelt word at the
    start of a sentence is missed. Words with no close match in the list are
    taken as jargon and skipped too.
    """
    cleaned = EMAIL_OR_URL.sub(" ", text)
    found: dict[str, Misspelling] = {}
    for match in SPELL_TOKEN.finditer(cleaned):
        token = match.group().replace("’", "'").strip("'-")
        if not token or token[0].isupper():
            continue
        for piece in token.split("-"):
            word = piece.lower()
            if word.endswith("'s"):
                word = word[:-2]
            if len(word) < 2 or word in found or word in vocabulary:
                continue
            if word in CASUAL_WORDS or checker.known([word]):
                continue
            if is_british_form(word, checker):
                continue
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
    scenario: Scenario, submission: Submission, checker: SpellChecker
) -> Findings:
    """Run every check on the submission once."""
    text = submission.text.strip()
    email = parse_email(text)
    normalised_text = normalise(text)
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

    return Findings(
        email=email,
        normalised_text=normalised_text,
        is_error_scenario=bool(ERROR_SCENARIO_PATTERN.search(scenario_words)),
        expects_thanks=scenario.type == "reply" or "thank" in scenario_words.lower(),
        covered_facts=[point for point in facts if covers(normalised_text, point)],
        missing_facts=[point for point in facts if not covers(normalised_text, point)],
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
        has_apology=bool(APOLOGY_PATTERN.search(text)),
        has_thanks=bool(THANKS_PATTERN.search(text)),
        has_responsibility=bool(RESPONSIBILITY_PATTERN.search(text)),
        blame_phrases=[match.group() for match in BLAME_PATTERN.finditer(text)],
        has_next_step=bool(NEXT_STEP_PATTERN.search(text)) or "?" in email.body,
        has_purpose=bool(PURPOSE_PATTERN.search(text)),
        attachment_missing=bool(ATTACHMENT_PATTERN.search(text))
        and not submission.attachments,
        misspellings=find_misspellings(
            text, scenario_vocabulary(scenario, submission), checker
        ),
        long_sentences=[
            sentence
            for sentence in email.sentences
            if count_words(sentence) > LONG_SENTENCE_WORDS
        ],
        reading_grade=float(textstat.coleman_liau_index(body_for_reading)),
        words_per_sentence=float(textstat.words_per_sentence(body_for_reading)),
        lowercase_i=bool(LOWERCASE_I.search(text)),
        lowercase_starts=[
            sentence for sentence in email.sentences if sentence[0].islower()
        ],
        repeated_word=repeated_word(text),
    )


def quoted_list(words: Iterable[str]) -> str:
    items = [f'"{word}"' for word in words]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def assess_tone(findings: Findings, counterpart_first: str) -> Assessment:
    email = findings.email
    text = email.text
    result = Assessment("tone")
    if not email.greeting_line:
        result.issues.append(
            Issue(
                1,
                "you start without a greeting, which feels abrupt",
                f'Open with a greeting such as "Dear {counterpart_first},".',
                topic="greeting",
            )
        )
    elif email.greeting_is_casual:
        result.issues.append(
            Issue(
                1,
                f'the greeting "{short(email.greeting_line)}" is too casual',
                f'Use a polite greeting such as "Dear {counterpart_first},".',
                short(email.greeting_line),
            )
        )

    if findings.rude_phrases:
        result.issues.append(
            Issue(
                2,
                f"words like {quoted_list(findings.rude_phrases[:2])} sound rude",
                "Remove words that sound rude and explain the facts calmly.",
                first_quote(RUDE_PATTERN, text),
            )
        )

    if findings.casual_words:
        penalty = 2 if len(findings.casual_words) >= 3 else 1
        replaceable = [
            word for word in findings.casual_words if CASUAL_WORDS[word.lower()]
        ]
        if replaceable:
            word = replaceable[0]
            full = CASUAL_WORDS[word.lower()]
            tip = f'Write full words, such as "{full}" for "{word}".'
        else:
            tip = "Leave out chat words that do not belong in a work email."
        result.issues.append(
            Issue(
                penalty,
                f"words like {quoted_list(findings.casual_words[:3])} are too "
                "casual for work",
                tip,
                first_quote(CASUAL_PATTERN, text),
            )
        )

    if findings.shouted_words or findings.exclamation_runs:
        result.issues.append(
            Issue(
                1,
                "capital letters or many exclamation marks sound like shouting",
                "Use normal capital letters and at most one exclamation mark.",
                first_quote(EXCLAMATION_RUN, text) or first_quote(SHOUT_PATTERN, text),
            )
        )

    if findings.is_error_scenario and not findings.has_apology:
        result.issues.append(
            Issue(
                1,
                "you do not say sorry for the problem",
                'Say sorry once, for example "I apologise for the error."',
            )
        )

    if findings.expects_thanks and not findings.has_thanks:
        result.issues.append(
            Issue(
                1,
                "you do not thank the reader",
                'Thank the reader, for example "Thank you for your message."',
            )
        )
    polite = []
    if email.greeting_line:
        polite.append("greet the reader")

    if findings.has_apology:
        polite.append("say sorry")

    if findings.has_thanks:
        polite.append("thank them")

    if polite:
        result.praise = (
            "The tone is polite and respectful because you "
            + ", ".join(polite[:-1])
            + (" and " if len(polite) > 1 else "")
            + polite[-1]
            + "."
        )
    else:
        result.praise = "The tone is calm and polite, with no casual or rude words."
    result.evidence = short(email.greeting_line)
    return result


def assess_clarity(findings: Findings) -> Assessment:
    email = findings.email
    result = Assessment("clarity")
    missing = findings.missing_facts
    if findings.covered_facts or missing:
        if not findings.covered_facts:
            result.issues.append(
                Issue(
                    3,
                    "the email does not give the key facts, such as "
                    f'"{missing[0].text}"',
                    f'State the key facts clearly, for example: "{missing[0].text}".',
                    topic="key points",
                )
            )
        elif missing:
            result.issues.append(
                Issue(
                    min(2, len(missing)),
                    f'one key fact is missing: "{missing[0].text}"',
                    f'Add the missing fact: "{missing[0].text}".',
                    topic="key points",
                )
            )
    opening = " ".join(email.sentences[:2])
    purpose_early = bool(PURPOSE_PATTERN.search(opening)) or any(
        covers(normalise(opening), point)
        for point in (*findings.covered_facts, *findings.covered_points)
    )
    if email.sentences and not purpose_early:
        result.issues.append(
            Issue(
                1,
                "the first two sentences do not say why you are writing",
                "Say why you are writing in your first sentence.",
                short(email.sentences[0]),
            )
        )

    if findings.long_sentences:
        result.issues.append(
            Issue(
                1,
                f"some sentences are longer than {LONG_SENTENCE_WORDS} words",
                "Split long sentences into two shorter ones.",
                short(findings.long_sentences[0]),
            )
        )

    if email.body_words < SHORT_BODY_WORDS:
        result.issues.append(
            Issue(
                2 if email.body_words < VERY_SHORT_BODY_WORDS else 1,
                "the message is too short to explain the situation",
                "Add one or two sentences that explain the situation.",
            )
        )

    result.praise = (
        "The purpose is clear early on and you give the key facts in short, "
        "clear sentences."
    )
    if findings.covered_facts:
        first = findings.covered_facts[0]
        result.evidence = first_quote(
            re.compile("|".join(re.escape(k) for k in first.keywords) or "^$", re.I),
            email.text,
        )

    return result


def is_wall_of_text(email: ParsedEmail) -> bool:
    longest = max((count_words(part) for part in email.paragraphs), default=0)
    single_wall = (
        len(email.paragraphs) == 1 and email.body_words >= WALL_SINGLE_PARAGRAPH_WORDS
    )
    return single_wall or longest > WALL_PARAGRAPH_WORDS


def assess_structure(findings: Findings, student_name: str) -> Assessment:
    email = findings.email
    result = Assessment("structure")
    if not email.greeting_line:
        result.issues.append(
            Issue(
                1,
                "there is no greeting at the start",
                "Put a greeting on its own line at the start.",
                topic="greeting",
            )
        )

    if not email.closing_line:
        result.issues.append(
            Issue(
                1,
                'there is no sign-off such as "Best regards" at the end',
                f'End with "Best regards," and your name, {student_name}.',
            )
        )
    elif not email.signed_name:
        result.issues.append(
            Issue(
                1,
                "your name is missing after the sign-off",
                "Write your name on the line after the sign-off.",
                short(email.closing_line),
            )
        )

    if is_wall_of_text(email):
        result.issues.append(
            Issue(
                2,
                "the body is one long block of text with no blank lines",
                "Split the body into short paragraphs with a blank line between them.",
                short(email.paragraphs[0]) if email.paragraphs else "",
            )
        )

    if email.body_words < SHORT_BODY_WORDS:
        result.issues.append(
            Issue(
                1,
                f"the body has only {email.body_words} words",
                "Write at least three full sentences.",
            )
        )
    elif email.body_words > LONG_BODY_WORDS:
        result.issues.append(
            Issue(
                1,
                f"the body has {email.body_words} words, so a busy reader may "
                "not finish it",
                "Cut details the reader does not need.",
            )
        )

    result.praise = (
        f"The email has a greeting, {len(email.paragraphs)} short paragraph"
        f"{'s' if len(email.paragraphs) != 1 else ''} and a sign-off with your name."
    )
    result.evidence = short(email.closing_line)
    return result


def assess_professionalism(findings: Findings) -> Assessment:
    text = findings.email.text
    result = Assessment("professionalism")
    if findings.blame_phrases:
        result.issues.append(
            Issue(
                2,
                f'you blame others with words like "{findings.blame_phrases[0]}"',
                "Explain what happened without blaming anyone else.",
                first_quote(BLAME_PATTERN, text),
            )
        )
    # Blaming others cancels any responsibility wording in the same email.
    owns_error = findings.has_responsibility and not findings.blame_phrases
    if findings.is_error_scenario and not owns_error:
        result.issues.append(
            Issue(
                2,
                "you do not clearly say that the mistake was yours and that you "
                "will fix it",
                'Take responsibility, for example "I made a mistake and I will fix '
                'it today."',
            )
        )

    if findings.rude_phrases or len(findings.casual_words) >= 2:
        result.issues.append(
            Issue(
                1,
                "the casual or rude words do not suit a work email",
                "Keep a formal, calm style in work emails.",
            )
        )

    if not findings.is_error_scenario and not POLITE_PATTERN.search(text):
        result.issues.append(
            Issue(
                1,
                'there are no polite words such as "please" or "could you"',
                'Add polite words such as "please" or "could you".',
            )
        )

    if findings.attachment_missing:
        result.issues.append(
            Issue(
                1,
                "you say the file is attached, but there is no attachment",
                "Check that the file is really attached before you press send.",
                first_quote(ATTACHMENT_PATTERN, text),
            )
        )

    if findings.is_error_scenario:
        result.praise = (
            "You take responsibility for the mistake and say how you will fix it, "
            "without blaming anyone."
        )
        result.evidence = first_quote(RESPONSIBILITY_PATTERN, text)
    else:
        result.praise = "The style is professional, polite and calm."
        result.evidence = first_quote(POLITE_PATTERN, text)

    return result


def assess_task(findings: Findings) -> Assessment:
    text = findings.email.text
    result = Assessment("task")
    required = len(findings.covered_facts) + len(findings.missing_facts)
    required += len(findings.covered_points) + len(findings.missing_points)
    covered = len(findings.covered_facts) + len(findings.covered_points)
    if required:
        result.base = MIN_SCORE + round((MAX_SCORE - MIN_SCORE) * covered / required)
    missing = [*findings.missing_facts, *findings.missing_points]
    if missing:
        result.issues.append(
            Issue(
                0,
                f"you cover {covered} of {required} key points and miss "
                f'"{missing[0].text}"',
                f'Cover every part of the task, including "{missing[0].text}".',
                topic="key points",
            )
        )

    if not findings.has_next_step:
        result.issues.append(
            Issue(
                1,
                "you do not say what happens next",
                'Say what happens next, for example "I will send it by Friday."',
            )
        )

    if findings.attachment_missing:
        result.issues.append(
            Issue(
                1,
                "the attachment you mention is missing",
                "Attach the file you mention.",
                first_quote(ATTACHMENT_PATTERN, text),
            )
        )

    result.praise = (
        "You cover every key point of the task and say what happens next."
        if required
        else "You do what the task asks and say what happens next."
    )
    result.evidence = first_quote(NEXT_STEP_PATTERN, text)
    return result


def assess_grammar(findings: Findings) -> Assessment:
    text = findings.email.text
    result = Assessment("grammar")
    misspelt = findings.misspellings
    if misspelt:
        if len(misspelt) <= 2:
            penalty = 1
        elif len(misspelt) <= 4:
            penalty = 2
        else:
            penalty = 3
        pairs = [f'"{item.word}" (should be "{item.correction}")' for item in misspelt]
        shown = ", ".join(pairs[:4])
        result.issues.append(
            Issue(
                penalty,
                f"some words are misspelt: {shown}",
                "Check your spelling before you send, for example "
                f'"{misspelt[0].correction}", not "{misspelt[0].word}".',
                first_quote(re.compile(rf"\b{re.escape(misspelt[0].word)}\b"), text),
            )
        )

    if findings.lowercase_i:
        result.issues.append(
            Issue(
                1,
                'you write "i" in small letters where it should be "I"',
                'Always write the word "I" with a capital letter.',
                first_quote(LOWERCASE_I, text),
            )
        )
    elif findings.lowercase_starts:
        result.issues.append(
            Issue(
                1,
                "some sentences start with a small letter",
                "Start every sentence with a capital letter.",
                short(findings.lowercase_starts[0]),
            )
        )

    if findings.repeated_word:
        result.issues.append(
            Issue(
                1,
                f'a word is repeated in "{findings.repeated_word}"',
                "Read your email once more to catch repeated words.",
                findings.repeated_word,
            )
        )
    hard = (
        findings.reading_grade > HARD_READING_GRADE
        or findings.words_per_sentence > HARD_AVERAGE_SENTENCE_WORDS
    )
    if hard:
        result.issues.append(
            Issue(
                1,
                "the text is hard to read because of long words and sentences",
                "Use shorter sentences and simpler words.",
            )
        )

    if findings.email.body_words < VERY_SHORT_BODY_WORDS:
        # A few words cannot show spelling or grammar, so they earn no full marks.
        result.issues.append(
            Issue(
                2,
                "there is too little text to judge your grammar and spelling",
                "Write full sentences so that your grammar can be checked.",
            )
        )

    result.praise = "There are no spelling mistakes and the sentences are easy to read."
    return result


def is_vague_subject(core: str) -> bool:
    lowered = normalise(core).strip(" .!?")
    return lowered in VAGUE_SUBJECTS or len(lowered.split()) <= 1


def assess_subject(scenario: Scenario, subject: str) -> Assessment:
    result = Assessment("subject")
    stripped = " ".join(subject.split())
    core = REPLY_PREFIX.sub("", stripped).strip()
    result.evidence = stripped
    keywords = [word for word in scenario.subject_keywords if word.strip()]
    has_keyword = any(normalise(word) in normalise(core) for word in keywords)
    example = f' with a word such as "{keywords[0]}"' if keywords else ""
    starter_core = REPLY_PREFIX.sub("", scenario.starter_subject or "").strip()
    keeps_starter = bool(starter_core) and normalise(core) == normalise(starter_core)

    if not core:
        result.base = 1
        result.issues.append(
            Issue(0, "the subject line is empty", f"Always write a subject{example}.")
        )
        return result

    if scenario.type == "reply" and keeps_starter:
        result.base = 4
        result.praise = (
            'Keeping the subject of the first email with "Re:" is fine, but a '
            "more specific subject would be even better."
        )
        return result

    if is_vague_subject(core):
        result.base = 2
        result.issues.append(
            Issue(
                0,
                f'the subject "{core}" is too short or vague to show the topic',
                f"Write a specific subject of three to eight words{example}.",
                stripped,
            )
        )
    elif has_keyword:
        result.base = 5 if len(core.split()) >= 3 else 4
        result.praise = "The subject line is specific and names the topic clearly."
    else:
        result.base = 3
        result.issues.append(
            Issue(
                0,
                "the subject is clear but does not name the main topic",
                f"Name the main topic in the subject{example}.",
                stripped,
            )
        )

    if len(core.split()) > 12:
        result.issues.append(
            Issue(1, "the subject is too long", "Keep the subject under ten words.")
        )

    if EXCLAMATION_RUN.search(core) or (core.isupper() and len(core) > 3):
        result.issues.append(
            Issue(
                1,
                "the subject uses capital letters or many exclamation marks",
                "Write the subject in normal letters without exclamation marks.",
                stripped,
            )
        )

    return result


def match_case(original: str, replacement: str) -> str:
    # "ASAP" becomes "as soon as possible", but "Pls" becomes "Please".
    title_case = original[:1].isupper() and not original[1:].isupper()
    if (title_case or original == "U") and replacement:
        return replacement[0].upper() + replacement[1:]

    return replacement


def replace_casual(match: re.Match[str]) -> str:
    return match_case(match.group(), CASUAL_WORDS[match.group().lower()])


def polish_text(text: str, findings: Findings) -> str:
    """Fix casual words, shouting, a small "i" and misspellings in the text.

    NOTE: rude phrases ("not my problem") and blame stay in the revision,
    because removing them would break the student's sentences.
    """
    polished = CASUAL_PATTERN.sub(replace_casual, text)
    for word in findings.shouted_words:
        is_name = word.lower() in findings.name_parts
        calm = word.capitalize() if is_name else word.lower()
        polished = re.sub(rf"\b{word}\b", calm, polished)
    polished = EXCLAMATION_RUN.sub(".", polished)
    polished = LOWERCASE_I.sub("I", polished)
    for item in findings.misspellings:
        polished = re.sub(
            rf"\b{re.escape(item.word)}\b",
            lambda match, fix=item.correction: match_case(match.group(), fix),
            polished,
        )
    # Removed casual words ("lol", "whatever") can leave stray commas and gaps.
    polished = re.sub(r"(^|[.!?])([ \t]*[,;])+[ \t]*", r"\1 ", polished, flags=re.M)
    polished = re.sub(r"[ \t]+([,.!?])", r"\1", polished)
    polished = re.sub(r"[ \t]{2,}", " ", polished)
    polished = re.sub(r"^[ \t,]+", "", polished, flags=re.MULTILINE)
    return re.sub(
        r"(^|[.!?]\s+)([a-z])",
        lambda match: match.group(1) + match.group(2).upper(),
        polished,
        flags=re.MULTILINE,
    )


def regroup_paragraphs(body: str) -> list[str]:
    """Split a wall of text into paragraphs of whole sentences."""
    paragraphs: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in SENTENCE_SPLIT.split(body):
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        current.append(sentence)
        words += count_words(sentence)
        if words >= REVISION_PARAGRAPH_WORDS:
            paragraphs.append(" ".join(current))
            current = []
            words = 0

    if current:
        paragraphs.append(" ".join(current))

    return paragraphs


def as_sentence(text: str) -> str:
    stripped = text.strip()
    if stripped and stripped[-1] not in ".!?":
        stripped += "."

    return stripped[:1].upper() + stripped[1:]


def write_revision(
    scenario: Scenario, submission: Submission, findings: Findings
) -> str:
    """Rewrite the student's email with the fixes the checks point to."""
    email = findings.email
    counterpart_first = first_name(scenario.counterpart.name)
    blocks: list[str] = []

    if email.greeting_line and not email.greeting_is_casual:
        if len(email.greeting_line.split()) == 1:
            # A bare "Hi" gets the counterpart's name.
            word = email.greeting_line.rstrip(",!.")
            blocks.append(f"{word} {counterpart_first},")
        elif not email.greeting_inline:
            blocks.append(polish_text(email.greeting_line, findings))
    else:
        blocks.append(f"Dear {counterpart_first},")

    body = email.body
    if email.greeting_line and email.greeting_is_casual and email.greeting_inline:
        body = CASUAL_GREETING.sub("", body, count=1).lstrip(" ,")
    body = polish_text(body, findings)
    if is_wall_of_text(email):
        blocks.extend(regroup_paragraphs(body))
    else:
        blocks.extend(
            part.strip() for part in PARAGRAPH_SPLIT.split(body) if part.strip()
        )

    missing = [*findings.missing_facts, *findings.missing_points]
    if missing:
        blocks.append(" ".join(as_sentence(point.text) for point in missing))

    if not findings.has_next_step:
        blocks.append("Please let me know if you have any questions.")

    name = email.signed_name or submission.student_name
    closing = email.closing_line if email.closing_line else "Best regards,"
    if email.closing_line and "," in email.closing_line:
        # "Best regards, Ana" keeps its own name on the same line.
        closing = email.closing_line.split(",", 1)[0] + ","

    if not closing.endswith(","):
        closing = closing.rstrip(".!") + ","
    blocks.append(f"{closing}\n{name}")
    return "\n\n".join(blocks)


def sentence_with(text: str, point: KeyPoint) -> str:
    """Return the student's sentence that covers the point, shortened."""
    for sentence in SENTENCE_SPLIT.split(text):
        if covers(normalise(sentence), point):
            return short(sentence)

    return ""


def write_counterpart_reply(
    scenario: Scenario, submission: Submission, findings: Findings
) -> str:
    """Write a short in-character reply from the counterpart to the student."""
    student_first = first_name(submission.student_name) or submission.student_name
    lines = [f"Hi {student_first},", ""]
    sentences = ["Thank you for your email."]
    covered = [*findings.covered_facts, *findings.covered_points]
    missing = [*findings.missing_facts, *findings.missing_points]
    if covered:
        quoted = sentence_with(findings.email.body or findings.email.text, covered[0])
        if quoted:
            ending = "" if quoted[-1] in ".!?" else "."
            sentences.append(f'I have noted what you wrote: "{quoted}"{ending}')

    if findings.attachment_missing:
        sentences.append(
            "You mention an attachment, but I cannot see one. Could you send it again?"
        )

    if missing:
        # NOTE: the point text is quoted as written in the scenario file, so
        # points worded as instructions read less naturally here.
        sentences.append(
            "I still have one question. Could you also tell me about this point: "
            f'"{missing[0].text}"?'
        )
    elif findings.has_next_step:
        sentences.append("The next steps you describe work for me.")
    else:
        sentences.append("What do you suggest as the next step?")

    if findings.rude_phrases or findings.shouted_words:
        sentences.append("I would also ask you to keep a calm tone in our emails.")
    lines.append(" ".join(sentences))
    lines.extend(["", "Best regards,", scenario.counterpart.name])
    return "\n".join(lines)


def write_comment(assessments: list[Assessment]) -> str:
    """Write 3-6 kind sentences: the overall level, a strength and two tips."""
    total = sum(item.score for item in assessments)
    maximum = MAX_SCORE * len(assessments)
    if total >= maximum - 5:
        sentences = ["This is a strong, professional email."]
    elif total >= maximum * 2 / 3:
        sentences = ["This is a good email, and a few changes will make it better."]
    else:
        sentences = [
            "Thank you for your answer, and here are some ways to make it better."
        ]

    strengths = [item for item in assessments if item.score == MAX_SCORE]
    if strengths:
        sentences.append(strengths[0].praise)
        if len(strengths) > 1 and strengths[1].praise:
            sentences.append(strengths[1].praise)
    else:
        sentences.append("Every email you write is good practice, so keep going.")

    weakest = sorted(
        (item for item in assessments if item.issues),
        key=lambda item: item.score,
    )
    tips: list[str] = []
    used_topics: set[str] = set()
    for item in weakest:
        for issue in item.issues:
            if issue.topic and issue.topic in used_topics:
                continue
            used_topics.add(issue.topic)
            tips.append(issue.tip)
            break
        if len(tips) == 2:
            break

    for prefix, tip in zip(("To improve, ", "Also, "), tips, strict=False):
        sentences.append(prefix + tip[0].lower() + tip[1:])

    if weakest:
        sentences.append("Compare your email with the revised version below.")
    else:
        sentences.append("Keep writing emails like this one.")

    return " ".join(sentences[:6])


def build_verdict(
    scenario: Scenario, submission: Submission, checker: SpellChecker
) -> Verdict:
    """Grade one non-empty submission with the rules of this module."""
    findings = collect_findings(scenario, submission, checker)
    counterpart_first = first_name(scenario.counterpart.name)
    by_key = {
        "tone": assess_tone(findings, counterpart_first),
        "clarity": assess_clarity(findings),
        "structure": assess_structure(findings, submission.student_name),
        "professionalism": assess_professionalism(findings),
        "task": assess_task(findings),
        "grammar": assess_grammar(findings),
        "subject": assess_subject(scenario, submission.subject),
    }
    assessments = [by_key[key] for key in CRITERION_KEYS]
    return Verdict(
        scores=tuple(item.to_score() for item in assessments),
        comment=write_comment(assessments),
        revision=write_revision(scenario, submission, findings),
        counterpart_reply=write_counterpart_reply(scenario, submission, findings),
        grader=OfflineGrader.name,
        usage={},
    )


class OfflineGrader:
    """Grader that needs no network and gives the same verdict for the same input."""

    name = "offline"

    async def grade(self, scenario: Scenario, submission: Submission) -> Verdict:
        if not submission.text.strip():
            raise GradingError(
                f"Submission for scenario {scenario.id!r} has an empty body, so "
                "there is nothing to grade; ask the student to reply with text."
            )
        # The first call builds the word list, which would block the event loop.
        checker = await asyncio.to_thread(spell_checker)
        verdict = build_verdict(scenario, submission, checker)
        logger.debug(
            "Offline grade for scenario %s: total %d", scenario.id, verdict.total
        )
        return verdict
