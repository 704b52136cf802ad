"""Plain data shared by the loader, the graders, the worker and the templates.

Nothing here touches the database, the network or the file system.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

# The rubric: 7 criteria scored 1-5, 35 points in all. The key is stored in the
# database and used in prompts; the label is what students and instructors see.
CRITERIA: tuple[tuple[str, str], ...] = (
    ("tone", "Tone and respect"),
    ("clarity", "Clarity and purpose"),
    ("structure", "Structure and formatting"),
    ("professionalism", "Professionalism and responsibility"),
    ("task", "Task fulfilment and next steps"),
    ("grammar", "Grammar and readability"),
    ("subject", "Subject line"),
)
CRITERION_KEYS: tuple[str, ...] = tuple(key for key, _ in CRITERIA)
CRITERION_LABELS: dict[str, str] = dict(CRITERIA)
MIN_SCORE = 1
MAX_SCORE = 5
MAX_TOTAL = MAX_SCORE * len(CRITERIA)

ScenarioType = Literal["initiate", "reply"]


@dataclass(frozen=True)
class KeyPoint:
    """A fact or point a good answer contains.

    ``text`` is the point in words for students and the model. ``keywords`` are
    alternative phrases: the offline grader counts the point as covered when
    the student's text contains any of them, ignoring case.
    """

    text: str
    keywords: tuple[str, ...] = ()
    # A sentence in the student's voice that makes this point, used in the
    # offline grader's model answer ("I can send the update by 5 pm today.").
    example: str = ""
    # What the counterpart asks, in character, when the point is missing
    # ("Which of those times works for Omar?").
    question: str = ""


@dataclass(frozen=True)
class Counterpart:
    """The role-played colleague or client the student writes to."""

    name: str
    role: str
    # Local part on the service domain, such as "maria.lopez". Outbound mail
    # from the counterpart uses "maria.lopez+TOKEN@domain".
    local_part: str
    style: str = ""
    knows: str = ""


@dataclass(frozen=True)
class Artefact:
    """Supporting material the task refers to.

    A text artefact is quoted in the brief. A file artefact is attached to the
    brief; ``path`` is absolute after loading.
    """

    name: str
    text: str | None = None
    path: Path | None = None
    content_type: str = "text/plain"


@dataclass(frozen=True)
class Scenario:
    """One practice situation, loaded from a TOML file under ``scenarios/``."""

    id: str
    number: int
    title: str
    type: ScenarioType
    environment: str
    counterpart: Counterpart
    task: str
    key_facts: tuple[KeyPoint, ...]
    key_points: tuple[KeyPoint, ...]
    grading_focus: str
    # Words a good subject line contains (any of them). For reply scenarios the
    # student may keep the "Re:" subject of the starter email.
    subject_keywords: tuple[str, ...] = ()
    starter_subject: str | None = None
    # Starter email body for reply scenarios. "{student_name}" is replaced with
    # the student's first name.
    starter_body: str | None = None
    artefacts: tuple[Artefact, ...] = ()
    # True when the situation is the student's own mistake, so the grader
    # expects an apology and responsibility ("I made a mistake").
    student_error: bool = False
    source_path: Path | None = None


@dataclass(frozen=True)
class AttachmentInfo:
    """Name, type and size of one attachment of a submission."""

    filename: str
    content_type: str
    size_bytes: int


@dataclass(frozen=True)
class Submission:
    """What the student wrote, as the graders see it."""

    subject: str
    # New text only: no quoted history and no signature.
    text: str
    student_name: str
    attachments: tuple[AttachmentInfo, ...] = ()


@dataclass(frozen=True)
class CriterionScore:
    """Score for one rubric criterion, with the reason the grader gives."""

    criterion: str
    score: int
    justification: str
    evidence: str = ""


@dataclass(frozen=True)
class Verdict:
    """Everything a grader returns for one submission."""

    scores: tuple[CriterionScore, ...]
    comment: str
    revision: str
    counterpart_reply: str
    grader: str
    usage: dict[str, Any] = field(default_factory=dict)
    # Labels from peb_mail.precheck, such as "suspected-injection", for the
    # teacher.
    flags: tuple[str, ...] = ()
    # Set by an instructor's override by reply ("score 28", "comment ...").
    total_override: int | None = None
    instructor_note: str = ""

    @property
    def total(self) -> int:
        if self.total_override is not None:
            return self.total_override
        return sum(item.score for item in self.scores)

    def score_of(self, criterion: str) -> CriterionScore:
        for item in self.scores:
            if item.criterion == criterion:
                return item
        raise KeyError(criterion)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        data = json.loads(text)
        scores = tuple(CriterionScore(**item) for item in data.pop("scores"))
        # JSON has no tuples: flags come back as a list.
        data["flags"] = tuple(data.get("flags", ()))
        return cls(scores=scores, **data)


class Grader(Protocol):
    """Interface shared by the offline and the LLM grader."""

    name: str

    async def grade(self, scenario: Scenario, submission: Submission) -> Verdict:
        """Grade one submission.

        Raises ``peb_mail.errors.GradingError`` (or a subclass) when no usable
        verdict could be produced; a partial verdict is never returned.
        """
        ...
