"""Texts the offline grader writes: the example answer and the counterpart reply.

A key point's or key fact's ``text`` is rubric wording for graders, so neither
text pastes it. The example answer uses a point's ``example`` (a sentence in
the student's voice) and the reply uses its ``question`` when the scenario
gives them. Key facts without an example are turned into the student's voice
("You are free" becomes "I am free") and framed ("Please note that ...").
"""

from __future__ import annotations

import re

from peb_mail.models import KeyPoint, Scenario, Submission
from peb_mail.offline_checks import (
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
    covers,
    first_name,
    is_wall_of_text,
    match_case,
    normalise,
)

# Sentences inside one line: split after ".", "!" or "?" and a space.
INLINE_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
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
MAX_ANSWER_SENTENCES = 2
# Where a clause starts: a comma or a linking word such as "because" or "it's".
CLAUSE_START = re.compile(
    r",\s*|\s+(?=(and|but|because|so|its|it's|it is|it was|that is|that's|this is)\s)",
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


def clean_body(body: str, findings: Findings) -> list[str]:
    """Fix each line of the body and drop sentences that blame or sound rude.

    Sentences with a wrong number get the fact's number, and sentences over the
    length limit are cut in two, so no sentence the grader flags stays as is.
    """
    lines: list[str] = []
    for line in body.splitlines():
        if not line.strip():
            lines.append("")
            continue
        kept = []
        for sentence in INLINE_SENTENCE_SPLIT.split(line.strip()):
            sentence = remove_flagged_clauses(
                apply_corrections(sentence, findings.misspellings)
            )
            if not sentence:
                continue
            if sentence[-1] not in ".!?":
                sentence += "."
            sentence = fix_wrong_numbers(sentence, findings)
            kept.append(split_long_sentence(sentence))
        if kept:
            lines.append(" ".join(kept))
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
    first = first_name(full)
    names = sorted({full, first, full.split()[0]}, key=len, reverse=True)
    return "|".join(re.escape(name) for name in names if name)


def address_counterpart(sentence: str, scenario: Scenario) -> str:
    """Turn third-person mentions of the counterpart into "you" and "your".

    A name used to address the reader ("Thank you, Daniel.") stays.
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


def write_full_example(
    scenario: Scenario, submission: Submission, findings: Findings
) -> str:
    """Write a complete example email from the scenario's examples and facts."""
    counterpart_first = first_name(scenario.counterpart.name)
    opening: list[str] = []
    if scenario.type == "reply":
        opening.append("Thank you for your email.")
    elif not scenario.student_error:
        opening.append("I hope you are well.")
    if scenario.student_error:
        opening.append("I am sorry, but I made a mistake.")

    content = fact_sentences(scenario, list(scenario.key_facts))
    for point in scenario.key_points:
        if point.example:
            content.append(address_counterpart(as_sentence(point.example), scenario))

    # Points without an example get a short standard sentence of their kind.
    written = normalise(" ".join([*opening, *content]))
    ending: list[str] = []
    for point in scenario.key_points:
        if point.example or covers(written, point):
            continue
        kind = point_kind(point)
        if kind == "apology":
            opening.append("I am sorry for the trouble this causes.")
        elif kind == "thanks":
            ending.append("Thank you for your help.")
        elif kind == "confirm":
            ending.append("Please let me know if this works for you.")
        written = normalise(" ".join([*opening, *content, *ending]))
    if not NEXT_STEP_PATTERN.search(" ".join([*content, *ending])):
        ending.append("Please let me know if you have any questions.")

    blocks = [f"Dear {counterpart_first},"]
    blocks.append(" ".join(unique(opening)))
    blocks.extend(regroup_paragraphs(" ".join(unique(content))))
    blocks.append(" ".join(unique(ending)))
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


def write_light_revision(
    scenario: Scenario, submission: Submission, findings: Findings
) -> str:
    """Correct the student's own email and add missing points from their examples."""
    email = findings.email
    blocks = [revise_greeting(findings, first_name(scenario.counterpart.name))]

    body = strip_inline_greeting(email.body) if email.greeting_inline else email.body
    lines, typed_closing = cut_trailing_closings(clean_body(body, findings))
    polished = polish_text("\n".join(lines), findings)
    polished = "\n".join(
        address_counterpart(line, scenario) if line.strip() else line
        for line in polished.splitlines()
    )
    if is_wall_of_text(email):
        blocks.extend(regroup_paragraphs(polished))
    else:
        blocks.extend(
            part.strip() for part in PARAGRAPH_SPLIT.split(polished) if part.strip()
        )

    written = normalise(polished)
    additions = []
    for point in (*findings.missing_facts, *findings.missing_points):
        if point.example and not covers(written, point):
            additions.append(address_counterpart(as_sentence(point.example), scenario))
    owns_error = findings.has_responsibility and not findings.blame_phrases
    if findings.is_error_scenario and not owns_error:
        additions.insert(0, "I am sorry for my mistake, and I will correct it today.")
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


def answer_questions(scenario: Scenario, questions: list[str]) -> list[str]:
    """Pick up to two sentences of ``counterpart.knows`` that answer the questions.

    A sentence answers when it shares a content word with a question, or when
    a question asks "when" and the sentence names a day or a time.

    NOTE: word overlap is a rough test, so a sentence can answer a question
    only in part. Scenario ``question`` and ``knows`` wording controls this.
    """
    asked = content_words(" ".join(questions))
    asks_when = any(WHEN_QUESTION.search(question) for question in questions)
    ranked: list[tuple[int, int, str]] = []
    knows = " ".join(scenario.counterpart.knows.split())
    for position, sentence in enumerate(INLINE_SENTENCE_SPLIT.split(knows)):
        score = len(asked & content_words(sentence))
        if asks_when and WEEKDAY_OR_TIME.search(sentence):
            score += 1
        if score:
            ranked.append((-score, position, sentence))
    best = sorted(ranked)[:MAX_ANSWER_SENTENCES]
    return [
        counterpart_voice(sentence)
        for _, _, sentence in sorted(best, key=lambda x: x[1])
    ]


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
        if answers:
            sentences.extend(as_sentence(answer) for answer in answers)
        else:
            sentences.append(
                "Let me check and I will reply to "
                + ("them" if many else "it")
                + " shortly."
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
