"""Find gaps in scenario files that the loader cannot see, and preview or review them.

The loader (``peb_mail.scenarios``) rejects files that break the format. This
module looks for files that load but would confuse or fail a student: material
the task refers to but never gives, key points unrelated to the task, leftover
placeholders, addresses outside the service domain, a starter email that
does not contain what the task says it contains, and key points or key facts
without the ``example`` and ``question`` texts that the offline grader writes
its example answer and the counterpart's reply from. The checks are heuristics on
words and patterns, described with each function and in docs/scenarios.md, so
a finding is a prompt to reread the file, and a clean result is no proof.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
import re
import string
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import jinja2

from peb_mail.compose import Composer, Mailbox
from peb_mail.config import Config, GraderConfig
from peb_mail.errors import ConfigError, GradingError, NotFoundError
from peb_mail.models import Scenario
from peb_mail.scenarios import (
    STUDENT_NAME_FIELD,
    find_scenario,
    load_scenario,
    load_scenarios,
    render_starter,
)

# litellm downloads its price table from GitHub on import unless this is set.
# The service must not reach hosts the operator did not configure.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]

REVIEW_TEMPLATE = "scenario_review.j2"
DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
PREVIEW_TOKEN = "preview"
# RFC 2606 reserves ".invalid", so a preview file never names a real mailbox.
PREVIEW_STUDENT_EMAIL = "student@example.invalid"
# Extra seconds on top of timeout_s before the outer guard fires, as in
# peb_mail.llm_grader.
_TIMEOUT_GRACE_S = 5.0


@dataclass(frozen=True)
class Finding:
    """One problem in one scenario file.

    ``code`` is a short kebab-case name for scripts and tests. ``message``
    says what is wrong and how to fix it.
    """

    scenario_id: str
    path: Path
    severity: Severity
    code: str
    message: str


# -- words -----------------------------------------------------------------

# Function words and instruction verbs that say nothing about a topic.
STOPWORDS = frozenset(
    """
    a about above after again all also am an and any are as at be because been
    before being below both but by can could did do does doing done each for
    from had has have having he her here hers him his how i if in into is it its
    just me more most my no not now of off on once only or other our out over
    own same she should so some such than that the their them then there these
    they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours yourself
    ask asks say says tell tells give gives make use write writes offer offers
    mention explain clear clearly short briefly brief one two
    good well way ways them may might must shall yes please
    """.split()
)
# Words that describe the starter email itself rather than its content.
STARTER_WORDS = frozenset(
    """
    email emails message messages reminder note sent send sends wrote writes
    today now short quick second again
    """.split()
)
_WORD = re.compile(r"[a-z0-9$%]+")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "ed", "es", "s", "ly")


def stem(word: str) -> str:
    """Reduce a lowercase word to a rough stem: "apologise" and "apology" agree.

    A crude suffix cut plus a 6-letter prefix. It only has to make related
    words meet, not to be linguistically right.
    """
    if len(word) > 4:
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
    return word[:6]


def content_words(text: str) -> dict[str, str]:
    """Map the stem of each topic word in ``text`` to its first form in the text.

    Stopwords and words shorter than 3 letters (except numbers) are left out.
    """
    lowered = text.lower().replace("’", "'").replace("'s", "")
    words: dict[str, str] = {}
    for word in _WORD.findall(lowered):
        if word not in STOPWORDS and (len(word) >= 3 or word.isdigit()):
            words.setdefault(stem(word), word)
    return words


def content_stems(text: str) -> set[str]:
    """Return the stems of the topic words in ``text``, without stopwords."""
    return set(content_words(text))


# -- placeholders ----------------------------------------------------------

# "{name}", "{{ name }}" and similar in text that is never formatted.
_BRACE_PLACEHOLDER = re.compile(r"\{+[^{}\n]{0,60}\}+")
# "[NAME]", "[COMPANY NAME]".
_CAPS_BRACKET = re.compile(r"\[[A-Z][A-Z0-9 _]{2,}\]")
# "(your name)", "[insert date]", "<date>": a bracket holding only a slot name.
_SLOT_BRACKET = re.compile(
    r"[\[(<]\s*(?:(?:your|insert|enter|add|student'?s?|the)\s+)?"
    r"(?:first\s+|full\s+|last\s+)?"
    r"(?:name|date|time|e-?mail|address|phone(?:\s+number)?|company|signature|"
    r"job\s+title|amount|number)\s*[\])>]",
    re.IGNORECASE,
)
_MARKER = re.compile(r"\b(?:TODO|TBD|FIXME|XXX+)\b|lorem ipsum", re.IGNORECASE)
# Keys whose values are names or paths, not text a person reads.
_NOT_TEXT_KEYS = frozenset({"id", "type", "file", "content_type", "local_part"})


def find_placeholders(text: str, *, formatted: bool) -> list[str]:
    """Return the placeholders left in ``text``, in the order they appear.

    ``formatted`` is true for ``starter_body``, the only text the service fills
    in with ``str.format``: there ``{student_name}`` is allowed and ``{{`` is
    a literal brace. Everywhere else any brace pair is shown as written.
    """
    found: list[str] = []
    if formatted:
        literal_parts: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError:
            return ["an unmatched { or }"]
        for literal, field, spec, conversion in parsed:
            literal_parts.append(literal)
            if field is None:
                continue
            if field != STUDENT_NAME_FIELD or spec or conversion:
                found.append("{" + field + "}")
        # "{{ name }}" reaches the student as "{ name }", so scan the result.
        text = "".join(literal_parts)
    for pattern in (_BRACE_PLACEHOLDER, _CAPS_BRACKET, _SLOT_BRACKET, _MARKER):
        found.extend(match.group() for match in pattern.finditer(text))
    return found


# Slots that an example sentence may still contain although the general
# placeholder patterns miss them: "[day]", "<time>", "___", "..." and "XX".
_EXAMPLE_SLOT = re.compile(
    r"\[[^\]\n]*\]|<[^>\n]*>|_{2,}|\.{3}|…|\bX{2,}\b"
    r"|\((?:day|date|time|name|number|amount|place)\)",
    re.IGNORECASE,
)
_EXAMPLE_KEY = re.compile(r"^key_(?:facts|points)\[\d+\]\.example$")


def find_example_slots(text: str) -> list[str]:
    """Return the slots left in an ``example`` sentence, in the order they appear.

    An example is a finished sentence in the student's voice, so a bracket, a
    run of underscores, an ellipsis or "XX" in it marks an unfilled slot.
    """
    return [match.group() for match in _EXAMPLE_SLOT.finditer(text)]


def _text_fields(value: Any, key: str) -> Iterable[tuple[str, str]]:
    """Yield (key name as the loader writes it, text) for every string in ``value``."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            if name in _NOT_TEXT_KEYS:
                continue
            yield from _text_fields(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for index, item in enumerate(value, start=1):
            yield from _text_fields(item, f"{key}[{index}]")


# -- checks on the raw TOML -------------------------------------------------


@dataclass(frozen=True)
class _RawFinding:
    """A finding plus the TOML key it is about, to match it to a loader error."""

    key: str
    finding: Finding


_ADDRESS = re.compile(r"\b[\w.+-]+@([a-z0-9-]+(?:\.[a-z0-9-]+)+)\b", re.IGNORECASE)


def _check_raw(
    data: dict[str, Any], path: Path, scenario_id: str, domain: str
) -> list[_RawFinding]:
    results: list[_RawFinding] = []

    def add(key: str, severity: Severity, code: str, message: str) -> None:
        finding = Finding(scenario_id, path, severity, code, f"{key}: {message}")
        results.append(_RawFinding(key, finding))

    for key, text in _text_fields(data, ""):
        formatted = key == "starter_body"
        placeholders = find_placeholders(text, formatted=formatted)
        if _EXAMPLE_KEY.match(key):
            placeholders.extend(find_example_slots(text))
        for placeholder in dict.fromkeys(placeholders):
            if placeholder == "{" + STUDENT_NAME_FIELD + "}":
                add(
                    key,
                    "error",
                    "placeholder",
                    f'contains "{placeholder}", but only starter_body is filled '
                    "in, so the student would see it as written; write the text "
                    "without it",
                )
            else:
                add(
                    key,
                    "error",
                    "placeholder",
                    f'contains the placeholder "{placeholder}"; replace it with '
                    'the real text (only "{student_name}" in starter_body is '
                    'filled in; write "{{" and "}}" there for a literal brace)',
                )
        for match in _ADDRESS.finditer(text):
            if match.group(1).lower() != domain:
                add(
                    key,
                    "error",
                    "foreign-address",
                    f'contains the address "{match.group()}" outside {domain}; '
                    "students must never be sent to a real outside mailbox, so "
                    "remove it or use the counterpart instead",
                )

    counterpart = data.get("counterpart")
    local_part = (
        counterpart.get("local_part") if isinstance(counterpart, dict) else None
    )
    if isinstance(local_part, str) and "@" in local_part:
        local, _, address_domain = local_part.rpartition("@")
        where = (
            "our own domain"
            if address_domain.lower() == domain
            else "outside " + domain
        )
        add(
            "counterpart.local_part",
            "error",
            "foreign-address",
            f'is the full address "{local_part}" ({where}); the service sends '
            f'as LOCAL+TOKEN@{domain}, so write only the part before "@", '
            f'such as "{local or "maria.lopez"}"',
        )

    artefacts = data.get("artefacts")
    if isinstance(artefacts, list):
        for index, artefact in enumerate(artefacts, start=1):
            relative = artefact.get("file") if isinstance(artefact, dict) else None
            if isinstance(relative, str) and not (path.parent / relative).is_file():
                add(
                    f"artefacts[{index}].file",
                    "error",
                    "missing-file",
                    f'names "{relative}", which does not exist in '
                    f"{path.parent}; add the file (under scenarios/files/) or fix "
                    "the path, which is relative to the scenario file",
                )
    return results


# -- missing material --------------------------------------------------------

# Each noun the task may refer to, and the evidence that the student has it:
# a pattern that an artefact's name, text or file name must contain.
MATERIAL_NOUNS: dict[str, tuple[str, str]] = {
    "document": (r"documents?", r"documents?|forms?|sheets?"),
    "report": (r"reports?", r"reports?"),
    "spreadsheet": (r"spreadsheets?", r"spreadsheets?|\.csv|\.xlsx?|\.ods"),
    "invoice": (r"invoices?", r"invoices?"),
    "file": (r"files?", r"files?"),
    "attachment": (r"attachments?", r"attachments?"),
    "message": (r"messages?", r"messages?|e-?mails?|subject:"),
    "email": (r"e-?mails?", r"e-?mails?|messages?|subject:"),
    # The singular "note" also means "Note: ..." and is not material.
    "notes": (r"notes", r"notes?"),
    "list": (r"lists?", r"lists?|^\s*(?:[-*•]|\d+[.)])\s"),
    "process": (r"process(?:es)?", r"process|steps?|^\s*\d+[.)]\s"),
    "meeting": (r"meetings?", r"meetings?|\bmtg\b|stand-?up|check-in|\bcall\b"),
}
# Nouns that any file artefact provides, whatever its name.
_GENERIC_FILE_NOUNS = frozenset({"file", "attachment", "document"})
# Nouns that the starter email of a reply scenario is itself.
_STARTER_NOUNS = frozenset({"email", "message"})

_NOUN = "(?P<noun>" + "|".join(p for p, _ in MATERIAL_NOUNS.values()) + r")\b"
# Up to five modifier words between "the" and the noun: "the Q1 regional sales".
_MODS = r"(?:[\w$#.%'’-]+,?\s+){0,5}?"
_AGENT = r"(?:[Yy]ou|I|[Ww]e|[Hh]e|[Ss]he|[Tt]hey|[A-Z][a-z]+)"
_HAVE = r"(?:(?:have|has|had)\s+)?(?:(?:just|already)\s+)?"
_SEND_VERB = (
    r"(?:sent|attached|received|shared|forwarded|emailed|wrote|written|prepared|"
    r"uploaded|made|created|drafted|gave|missed|attended|joined)"
)
_DAY_WORDS = (
    "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|Yesterday|Today|"
    "Tomorrow|Tonight|Last|Next|This|That"
)

# Phrases that present material as already in the student's hands. Each needs
# the "noun" group. Nouns and verbs ignore case, but a capital letter marks a
# person's name, so the patterns are compiled without re.IGNORECASE.
REFERENCE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.MULTILINE)
    for pattern in (
        # "the report you sent", "the invoice that Carla received"
        rf"\b(?i:the|this|that|these|those)\s+(?i:{_MODS}{_NOUN})\s+"
        rf"(?:(?i:that|which)\s+)?{_AGENT}\s+(?i:{_HAVE}{_SEND_VERB})\b",
        # "the attached file", "the following list"
        rf"\b(?i:the|this|these)\s+(?i:(?:attached|enclosed|following|forwarded)"
        rf"\s+{_MODS}{_NOUN})",
        # "the notes are below", "your file is attached", "the list above"
        rf"\b(?i:the|this|these|your)\s+(?i:{_MODS}{_NOUN}\s+(?:(?:is|are)\s+)?"
        r"(?:attached|enclosed|below|above))\b",
        # "you sent your supervisor, Daniel Okafor, the Q1 sales report"
        rf"\b{_AGENT}\s+(?i:{_HAVE}(?:sent|attached|shared|forwarded|emailed|gave)"
        rf"\s+(?:[\w'’]+,?\s+){{0,4}}?the\s+{_MODS}{_NOUN})",
        # "Priya's email", but not "Thursday's meeting"
        rf"\b(?!(?:{_DAY_WORDS})['’])[A-Z][a-z]+['’]s\s+"
        rf"(?i:(?:[\w-]+\s+){{0,2}}?{_NOUN})",
        # "the notes from yesterday's meeting"
        rf"\b(?i:the\s+{_MODS}{_NOUN}\s+(?:from|of)\s+(?:yesterday|today|this "
        r"morning|last week|the)(?:['’]s)?\s+(?:[\w-]+\s+){0,2}?"
        r"(?:meeting|call|stand-?up|check-in))",
        # "your previous email", "my last report"
        rf"\b(?i:(?:your|my|his|her|their)\s+(?:previous|last|earlier|first|"
        rf"original)\s+(?:[\w-]+\s+){{0,2}}?{_NOUN})",
    )
)


def _canonical_noun(word: str) -> str:
    lowered = word.lower()
    for canonical, (pattern, _evidence) in MATERIAL_NOUNS.items():
        if re.fullmatch(pattern, lowered):
            return canonical
    return lowered


def _material_texts(scenario: Scenario) -> list[str]:
    texts = []
    for artefact in scenario.artefacts:
        texts.append(artefact.name)
        texts.append(artefact.text or "")
        if artefact.path is not None:
            texts.append(artefact.path.name)
    return texts


def _is_provided(
    scenario: Scenario, noun: str, phrase: str, field: str, starter_text: str
) -> bool:
    """Return whether an artefact (or, for the task, the starter) gives ``noun``."""
    evidence = re.compile(MATERIAL_NOUNS[noun][1], re.IGNORECASE | re.MULTILINE)
    attached_only = bool(re.search(r"attach|enclos", phrase, re.IGNORECASE))
    files = [artefact for artefact in scenario.artefacts if artefact.path is not None]
    if attached_only:
        # The brief lists text artefacts as quoted material, so "the attached
        # X" needs a real attachment.
        if noun in _GENERIC_FILE_NOUNS and files:
            return True
        return any(
            evidence.search(artefact.name) or evidence.search(artefact.path.name)
            for artefact in files
            if artefact.path is not None
        )
    if noun in _GENERIC_FILE_NOUNS and files:
        return True
    if any(evidence.search(text) for text in _material_texts(scenario)):
        return True
    if field == "task" and scenario.type == "reply":
        if noun in _STARTER_NOUNS:
            return True
        return bool(evidence.search(starter_text))
    return False


def check_missing_material(scenario: Scenario, path: Path) -> list[Finding]:
    """Find material that the task or starter presents as given but no artefact gives.

    A reference is a phrase from ``REFERENCE_PATTERNS`` ("the report you
    sent", "the attached file", "the notes below", "Priya's email") around a
    noun from ``MATERIAL_NOUNS``. It is provided when an artefact's name, text
    or file name contains the noun (or a close form, such as ".csv" for a
    spreadsheet), when any file artefact exists for "file", "attachment" or
    "document", and, for the task of a reply scenario, when the starter email
    contains it. "Attached" and "enclosed" need a file artefact, because text
    artefacts are quoted in the brief, not attached.
    """
    starter_text = ""
    if scenario.type == "reply":
        starter_text = (
            (scenario.starter_subject or "")
            + "\n"
            + (render_starter(scenario, "Student") if scenario.starter_body else "")
        )
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for field, text in (("task", scenario.task), ("starter_body", starter_text)):
        for pattern in REFERENCE_PATTERNS:
            for match in pattern.finditer(text):
                noun = _canonical_noun(match.group("noun"))
                phrase = " ".join(match.group().split())
                if (field, noun) in seen:
                    continue
                if _is_provided(scenario, noun, phrase, field, starter_text):
                    continue
                seen.add((field, noun))
                kind = (
                    "a file artefact" if "attach" in phrase.lower() else "an artefact"
                )
                findings.append(
                    Finding(
                        scenario.id,
                        path,
                        "error",
                        "missing-material",
                        f'{field} refers to "{phrase}", but the student is not '
                        f'given any {noun}; add {kind} whose name contains "{noun}" '
                        "([[artefacts]] with text = ... or file = ...), or reword "
                        "the text",
                    )
                )
    return findings


# -- key points --------------------------------------------------------------


def check_key_points(scenario: Scenario, path: Path) -> list[Finding]:
    """Warn about key points that share no topic word with what the student reads.

    The words of each key point (its text and keywords) are compared, as
    rough stems without stopwords, with the task, the key facts, the
    artefacts and the starter email. A point with no word in common asks for
    something the task never mentions.
    """
    parts = [scenario.task, scenario.starter_subject or "", scenario.starter_body or ""]
    for fact in scenario.key_facts:
        parts.append(fact.text)
        parts.extend(fact.keywords)
    parts.extend(_material_texts(scenario))
    context = content_stems("\n".join(parts))

    findings = []
    for index, point in enumerate(scenario.key_points, start=1):
        words = content_stems(" ".join((point.text, *point.keywords)))
        if words and not words & context:
            findings.append(
                Finding(
                    scenario.id,
                    path,
                    "warning",
                    "unrelated-key-point",
                    f'key_points[{index}] "{point.text}" shares no word with the '
                    "task, key facts, artefacts or starter email; ask for it in "
                    "the task, or change the point so that it matches the task",
                )
            )
    return findings


# -- starter email -----------------------------------------------------------

# A task sentence that says what the starter email contains, such as "Hannah
# has sent you a reminder about ..." or "She asks you to ...".
_STARTER_CLAUSE = re.compile(
    r"\b(?:sent|sends|wrote|writes|emailed|emails|forwarded|reminds|reminded|"
    r"asks|asked|says|said|tells|told|explains|lists|describes|mentions)\s+"
    r"(?:you|to\s+you|that)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”]?\s+|\n\s*\n")
_QUOTE = re.compile(r"[\"“]([^\"”\n]{3,})[\"”]")
# Share of the content words of a starter sentence that the starter must contain.
MIN_STARTER_OVERLAP = 0.5


def _normalise(text: str) -> str:
    return " ".join(text.replace("’", "'").lower().split())


def check_starter(scenario: Scenario, path: Path) -> list[Finding]:
    """Find task sentences about the starter email that the starter does not match.

    For a reply scenario, each task sentence with a clause such as "has sent
    you" or "asks you" describes the starter. Text quoted in that sentence
    must appear in the starter, and at least ``MIN_STARTER_OVERLAP`` of the
    topic words after the clause (when there are two or more) must appear in
    it as well.
    """
    if scenario.type != "reply" or scenario.starter_body is None:
        return []
    starter = (scenario.starter_subject or "") + "\n" + scenario.starter_body
    starter_stems = content_stems(starter)
    ignored = content_stems(" ".join((scenario.counterpart.name, "student")))
    ignored |= {stem(word) for word in STARTER_WORDS}

    findings = []
    for sentence in _SENTENCE_END.split(scenario.task):
        clause = _STARTER_CLAUSE.search(sentence)
        if clause is None:
            continue
        quoted_sentence = " ".join(sentence.split())
        for quoted in _QUOTE.findall(sentence):
            if _normalise(quoted.strip(" .,")) not in _normalise(starter):
                findings.append(
                    Finding(
                        scenario.id,
                        path,
                        "error",
                        "starter-mismatch",
                        f'the task quotes "{quoted}" from the starter email, but '
                        "starter_body does not contain it; copy the words into "
                        "starter_body or change the quote",
                    )
                )
        words = {
            key: word
            for key, word in content_words(sentence[clause.end() :]).items()
            if key not in ignored
        }
        if len(words) < 2:
            continue
        missing = [word for key, word in words.items() if key not in starter_stems]
        if len(words) - len(missing) < MIN_STARTER_OVERLAP * len(words):
            findings.append(
                Finding(
                    scenario.id,
                    path,
                    "error",
                    "starter-mismatch",
                    f'the task says "{quoted_sentence}", but starter_body does not mention '
                    f"most of it (missing words: {', '.join(missing)}); write that "
                    "content into starter_body or change the task",
                )
            )
    return findings


# -- examples and questions ----------------------------------------------------

# Honorifics are skipped when the names that may refer to the counterpart are
# built, so "Ms Priya Shah" gives "Priya" and "Priya Shah".
_HONORIFICS = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof"})
# A word after the name that makes the name the subject of a third-person verb.
# "[a-z]{2,}s" catches regular verbs ("Daniel needs"), and the lookahead leaves
# out common words that end in "s" but are not verbs.
_THIRD_PERSON_VERB = (
    r"(?!(?:this|his|hers|its|thus|plus|less|unless|across|yes|us)\b)"
    r"(?:is|has|does|was|will|can|could|would|should|may|might|must|[a-z]{2,}s)\b"
)


def counterpart_names(full_name: str) -> list[str]:
    """Return the forms of the name a sentence may use, longest first.

    They are the leading words of the name without an honorific: "Mei Lin Tan"
    gives "Mei Lin Tan", "Mei Lin" and "Mei".
    """
    words = full_name.split()
    while words and words[0].rstrip(".").lower() in _HONORIFICS:
        words = words[1:]
    return [" ".join(words[:count]) for count in range(len(words), 0, -1)]


def third_person_mentions(text: str, full_name: str) -> list[str]:
    """Return the third-person mentions of the person in ``text``, as written.

    Only a name followed by a third-person verb ("Daniel will") or by a
    possessive ("Daniel's") counts, so "Thank you, Daniel." passes.
    """
    names = counterpart_names(full_name)
    if not names:
        return []
    alternatives = "|".join(re.escape(name) for name in names)
    pattern = re.compile(rf"\b(?:{alternatives})(?:['’]s\b|\s+{_THIRD_PERSON_VERB})")
    return [match.group() for match in pattern.finditer(text)]


def check_examples(scenario: Scenario, path: Path) -> list[Finding]:
    """Check the ``example`` and ``question`` texts of key facts and key points.

    The offline grader builds its example answer from the examples and asks a
    missing point's question in the counterpart's reply. A key fact or key
    point without an example, or a key point without a question, is a
    warning. An example that names the counterpart in the third person is an
    error, because the example answer is written to the counterpart.
    """
    findings: list[Finding] = []
    entries = [("key_facts", fact) for fact in scenario.key_facts]
    entries += [("key_points", point) for point in scenario.key_points]
    names = counterpart_names(scenario.counterpart.name)
    given_name = names[-1] if names else "the counterpart"
    counts: dict[str, int] = {}
    for table, entry in entries:
        counts[table] = counts.get(table, 0) + 1
        name = f"{table}[{counts[table]}]"
        if not entry.example:
            findings.append(
                Finding(
                    scenario.id,
                    path,
                    "warning",
                    "missing-example",
                    f'{name} "{entry.text}" has no example, so the offline '
                    "grader's example answer rewrites the rubric text or leaves "
                    "the point out; add example = a sentence in the student's "
                    "voice, written to the counterpart, that makes this point",
                )
            )
        if table == "key_points" and not entry.question:
            findings.append(
                Finding(
                    scenario.id,
                    path,
                    "warning",
                    "missing-question",
                    f'{name} "{entry.text}" has no question, so the '
                    "counterpart's reply cannot ask for this point when a "
                    "student leaves it out; add question = what the "
                    "counterpart would ask, in character",
                )
            )
        for mention in dict.fromkeys(
            third_person_mentions(entry.example, scenario.counterpart.name)
        ):
            findings.append(
                Finding(
                    scenario.id,
                    path,
                    "error",
                    "third-person-counterpart",
                    f'{name}.example: contains "{mention}", but the example is '
                    f"written to {given_name}; "
                    'address them as "you" and "your" instead',
                )
            )
    return findings


# -- the whole folder --------------------------------------------------------


def _raw_id(data: dict[str, Any] | None, path: Path) -> str:
    value = data.get("id") if data else None
    return value if isinstance(value, str) and value.strip() else path.stem


def _read_raw(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def check_file(path: Path, domain: str) -> tuple[Scenario | None, list[Finding]]:
    """Check one scenario file; return the loaded scenario (None if invalid).

    A file that fails to load gives one ``load-failed`` error with the
    loader's message, unless a raw check already names the key the loader
    rejected (such as ``missing-file`` for ``artefacts[1].file``).
    """
    data = _read_raw(path)
    scenario_id = _raw_id(data, path)
    raw = _check_raw(data, path, scenario_id, domain) if data is not None else []
    findings = [item.finding for item in raw]
    try:
        scenario = load_scenario(path)
    except ConfigError as error:
        message = str(error)
        explained = any(f'key "{item.key}"' in message for item in raw)
        if not explained:
            findings.append(Finding(scenario_id, path, "error", "load-failed", message))
        return None, findings

    findings.extend(check_missing_material(scenario, path))
    findings.extend(check_key_points(scenario, path))
    findings.extend(check_starter(scenario, path))
    findings.extend(check_examples(scenario, path))
    return scenario, findings


def _check_directory(
    directory: Path, domain: str
) -> tuple[list[Scenario], list[Finding]]:
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: scenario folder not found; pass the folder that "
            "contains the *.toml scenario files"
        )
    paths = sorted(path for path in directory.glob("*.toml") if path.is_file())
    if not paths:
        finding = Finding(
            "",
            directory,
            "error",
            "no-scenarios",
            f"{directory} contains no *.toml scenario files; add at least one "
            "(the format is in docs/scenarios.md)",
        )
        return [], [finding]

    scenarios: list[Scenario] = []
    findings: list[Finding] = []
    path_by_id: dict[str, Path] = {}
    for path in paths:
        scenario, file_findings = check_file(path, domain.lower())
        findings.extend(file_findings)
        if scenario is None:
            continue
        if scenario.id in path_by_id:
            findings.append(
                Finding(
                    scenario.id,
                    path,
                    "error",
                    "duplicate-id",
                    f'id "{scenario.id}" is already used by '
                    f"{path_by_id[scenario.id]}; give each scenario its own id",
                )
            )
            continue
        path_by_id[scenario.id] = path
        scenarios.append(scenario)
    return scenarios, findings


def check_scenarios(directory: Path, domain: str) -> list[Finding]:
    """Check every ``*.toml`` file directly inside ``directory``.

    ``domain`` is the service domain (``service.domain`` in the config), the
    only domain a counterpart or an address in the text may use. Raises
    ConfigError only when ``directory`` does not exist. Findings come in file
    order; errors should block a release, warnings deserve a second look.
    """
    _scenarios, findings = _check_directory(directory, domain)
    return findings


def review_offline(
    directory: Path, domain: str, scenario_id: str | None = None
) -> list[Finding]:
    """Return the check results for one scenario, or for all when the id is None.

    Raises NotFoundError when no file in ``directory`` has ``scenario_id``
    (the file stem counts for a file that failed to load).
    """
    scenarios, findings = _check_directory(directory, domain)
    if scenario_id is None:
        return findings
    requested = scenario_id.strip().lower()
    known = {scenario.id for scenario in scenarios}
    known.update(finding.scenario_id for finding in findings)
    if requested not in known:
        raise NotFoundError(
            f'no scenario "{scenario_id}" in {directory}; run `peb-mail scenarios '
            "list` to see the ids"
        )
    return [finding for finding in findings if finding.scenario_id == requested]


# -- model review ------------------------------------------------------------


def render_review_prompt(
    scenario: Scenario,
    findings: Sequence[Finding] = (),
    *,
    prompts_dir: Path = DEFAULT_PROMPTS_DIR,
) -> str:
    """Render ``prompts/scenario_review.j2`` for one scenario."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(prompts_dir),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        template = environment.get_template(REVIEW_TEMPLATE)
    except jinja2.TemplateError as error:
        raise ConfigError(
            f"invalid or missing prompt template {prompts_dir / REVIEW_TEMPLATE}: "
            f"{error}"
        ) from error
    return template.render(
        scenario=scenario,
        starter_body=(
            scenario.starter_body.replace("{student_name}", "[student's name]")
            if scenario.starter_body
            else None
        ),
        findings=list(findings),
    )


def _import_litellm() -> Any:
    import litellm

    # litellm prints a "Give Feedback / Get Help" banner to stdout on every
    # error; the CLI reports errors itself.
    litellm.suppress_debug_info = True
    return litellm


async def review_with_model(
    scenario: Scenario,
    grader_config: GraderConfig,
    *,
    findings: Sequence[Finding] = (),
    prompts_dir: Path = DEFAULT_PROMPTS_DIR,
) -> str:
    """Ask the configured model to review one scenario and return its text.

    The call goes through litellm like ``peb_mail.llm_grader``: litellm is
    imported in a worker thread on first use, and ``grader_config.api_base``
    and ``timeout_s`` apply. Raises ConfigError without a model and
    GradingError when the provider fails or returns no text.
    """
    if not grader_config.model:
        raise ConfigError(
            'grader.model is empty: set a litellm model name such as "openai/gpt-4o-mini"'
        )
    prompt = render_review_prompt(scenario, findings, prompts_dir=prompts_dir)
    litellm = await asyncio.to_thread(_import_litellm)
    import openai

    try:
        async with asyncio.timeout(grader_config.timeout_s + _TIMEOUT_GRACE_S):
            response = await litellm.acompletion(
                model=grader_config.model,
                messages=[{"role": "user", "content": prompt}],
                api_base=grader_config.api_base or None,
                api_key=grader_config.api_key,
                temperature=0.0,
                timeout=grader_config.timeout_s,
                num_retries=0,
                drop_params=True,
            )
    except TimeoutError as error:
        raise GradingError(
            f"model {grader_config.model} timed out reviewing scenario "
            f"{scenario.id} (timeout {grader_config.timeout_s:g} s)"
        ) from error
    except openai.OpenAIError as error:
        # litellm's provider errors subclass the openai SDK's errors.
        raise GradingError(
            f"model {grader_config.model} failed reviewing scenario {scenario.id} "
            f"with {type(error).__name__}: {str(error)[:300]}"
        ) from error

    choices = getattr(response, "choices", None) or []
    content = (
        getattr(getattr(choices[0], "message", None), "content", None)
        if choices
        else None
    )
    if not isinstance(content, str) or not content.strip():
        raise GradingError(
            f"model {grader_config.model} returned no text for scenario {scenario.id}"
        )
    logger.info("Scenario review of %s by %s done", scenario.id, grader_config.model)
    return content.strip()


# -- preview -----------------------------------------------------------------


def render_preview(
    scenario: Scenario,
    config: Config,
    student_name: str,
    *,
    student_email: str = PREVIEW_STUDENT_EMAIL,
) -> list[EmailMessage]:
    """Build the brief (and, for a reply scenario, the starter) as a student gets them.

    It uses the same builder as intake, with the fixed token "preview" and no
    START message to thread under.
    """
    composer = Composer(config)
    built = composer.start_emails(
        scenario, Mailbox(student_name, student_email), PREVIEW_TOKEN
    )
    messages = []
    for item in built:
        message = email.message_from_bytes(item.raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def find_loaded(directory: Path, ref: str) -> Scenario:
    """Load the catalogue in ``directory`` and return the scenario ``ref`` names.

    The scenario keeps its catalogue number, so a preview shows the same
    subject line as the real brief.
    """
    return find_scenario(load_scenarios(directory), ref)
