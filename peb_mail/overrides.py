"""Instructor overrides sent by replying to a grade summary.

One command per line of the reply's new text (quoted history is ignored)::

    score 28              set the total, 0-35
    criterion tone 4      set one criterion, 1-5 (key or a word of its label)
    comment Well done.    add a note for the student
    regrade               grade the email again

Lines that are not commands (a greeting, a signature) are ignored, so an
instructor can write naturally around them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .models import CRITERIA, MAX_SCORE, MAX_TOTAL, MIN_SCORE, Verdict

_COMMAND_RE = re.compile(r"^\s*(score|criterion|comment|regrade)\b\s*(.*?)\s*$", re.I)


@dataclass(frozen=True)
class Override:
    """One parsed command."""

    action: str  # "score", "criterion", "comment" or "regrade"
    criterion: str = ""
    value: int | None = None
    text: str = ""

    def describe(self) -> str:
        if self.action == "score":
            return f"total set to {self.value}"
        if self.action == "criterion":
            return f"{dict(CRITERIA)[self.criterion]} set to {self.value}"
        if self.action == "comment":
            return "note added for the student"
        return "grading again"


def parse_overrides(text: str) -> tuple[list[Override], list[str]]:
    """Return the commands found in ``text`` and an error per invalid command line."""
    commands: list[Override] = []
    errors: list[str] = []
    for line in text.splitlines():
        match = _COMMAND_RE.match(line)
        if not match:
            continue
        action, rest = match.group(1).lower(), match.group(2)
        if action == "regrade":
            commands.append(Override("regrade"))
        elif action == "comment":
            if rest:
                commands.append(Override("comment", text=rest))
            else:
                errors.append(
                    '"comment" needs the note after it, such as: comment Well done.'
                )
        elif action == "score":
            value = _whole_number(rest)
            if value is None or not 0 <= value <= MAX_TOTAL:
                errors.append(
                    f'"score {rest}": give a whole number from 0 to {MAX_TOTAL}'
                )
            else:
                commands.append(Override("score", value=value))
        else:
            parts = rest.rsplit(None, 1)
            key = _criterion_key(parts[0]) if len(parts) == 2 else None
            value = _whole_number(parts[1]) if len(parts) == 2 else None
            if key is None or value is None or not MIN_SCORE <= value <= MAX_SCORE:
                keys = ", ".join(k for k, _ in CRITERIA)
                errors.append(
                    f'"criterion {rest}": write "criterion NAME N" with NAME one of '
                    f"{keys} and N from {MIN_SCORE} to {MAX_SCORE}"
                )
            else:
                commands.append(Override("criterion", criterion=key, value=value))
    return commands, errors


def apply_overrides(
    verdict: Verdict, commands: list[Override], instructor: str
) -> Verdict:
    """Return the verdict with score, criterion and comment commands applied."""
    for command in commands:
        if command.action == "criterion":
            assert command.value is not None
            scores = tuple(
                dataclasses.replace(
                    item,
                    score=command.value,
                    justification=f"Changed by your teacher ({instructor}).",
                )
                if item.criterion == command.criterion
                else item
                for item in verdict.scores
            )
            # A criterion change makes the total follow the criteria again.
            verdict = dataclasses.replace(verdict, scores=scores, total_override=None)
        elif command.action == "score":
            verdict = dataclasses.replace(verdict, total_override=command.value)
        elif command.action == "comment":
            note = f"{verdict.instructor_note}\n{command.text}".strip()
            verdict = dataclasses.replace(verdict, instructor_note=note)
    return verdict


def _whole_number(text: str) -> int | None:
    text = text.strip().split("/")[0].strip()
    return int(text) if text.isdigit() else None


def _criterion_key(name: str) -> str | None:
    wanted = name.strip().lower()
    for key, label in CRITERIA:
        if wanted == key or wanted == label.lower():
            return key
    for key, label in CRITERIA:
        if wanted in label.lower().replace(" and ", " ").split():
            return key
    return None
