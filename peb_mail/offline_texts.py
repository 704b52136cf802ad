"""Texts the offline grader writes: the example answer and the counterpart reply.

A key point's or key fact's ``text`` is rubric wording for graders, so neither
text pastes it. The example answer uses a point's ``example`` (a sentence in
the student's voice) and the reply uses its ``question`` when the scenario
gives them. Key facts without an example are turned into the student's voice
("You are free" becomes "I am free") and framed ("Please note that ...").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from peb_mail.models import KeyPoint, Scenario, Submission
from peb_mail.offline_checks import (
    APOLOGY_PATTERN,
    BLAME_PATTERN,
    CASUAL_GREETING,
    CASUAL_PATTERN,
    CASUAL_WORDS,
    CLOSINGS,
    EXCLAMATION_RUN,
    FORMAL_GREETING,
    LONG_SENTENCE_WORDS,
    LOWERCASE_I,
    NEXT_STEP_PATTERN,
    PARAGRAPH_SPLIT,
    REVISION_PARAGRAPH_WORDS,
    RUDE_PATTERN,
    SENTENCE_SPLIT,
    Findings,
    apply_corrections,
    content_words,
    count_words,
    counterpart_first_name,
    covers,
    first_name,
    is_wall_of_text,
    match_case,
    normalise,
)

# Sentences inside one line: split after ".", "!" or "?" and a space.
INLINE_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
# A list item: "- text", "* text", "• text", "1. text" or "1) text".
LIST_MARKER = re.compile(r"^\s*([-*•]|\d{1,2}[.)])\s+")
# Line ends that need no full stop: the line introduces a list (":") or goes
# on in the next line ("," or ";").
OPEN_LINE_END = (":", ",", ";")
# Closing quotes and brackets after the real last character of a line.
TRAILING_CLOSERS = "\"'’”)]"
# A line that is a sign-off, with or without a comma and a name after it.
CLOSING_LINE = re.compile(
    r"^\s*("
    + "|".join(re.escape(item) for item in sorted(CLOSINGS, key=len, reverse=True))
    + r")\b[\s,.!]*([A-Z][\w'’-]*(\s+[A-Z][\w'’-]*){0,2})?[\s.!]*$",
    re.IGNORECASE,
)
CASUAL_CLOSINGS = frozenset({"cheers", "thanks", "thx", "thanx", "thnx"})
# Points are sorted into these kinds by their keywords, so a point without an
# example still gets a fitting sentence in the full example answer.
APOLOGY_KEYWORDS = ("sorry", "apologi", "regret")
THANKS_KEYWORDS = ("thank", "appreciate", "grateful")
CONFIRM_KEYWORDS = ("confirm", "let me know", "works for you", "which")
# Groups of the full example answer, in the order of the email.
SENTENCE_GROUPS = (
    "opening",
    "situation",
    "next",
    "questions",
    "after questions",
    "closing",
)
THANKS_START = re.compile(r"^\s*(thank|many thanks|i appreciate)", re.IGNORECASE)
# Thanks for the message itself opens an email, and other thanks close it.
OPENING_THANKS = re.compile(
    r"^\s*thank you( very much)? for (your|the|this)( \w+)? (email|message|"
    r"reminder|feedback|note|letter|update|invitation|question)\b",
    re.IGNORECASE,
)
CLOSING_SENTENCE = re.compile(
    r"^\s*(thank|many thanks|if you|i am happy to|i'm happy to|i look forward|"
    r"i am looking forward|please let me know if you have)",
    re.IGNORECASE,
)
REQUEST_PATTERN = re.compile(
    r"\b(please (let me know|confirm|send|use|check|tell)|could you|can you|"
    r"would you)\b",
    re.IGNORECASE,
)
UNDERSTANDING_START = re.compile(r"^\s*(if |as )?i understand\b", re.IGNORECASE)
# Next steps that wait for the reader's answers follow the questions.
AFTER_ANSWERS = re.compile(
    r"\b(in the meantime|meanwhile|once i have your|when i have your|"
    r"as soon as i have your|after your answer)",
    re.IGNORECASE,
)
FUTURE_ACTION = re.compile(
    r"\b(i|we) (will|'ll|am going to|are going to)\b|\byou will (receive|get)\b|"
    r"\bfrom (today|now on)\b|\bthis afternoon\b",
    re.IGNORECASE,
)
# The first key fact that keeps its own wording gets a frame that fits the
# scenario type; the next ones start with these words.
FACT_LINKS = ("Also, ", "In addition, ")
LOWER_FIRST_WORDS = frozenset(
    {"the", "a", "an", "this", "these", "there", "it", "our", "all", "each"}
)
SUBJECT_START = re.compile(
    r"(^|(?<=[,;:])\s|\b(and|so|because|but|if|when|that|as)\s)you\b", re.IGNORECASE
)
THIRD_PERSON_VERBS = {"is": "are", "has": "have", "does": "do", "was": "were"}
FIRST_PERSON_VERBS = {"is": "am", "has": "have", "does": "do", "was": "was"}
ADVERBS = frozenset(
    {"also", "always", "never", "often", "only", "really", "sometimes", "still"}
)
WEEKDAY_OR_TIME = re.compile(
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|today|tomorrow|"
    r"noon|\d{1,2}(:\d\d)?\s?(am|pm)|\d{1,2}:\d\d)\b",
    re.IGNORECASE,
)
WHEN_QUESTION = re.compile(r"\b(when|deadline|date|time|how soon|by when)\b", re.I)
# The reply answers at most this many of the student's questions, one sentence
# each, and promises to answer the rest later.
MAX_ANSWERED_QUESTIONS = 4
# A sentence whose content words are at least this share of the student's
# words repeats what the student wrote, so the corrected copy does not add it.
REPEAT_SHARE = 0.6
# Where a clause starts: a comma or a linking word such as "because" or "it's".
CLAUSE_START = re.compile(
    r",\s*|\s+(?=(and|but|because|so|its|it's|it is|it was|that is|that's|this is)\s)",
    re.IGNORECASE,
)
# The topic of a question: a short label before a colon ("Deadline: when
# ...?"), a noun phrase of up to three words after a determiner ("the
# update"), or the noun after "what" or "which" ("what format").
TOPIC_LABEL = re.compile(r"^([A-Za-z][A-Za-z -]{1,24}):\s")
TOPIC_STOP_WORDS = (
    r"(?:to|for|with|as|on|in|at|by|of|or|and|before|after|if|so|from|about|is|"
    r"are|was|were|will|be|today|tomorrow|again|too|now|then)"
)
TOPIC_PHRASE = re.compile(
    r"\b(the|your|my|our|this)\s+"
    rf"((?!{TOPIC_STOP_WORDS}\b)[a-z0-9][\w.-]*"
    rf"(?:\s+(?!{TOPIC_STOP_WORDS}\b)[a-z0-9][\w.-]*){{0,2}})",
    re.IGNORECASE,
)
TOPIC_AFTER_QUESTION_WORD = re.compile(
    r"\b(what|which)\s+(?!(?:is|are|was|were|do|does|did|will|would|can|could|"
    r"should|shall|you|i|we)\b)([a-z]+)",
    re.IGNORECASE,
)
# A greeting on the same line as the text ends at a comma this close to it.
INLINE_GREETING_CHARS = 30


def replace_casual(match: re.Match[str]) -> str:
    return match_case(match.group(), CASUAL_WORDS[match.group().lower()])


def polish_text(text: str, findings: Findings) -> str:
    """Fix casual words, shouting, a small "i", misspellings and repeated words."""
    polished = CASUAL_PATTERN.sub(replace_casual, text)
    for word in findings.shouted_words:
        is_name = word.lower() in findings.name_parts
        calm = word.capitalize() if is_name else word.lower()
        polished = re.sub(rf"\b{word}\b", calm, polished)
    polished = EXCLAMATION_RUN.sub(".", polished)
    polished = LOWERCASE_I.sub("I", polished)
    polished = apply_corrections(polished, findings.misspellings)
    polished = re.sub(r"\b(\w+)(\s+\1\b)+", r"\1", polished, flags=re.IGNORECASE)
    # Removed casual words ("lol", "whatever") can leave stray commas and gaps.
    polished = re.sub(r"(^|[.!?])([ \t]*[,;])+[ \t]*", r"\1 ", polished, flags=re.M)
    polished = re.sub(r"[ \t]+([,.!?])", r"\1", polished)
    polished = re.sub(r"[ \t]{2,}", " ", polished)
    polished = re.sub(r"^[ \t,]+", "", polished, flags=re.MULTILINE)
    # A sentence starts at the start of the text, after ".", "!" or "?" and
    # at a new paragraph. A line that goes on from the line before it (a list
    # item or a hard-wrapped sentence) keeps its small letter.
    return re.sub(
        r"(\A|[.!?][\"'’”)]*\s+|\n[ \t]*\n[ \t]*)([a-z])",
        lambda match: match.group(1) + match.group(2).upper(),
        polished,
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
    stripped = " ".join(text.split())
    if stripped and stripped[-1] not in ".!?":
        stripped += "."

    return stripped[:1].upper() + stripped[1:]


def split_long_sentence(sentence: str) -> str:
    """Cut a sentence over the length limit in two at the comma or "and" nearest
    its middle."""
    if count_words(sentence) <= LONG_SENTENCE_WORDS:
        return sentence
    middle = len(sentence) // 2
    cuts = [
        match
        for match in re.finditer(r",\s+(and|but|so)?\s*|\s+(and|but|so)\s+", sentence)
        if 0 < match.start() < len(sentence) - 1
    ]
    if not cuts:
        return sentence
    cut = min(cuts, key=lambda match: (abs(match.start() - middle), match.start()))
    first = sentence[: cut.start()].rstrip(" ,")
    rest = sentence[cut.end() :].lstrip()
    link = (cut.group(1) or cut.group(2) or "").lower()
    if link in ("but", "so"):
        rest = f"{link} {rest}"
    return f"{first}. {rest[:1].upper()}{rest[1:]}"


def fix_wrong_numbers(sentence: str, findings: Findings) -> str:
    for wrong in findings.wrong_numbers:
        if wrong.sentence == " ".join(sentence.split()):
            sentence = sentence.replace(wrong.written, wrong.expected)
    return sentence


def remove_flagged_clauses(sentence: str) -> str:
    """Cut clauses that blame others or sound rude; return "" if nothing is left.

    A clause runs from the last comma or linking word before the phrase to the
    end of the phrase, so "I can't join, it is not my fault." keeps
    "I can't join.".
    """
    plain = sentence.replace("’", "'")
    while True:
        match = BLAME_PATTERN.search(plain) or RUDE_PATTERN.search(plain)
        if match is None:
            return sentence
        starts = [
            item.start() for item in CLAUSE_START.finditer(plain[: match.start()])
        ]
        start = starts[-1] if starts else 0
        if start == 0:
            return ""
        end = match.end()
        tail = plain[end:].lstrip(" ,")
        plain = plain[:start].rstrip(" ,") + (
            " " + tail if tail[:1].isalnum() else tail
        )
        sentence = plain
        if not re.search(r"[A-Za-z]", plain.strip(" .!?")):
            return ""


def needs_full_stop(line: str, next_line: str) -> bool:
    """Return whether a line of the body is a sentence that lacks a full stop.

    List items and lines that end in ":", "," or ";" stay as written, and so
    does a line whose sentence goes on in the next line, which starts with a
    small letter (a hard-wrapped email).
    """
    if LIST_MARKER.match(line):
        return False
    end = line.rstrip().rstrip(TRAILING_CLOSERS)
    if not end or end[-1] in ".!?" or end.endswith(OPEN_LINE_END):
        return False
    following = next_line.strip()
    continues = following[:1].islower() and not re.match(r"i\b", following)
    return not continues


def clean_body(body: str, findings: Findings) -> list[str]:
    """Fix each line of the body and drop sentences that blame or sound rude.

    Sentences with a wrong number get the fact's number, and sentences over the
    length limit are cut in two, so no sentence the grader flags stays as is.
    A list marker stays at the start of its line, and only sentence lines get
    a missing full stop (see ``needs_full_stop``).
    """
    raw_lines = body.splitlines()
    lines: list[str] = []
    for index, line in enumerate(raw_lines):
        if not line.strip():
            lines.append("")
            continue
        marker = LIST_MARKER.match(line)
        prefix = marker.group(1) + " " if marker else ""
        text = line[marker.end() :] if marker else line.strip()
        kept = []
        for sentence in INLINE_SENTENCE_SPLIT.split(text.strip()):
            sentence = remove_flagged_clauses(
                apply_corrections(sentence, findings.misspellings)
            )
            if not sentence:
                continue
            sentence = fix_wrong_numbers(sentence, findings)
            kept.append(split_long_sentence(sentence))
        if not kept:
            continue
        cleaned = prefix + " ".join(kept)
        next_line = raw_lines[index + 1] if index + 1 < len(raw_lines) else ""
        if needs_full_stop(cleaned, next_line):
            cleaned += "."
        lines.append(cleaned)
    return lines


def cut_trailing_closings(lines: list[str]) -> tuple[list[str], str]:
    """Remove sign-off lines left at the end of the body; return the first one.

    The parser misses sign-offs such as "Thanks Ana" or "Best regards Ana"
    without a comma, and keeping them would give the answer two sign-offs.
    """
    closing = ""
    while lines and (not lines[-1].strip() or CLOSING_LINE.match(lines[-1])):
        line = lines.pop()
        match = CLOSING_LINE.match(line)
        if match:
            closing = match.group(1)
    return lines, closing


def closing_phrase(phrase: str) -> str:
    """Return a sign-off such as "Best regards," for the example answer."""
    words = phrase.strip(" ,.!").lower()
    if not words or words in CASUAL_CLOSINGS or words in CASUAL_WORDS:
        return "Best regards,"
    return words[:1].upper() + words[1:] + ","


def strip_inline_greeting(body: str) -> str:
    """Remove a greeting that shares its line with the first sentence."""
    match = FORMAL_GREETING.match(body) or CASUAL_GREETING.match(body)
    if not match:
        return body
    comma = body.find(",", match.end(), match.end() + INLINE_GREETING_CHARS)
    cut = comma + 1 if comma != -1 else match.end()
    return body[cut:].lstrip(" ,")


def revise_greeting(findings: Findings, counterpart_first: str) -> str:
    email = findings.email
    if not email.greeting_line or email.greeting_is_casual:
        return f"Dear {counterpart_first},"
    if email.greeting_inline:
        word = email.greeting_line.split()[0].strip(",").capitalize()
        return f"{word} {counterpart_first},"
    if len(email.greeting_line.split()) == 1:
        # A bare "Hi" gets the counterpart's name.
        return f"{email.greeting_line.rstrip(',!.')} {counterpart_first},"
    greeting = polish_text(email.greeting_line, findings).rstrip(" .!")
    return greeting if greeting.endswith(",") else greeting + ","


def name_pattern(scenario: Scenario) -> str:
    full = scenario.counterpart.name
    first = counterpart_first_name(scenario)
    names = sorted({full, first, full.split()[0]}, key=len, reverse=True)
    return "|".join(re.escape(name) for name in names if name)


def address_counterpart(
    sentence: str, scenario: Scenario, *, capitalise: bool = True
) -> str:
    """Turn third-person mentions of the counterpart into "you" and "your".

    A name used to address the reader ("Thank you, Daniel.") stays. With
    ``capitalise`` false, a line that starts with a small letter keeps it,
    because it goes on from the line before it.
    """
    names = name_pattern(scenario)
    sentence = re.sub(rf"\b({names})['’]s\b", "your", sentence)

    def as_subject(match: re.Match[str]) -> str:
        verb = match.group(2)
        lowered = verb.lower()
        if lowered in THIRD_PERSON_VERBS:
            verb = THIRD_PERSON_VERBS[lowered]
        elif lowered.endswith("ies") and len(lowered) > 4:
            verb = verb[:-3] + "y"
        elif re.search(r"(ss|sh|ch|x|o)es$", lowered):
            verb = verb[:-2]
        elif lowered.endswith("s") and not lowered.endswith("ss"):
            verb = verb[:-1]
        return f"you {verb}"

    sentence = re.sub(
        rf"\b({names})\s+(is|has|does|was|will|can|should|would|could|may|"
        rf"[a-z]+s)\b(?!['’])",
        as_subject,
        sentence,
    )
    # Any other mention ("ask Hannah", "Hannah and Omar") becomes "you", but a
    # name that addresses the reader ("Thank you, Hannah.") stays.
    sentence = re.sub(rf"(?<!, )\b({names})\b(?![,.!?]\s*$)(?!,)", "you", sentence)
    if not capitalise:
        return sentence
    return sentence[:1].upper() + sentence[1:]


def student_voice(text: str) -> str:
    """Turn a key fact that addresses the student ("You are free") into "I am"."""
    voiced = re.sub(r"\byourself\b", "myself", text, flags=re.IGNORECASE)
    voiced = re.sub(r"\byours\b", "mine", voiced, flags=re.IGNORECASE)
    voiced = re.sub(r"\byour\b", "my", voiced)
    voiced = re.sub(r"\bYour\b", "My", voiced)
    voiced = SUBJECT_START.sub(
        lambda match: match.group(0)[: -len("you")] + "I", voiced
    )
    voiced = re.sub(r"\byou\b", "me", voiced, flags=re.IGNORECASE)
    voiced = re.sub(r"\bI are\b", "I am", voiced)
    voiced = re.sub(r"\bI were\b", "I was", voiced)
    return voiced[:1].upper() + voiced[1:]


def fact_sentences(scenario: Scenario, facts: list[KeyPoint]) -> list[str]:
    """Write each fact as a sentence of the student: its example or its voiced text."""
    sentences: list[str] = []
    links = iter(FACT_LINKS)
    framed = 0
    for fact in facts:
        if fact.example:
            sentences.append(address_counterpart(as_sentence(fact.example), scenario))
            continue
        text = as_sentence(fact.text)
        voiced = address_counterpart(student_voice(text), scenario)
        if voiced != text:
            if voiced.startswith("You will"):
                voiced = "I know that you will" + voiced[len("You will") :]
            sentences.append(voiced)
            continue
        first_word = text.split(" ", 1)[0].lower()
        body = text[:1].lower() + text[1:] if first_word in LOWER_FIRST_WORDS else text
        if framed == 0:
            frame = (
                "I understand that "
                if scenario.type == "reply"
                else ("Please note that ")
            )
        else:
            frame = next(links, "Also, ")
            if frame != "Please note that " and first_word not in LOWER_FIRST_WORDS:
                body = text
        framed += 1
        sentences.append(frame + body)
    return sentences


def point_kind(point: KeyPoint) -> str:
    keywords = " ".join(point.keywords).lower()
    if any(word in keywords for word in APOLOGY_KEYWORDS):
        return "apology"
    if any(word in keywords for word in THANKS_KEYWORDS):
        return "thanks"
    if any(word in keywords for word in CONFIRM_KEYWORDS):
        return "confirm"
    return ""


def sentence_group(sentence: str, apology_point: bool) -> str:
    """Return the part of the full example answer that a sentence belongs to.

    The parts, in the order of the email, are the opening (thanks for the
    message, an apology), the situation, what happens next, questions and
    requests, and the closing. A point of the apology kind whose example has
    no apology word ("It was my mistake, and I will ...") takes responsibility,
    so it goes with what happens next, after the facts it refers to.
    """
    if OPENING_THANKS.match(sentence) or APOLOGY_PATTERN.search(sentence):
        return "opening"
    if apology_point:
        return "next"
    if CLOSING_SENTENCE.match(sentence):
        return "closing"
    if sentence.rstrip().endswith("?") or REQUEST_PATTERN.search(sentence):
        return "questions"
    if UNDERSTANDING_START.match(sentence):
        return "situation"
    if AFTER_ANSWERS.search(sentence):
        return "after questions"
    if FUTURE_ACTION.search(sentence):
        return "next"
    return "situation"


def example_sentences(scenario: Scenario) -> list[tuple[str, str]]:
    """Pair each fact sentence and each point example with its group."""
    pairs: list[tuple[str, str]] = []
    facts = list(scenario.key_facts)
    for sentence in fact_sentences(scenario, facts):
        pairs.append((sentence_group(sentence, False), sentence))
    apologised = any(
        group == "opening" and APOLOGY_PATTERN.search(text) for group, text in pairs
    )
    for point in scenario.key_points:
        if not point.example:
            continue
        sentence = address_counterpart(as_sentence(point.example), scenario)
        apology_point = point_kind(point) == "apology"
        group = sentence_group(sentence, apology_point)
        if apology_point and group == "next" and not apologised:
            # Responsibility alone would leave the example without an apology.
            sentence = "I apologise. " + sentence
        if group == "opening" and APOLOGY_PATTERN.search(sentence):
            apologised = True
        pairs.append((group, sentence))
    return pairs


def write_full_example(
    scenario: Scenario, submission: Submission, findings: Findings
) -> str:
    """Write a complete example email from the scenario's examples and facts.

    The opening uses the scenario's own thanks and apology examples. Only when
    there is none does it use a standard sentence: thanks for the email in a
    reply, an apology when the situation is the student's mistake, and "I hope
    you are well." otherwise. The other sentences follow in the order
    situation, next steps, questions and closing, and keep the scenario's order
    within each part.
    """
    counterpart_first = counterpart_first_name(scenario)
    pairs = example_sentences(scenario)
    groups: dict[str, list[str]] = {name: [] for name in SENTENCE_GROUPS}
    for group, sentence in pairs:
        groups[group].append(sentence)
    examples = [point.example for point in (*scenario.key_facts, *scenario.key_points)]
    has_thanks = any(THANKS_START.match(text) for text in examples if text)
    has_apology = any(APOLOGY_PATTERN.search(sentence) for _, sentence in pairs)
    opening = groups["opening"]
    if scenario.type == "reply" and not has_thanks:
        opening.insert(0, "Thank you for your email.")
    if scenario.student_error and not has_apology:
        opening.append("I am sorry, but I made a mistake.")
    if not opening and scenario.type != "reply" and not scenario.student_error:
        opening.append("I hope you are well.")

    # Points without an example get a short standard sentence of their kind.
    written = normalise(" ".join(sentence for _, sentence in pairs))
    for point in scenario.key_points:
        if point.example or covers(written, point):
            continue
        kind = point_kind(point)
        if kind == "apology":
            opening.append("I am sorry for the trouble this causes.")
        elif kind == "thanks":
            groups["closing"].append("Thank you for your help.")
        elif kind == "confirm":
            groups["questions"].append("Please let me know if this works for you.")
        written = normalise(" ".join([written, *opening, *groups["closing"]]))
    body_after_opening = [
        sentence for name in SENTENCE_GROUPS[1:] for sentence in groups[name]
    ]
    if not NEXT_STEP_PATTERN.search(" ".join(body_after_opening)):
        groups["closing"].append("Please let me know if you have any questions.")

    blocks = [f"Dear {counterpart_first},"]
    blocks.extend(
        regroup_paragraphs(" ".join(unique([*opening, *groups["situation"]])))
    )
    blocks.extend(regroup_paragraphs(" ".join(unique(groups["next"]))))
    later = [*groups["questions"], *groups["after questions"], *groups["closing"]]
    blocks.extend(regroup_paragraphs(" ".join(unique(later))))
    name = submission.student_name or findings.email.signed_name
    blocks.append(f"Best regards,\n{name}".rstrip())
    return "\n\n".join(block for block in blocks if block.strip())


def unique(sentences: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for sentence in sentences:
        key = normalise(sentence)
        if sentence and key not in seen:
            seen.add(key)
            result.append(sentence)
    return result


def repeats_student(sentence: str, student_words: set[str]) -> bool:
    """Return whether most content words of the sentence are in the student's text."""
    words = content_words(sentence)
    return bool(words) and len(words & student_words) >= REPEAT_SHARE * len(words)


