"""Rule-based grader that scores an email on the 7-criterion rubric without a network.

It is the service's default grader: the same scenario and submission always give
the same verdict, built from checks on greeting, tone, key points, spelling and
layout. The checks live in ``offline_checks`` and the example answer and the
counterpart reply in ``offline_texts``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from peb_mail.errors import GradingError
from peb_mail.models import (
    CRITERION_KEYS,
    MAX_SCORE,
    MAX_TOTAL,
    MIN_SCORE,
    CriterionScore,
    Scenario,
    Submission,
    Verdict,
)
from peb_mail.offline_checks import (
    ATTACHMENT_PATTERN,
    BLAME_PATTERN,
    CASUAL_PATTERN,
    CASUAL_WORDS,
    EXCLAMATION_RUN,
    HARD_AVERAGE_SENTENCE_WORDS,
    HARD_READING_GRADE,
    LONG_BODY_WORDS,
    LONG_SENTENCE_WORDS,
    LOWERCASE_I,
    NEXT_STEP_PATTERN,
    POLITE_PATTERN,
    PURPOSE_PATTERN,
    REPLY_PREFIX,
    RESPONSIBILITY_PATTERN,
    RUDE_PATTERN,
    SHORT_BODY_WORDS,
    SHOUT_PATTERN,
    VAGUE_SUBJECTS,
    VERY_SHORT_BODY_WORDS,
    Findings,
    asks_concrete_detail,
    collect_findings,
    counterpart_first_name,
    covers,
    first_quote,
    is_wall_of_text,
    normalise,
    quoted_list,
    short,
    spell_checker,
)
from peb_mail.offline_texts import write_counterpart_reply, write_revision
from peb_mail.wordlist import WordList

__all__ = ["OfflineGrader", "spell_checker"]

logger = logging.getLogger(__name__)

# A brief's subject is "Scenario 3: Title", and a reply to the brief keeps it.
BRIEF_SUBJECT = re.compile(r"^scenario\s*\d+\s*[:.\-]", re.IGNORECASE)
# An email this short that covers no key point does not attempt the task.
OFF_TASK_WORDS = 25
# Below this share of the maximum total the example answer is a new email.
WEAK_TOTAL_SHARE = 0.6
# The task score grows with the covered share of key facts and points raised
# to this power, so each missing point costs more than a linear share would:
# half of the points give 2 of 5, three quarters give 4 of 5. The value was
# chosen to put the calibration emails in their bands, not measured.
TASK_SHARE_EXPONENT = 1.5


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
                    f'"{missing[0].text.rstrip(".")}"',
                    f'State the key facts clearly, for example: "{missing[0].text.rstrip(".")}".',
                    topic="key points",
                )
            )
        elif missing:
            result.issues.append(
                Issue(
                    min(2, len(missing)),
                    f'one key fact is missing: "{missing[0].text.rstrip(".")}"',
                    f'Add the missing fact: "{missing[0].text.rstrip(".")}".',
                    topic="key points",
                )
            )
    # A missing point that asks for a time, a date or an amount leaves the
    # reader without a detail they need, so it costs clarity too.
    vague = [point for point in findings.missing_points if asks_concrete_detail(point)]
    if vague:
        result.issues.append(
            Issue(
                1,
                "a concrete detail such as a time, a date or an amount is missing "
                f'where the task asks you to "{lower_first(vague[0].text)}"',
                "Give concrete details, such as the day and the time.",
                topic="key points",
            )
        )
    if findings.wrong_numbers:
        wrong = findings.wrong_numbers[0]
        pairs = [
            f'"{item.written}" where the task gives "{item.expected}"'
            for item in findings.wrong_numbers[:2]
        ]
        result.issues.append(
            Issue(
                2,
                "some numbers are wrong: you write " + " and ".join(pairs),
                f'Check your numbers against the task: write "{wrong.expected}", '
                f'not "{wrong.written}".',
                short(wrong.sentence),
                topic="numbers",
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


def lower_first(text: str) -> str:
    stripped = text.strip().rstrip(".")
    return stripped[:1].lower() + stripped[1:]


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


def attempts_task(findings: Findings) -> bool:
    """Return whether the email tries to do the task at all."""
    covered = len(findings.covered_facts) + len(findings.covered_points)
    return covered > 0 or findings.email.body_words >= OFF_TASK_WORDS


def assess_task(findings: Findings) -> Assessment:
    text = findings.email.text
    result = Assessment("task")
    required = len(findings.covered_facts) + len(findings.missing_facts)
    required += len(findings.covered_points) + len(findings.missing_points)
    covered = len(findings.covered_facts) + len(findings.covered_points)
    if required:
        share = (covered / required) ** TASK_SHARE_EXPONENT
        result.base = MIN_SCORE + round((MAX_SCORE - MIN_SCORE) * share)
    missing = [*findings.missing_facts, *findings.missing_points]
    if missing:
        result.issues.append(
            Issue(
                0,
                f"you cover {covered} of {required} key points and miss "
                f'"{missing[0].text.rstrip(".")}"',
                f'Cover every part of the task, including "{missing[0].text.rstrip(".")}".',
                topic="key points",
            )
        )

    if not attempts_task(findings):
        result.base = MIN_SCORE
        result.issues.append(
            Issue(
                0,
                f"your email has only {findings.email.body_words} words and does "
                "not do the task yet",
                "Read the task again and write the full email that it asks for.",
                short(findings.email.body or findings.email.text),
                topic="key points",
            )
        )

    for wrong in findings.wrong_numbers[:1]:
        result.issues.append(
            Issue(
                1,
                f'the number "{wrong.written}" is wrong, so the reader gets '
                "wrong information",
                f'Use the number from the task, "{wrong.expected}".',
                short(wrong.sentence),
                topic="numbers",
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

    brief_title = normalise(scenario.title)
    if BRIEF_SUBJECT.match(core) or normalise(core).strip(" .") == brief_title:
        result.base = 2
        result.issues.append(
            Issue(
                0,
                "the subject is the subject of our practice email, not your own",
                f"Write your own subject that names the topic of your email{example}.",
                stripped,
            )
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
        sentences.append("The example answer below shows one way to do this.")
    else:
        sentences.append("Keep writing emails like this one.")

    return " ".join(sentences[:6])


def is_weak(findings: Findings, total: int) -> bool:
    """Return whether the example answer should be a new email, not a corrected copy.

    A corrected copy of a weak email keeps too little of what the task needs:
    a low total, more than half of the key points and facts missing, a very
    short body or run-on sentences.
    """
    missing = len(findings.missing_facts) + len(findings.missing_points)
    required = missing + len(findings.covered_facts) + len(findings.covered_points)
    return (
        total < WEAK_TOTAL_SHARE * MAX_TOTAL
        or (required > 0 and missing * 2 > required)
        or findings.email.body_words < SHORT_BODY_WORDS
        or findings.words_per_sentence > HARD_AVERAGE_SENTENCE_WORDS
        or not attempts_task(findings)
    )


def build_verdict(
    scenario: Scenario, submission: Submission, checker: WordList
) -> Verdict:
    """Grade one non-empty submission with the rules of this module."""
    findings = collect_findings(scenario, submission, checker)
    counterpart_first = counterpart_first_name(scenario)
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
    total = sum(item.score for item in assessments)
    on_task = attempts_task(findings)
    return Verdict(
        scores=tuple(item.to_score() for item in assessments),
        comment=write_comment(assessments),
        revision=write_revision(
            scenario, submission, findings, full=is_weak(findings, total)
        ),
        counterpart_reply=write_counterpart_reply(
            scenario, submission, findings, on_task=on_task
        ),
        grader=OfflineGrader.name,
        usage={},
    )


class OfflineGrader:
    """Grader that needs no network and gives the same verdict for the same input."""

    name = "offline"

    async def warm_up(self) -> None:
        """Load the word list at start-up, so the first grading is not slow.

        Loading took 0.2 to 0.35 s on a 2-core machine; in the pipeline
        benchmark the first gradings after a start were the slowest 1%.
        """
        await asyncio.to_thread(spell_checker)

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