def missing_examples(
    scenario: Scenario, findings: Findings, polished: str
) -> list[str]:
    """Return the examples of missing facts and points that the copy should add.

    An example is added only when its entry is still missing from the copy and
    the sentences added before it, and when the student has not already said
    most of it in other words. Entries often share one example (an apology
    that also names the order number), so without these checks a student who
    leaves out only the number would get the whole apology again.
    """
    written = normalise(polished)
    student_words = content_words(polished)
    additions: list[str] = []
    for point in (*findings.missing_facts, *findings.missing_points):
        if not point.example or covers(written, point):
            continue
        sentence = address_counterpart(as_sentence(point.example), scenario)
        if repeats_student(sentence, student_words):
            continue
        additions.append(sentence)
        written = normalise(" ".join([polished, *additions]))
    return unique(additions)


def write_light_revision(
    scenario: Scenario, submission: Submission, findings: Findings
) -> str:
    """Correct the student's own email and add missing points from their examples."""
    email = findings.email
    blocks = [revise_greeting(findings, counterpart_first_name(scenario))]

    body = strip_inline_greeting(email.body) if email.greeting_inline else email.body
    lines, typed_closing = cut_trailing_closings(clean_body(body, findings))
    polished = polish_text("\n".join(lines), findings)
    polished = "\n".join(
        address_counterpart(line, scenario, capitalise=False) if line.strip() else line
        for line in polished.splitlines()
    )
    if is_wall_of_text(email):
        blocks.extend(regroup_paragraphs(polished))
    else:
        blocks.extend(
            part.strip() for part in PARAGRAPH_SPLIT.split(polished) if part.strip()
        )

    additions = missing_examples(scenario, findings, polished)
    owns_error = findings.has_responsibility and not findings.blame_phrases
    if findings.is_error_scenario and not owns_error:
        additions.insert(
            0,
            "I made a mistake, and I will correct it today."
            if findings.has_apology
            else "I am sorry for my mistake, and I will correct it today.",
        )
    if additions:
        blocks.append(" ".join(unique(additions)))
    if not findings.has_next_step and not NEXT_STEP_PATTERN.search(" ".join(additions)):
        blocks.append("Please let me know if you have any questions.")

    name = email.signed_name or submission.student_name
    phrase = email.closing_line.split(",", 1)[0] if email.closing_line else ""
    signed_closing = CLOSING_LINE.match(email.signed_name)
    if signed_closing:
        # "Thanks Ana" without a comma is a sign-off, not a name.
        typed_closing = typed_closing or signed_closing.group(1)
        name = submission.student_name or (signed_closing.group(2) or "")
    blocks.append(f"{closing_phrase(phrase or typed_closing)}\n{name}".rstrip())
    return "\n\n".join(blocks)


def write_revision(
    scenario: Scenario, submission: Submission, findings: Findings, *, full: bool
) -> str:
    """Write the example answer: a full new email or a corrected copy.

    ``full`` is for weak emails, where a corrected copy would keep too little.
    """
    if full:
        return write_full_example(scenario, submission, findings)
    return write_light_revision(scenario, submission, findings)


def counterpart_voice(sentence: str) -> str:
    """Turn a sentence about the counterpart ("She wants ...") into "I want ...".

    NOTE: the rules cover the third-person forms of the shipped ``knows`` texts
    (she, he, her, his, "the student"). Other wording passes through unchanged.
    """
    voiced = re.sub(r"\b[Bb]oth of them (can|will|are)\b", r"we \1 both", sentence)
    voiced = re.sub(r"\b[Bb]oth of them\b", "we both", voiced)
    voiced = re.sub(r"\bthe student's\b", "your", voiced)
    voiced = re.sub(r"\bthe student\b", "you", voiced)
    voiced = re.sub(r"\b(She|He|she|he)\b", "I", voiced)
    # At the start of a sentence "Her" and "His" can only be possessive.
    voiced = re.sub(r"^(Her|His)(?= [a-z])", "My", voiced)
    voiced = re.sub(
        r"\b(her|his)(?= [a-z])(?! (to|and|in|on|at|for|if)\b)", "my", voiced
    )
    voiced = re.sub(r"\b(her|him)\b", "me", voiced)
    voiced = re.sub(r"\b(herself|himself)\b", "myself", voiced)
    voiced = re.sub(r"\bI and ([A-Z][\w'’-]*)((?:, [^,]+,)?)", r"\1\2 and I", voiced)

    def agree(match: re.Match[str]) -> str:
        adverb, verb = match.group(1) or "", match.group(2)
        lowered = verb.lower()
        if lowered in FIRST_PERSON_VERBS:
            verb = FIRST_PERSON_VERBS[lowered]
        elif lowered.endswith("ies") and len(lowered) > 4:
            verb = verb[:-3] + "y"
        elif re.search(r"(ss|sh|ch|x|o)es$", lowered):
            verb = verb[:-2]
        elif lowered.endswith("s") and not lowered.endswith("ss"):
            verb = verb[:-1]
        return f"I {adverb}{verb}"

    adverbs = "|".join(sorted(ADVERBS))
    voiced = re.sub(rf"\bI ((?:{adverbs}) )?([a-z]+)\b", agree, voiced)
    return voiced[:1].upper() + voiced[1:]


@dataclass
class Answers:
    """The counterpart's answers to the student's questions."""

    # Sentences of ``counterpart.knows`` in the counterpart's voice, in the
    # order of the questions they answer, each sentence once.
    sentences: list[str]
    # Questions that no sentence answers, and questions past the limit.
    unanswered: list[str]


def answer_questions(scenario: Scenario, questions: list[str]) -> Answers:
    """Answer each question, up to MAX_ANSWERED_QUESTIONS, from ``counterpart.knows``.

    A sentence answers a question when it shares a content word with it, or
    when the question asks "when" and the sentence names a day or a time. Each
    question gets the sentence with the highest score. On a tie a sentence not
    used yet wins, then the earlier one.

    NOTE: word overlap is a rough test, so a sentence can answer a question
    only in part. Scenario ``question`` and ``knows`` wording controls this.
    """
    knows = INLINE_SENTENCE_SPLIT.split(" ".join(scenario.counterpart.knows.split()))
    known = [(sentence, content_words(sentence)) for sentence in knows if sentence]
    # A word found in many sentences ("call" in a scenario about a call) does
    # not tell them apart, so a shared word counts 1 / (sentences with it).
    spread = Counter(word for _, words in known for word in words)
    chosen: list[int] = []
    unanswered: list[str] = list(questions[MAX_ANSWERED_QUESTIONS:])
    for question in questions[:MAX_ANSWERED_QUESTIONS]:
        asked = content_words(question)
        asks_when = bool(WHEN_QUESTION.search(question))
        best: tuple[float, bool, int] | None = None
        for position, (sentence, words) in enumerate(known):
            score = sum(1 / spread[word] for word in asked & words)
            if asks_when and WEEKDAY_OR_TIME.search(sentence):
                score += 1
            key = (score, position not in chosen, -position)
            if score and (best is None or key > best):
                best = key
        if best is None:
            unanswered.append(question)
        elif -best[2] not in chosen:
            chosen.append(-best[2])
    return Answers(
        sentences=[counterpart_voice(known[position][0]) for position in chosen],
        unanswered=unanswered,
    )


def question_topic(question: str) -> str:
    """Name what a question is about, such as "the format", or return "".

    The topic is a label before a colon ("Deadline: when ...?"), a noun phrase
    after "the", "your", "my" or "our", the noun after "what" or "which", or
    "the timing" for a question about a date or a time.
    The student's "my" and "your" swap, because the counterpart names them.
    """
    text = LIST_MARKER.sub("", question).strip()
    label = TOPIC_LABEL.match(text)
    if label:
        return "the " + label.group(1).lower()
    phrase = TOPIC_PHRASE.search(text)
    if phrase:
        owner = phrase.group(1).lower()
        owner = {"my": "your", "your": "my", "this": "the"}.get(owner, owner)
        return f"{owner} {phrase.group(2).rstrip('.')}"
    asked = TOPIC_AFTER_QUESTION_WORD.search(text)
    if asked:
        return "the " + asked.group(2).lower()
    if WHEN_QUESTION.search(text):
        return "the timing"
    return ""


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def promise_answers(unanswered: list[str], answered_any: bool) -> list[str]:
    """Promise a later answer to the questions that ``knows`` does not answer."""
    if not unanswered:
        return []
    topics = [question_topic(question) for question in unanswered]
    named = unique([topic for topic in topics if topic])
    if not answered_any and len(named) < len(topics):
        many = len(unanswered) > 1
        return [f"Let me check and I will reply to {'them' if many else 'it'} shortly."]
    sentences = []
    if named:
        sentences.append(f"I will check and reply about {join_words(named)} shortly.")
    if len(named) < len(topics):
        other = "questions" if len(topics) - len(named) > 1 else "question"
        sentences.append(f"I will check your other {other} and reply shortly.")
    return sentences


def write_counterpart_reply(
    scenario: Scenario, submission: Submission, findings: Findings, *, on_task: bool
) -> str:
    """Write a short in-character reply from the counterpart to the student."""
    student_first = first_name(submission.student_name) or submission.student_name
    sentences = ["Thank you for your email."]
    missing = [*findings.missing_facts, *findings.missing_points]
    if not on_task:
        sentences.append(
            "I am not sure I understand your plan yet. Could you tell me a bit more?"
        )

    if findings.questions:
        many = len(findings.questions) > 1
        sentences.append("Good questions." if many else "Good question.")
        answers = answer_questions(scenario, findings.questions)
        sentences.extend(as_sentence(answer) for answer in answers.sentences)
        sentences.extend(
            promise_answers(answers.unanswered, answered_any=bool(answers.sentences))
        )

    for wrong in findings.wrong_numbers[:1]:
        sentences.append(
            f"You wrote {wrong.written}, but I have {wrong.expected} in my notes. "
            "Could you check this number?"
        )

    if findings.attachment_missing:
        sentences.append(
            "You mention an attachment, but I cannot see one. Could you send it again?"
        )

    asked = [point.question for point in missing if point.question]
    if on_task and asked:
        sentences.append(as_sentence(asked[0]))
    elif on_task and not missing and findings.has_next_step:
        sentences.append("Your plan works for me.")
    elif on_task and not findings.has_next_step and not findings.questions:
        sentences.append("What do you suggest as the next step?")

    if findings.rude_phrases or findings.shouted_words:
        sentences.append("I would also ask you to keep a calm tone in our emails.")
    lines = [f"Hi {student_first},", "", " ".join(sentences)]
    lines.extend(["", "Best regards,", scenario.counterpart.name])
    return "\n".join(lines)
