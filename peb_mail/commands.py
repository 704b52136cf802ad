"""Student commands by email: HELP, LIST, START and STATUS.

The methods here are part of ``Intake``: they run inside its transaction and
queue their replies in the outbox through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosqlite

from . import store as sql
from .compose import Composer, Mailbox
from .config import Config
from .errors import NotFoundError
from .message import ParsedEmail, strip_reply_prefix
from .models import Scenario
from .progress import build_progress
from .scenarios import find_scenario
from .store import Store, Student
from .tokens import TokenSigner

if TYPE_CHECKING:
    from .models import Artefact

COMMANDS = ("HELP", "LIST", "START", "STATUS")
_COMMAND_RE = re.compile(
    r"^\s*(help|list|status|start)(?:\s+([a-z0-9][a-z0-9-]*))?\s*[.!]?\s*$", re.I
)


@dataclass(frozen=True)
class Command:
    name: str
    argument: str | None = None


def parse_command(subject: str, new_text: str) -> Command | None:
    """Find a command in the subject or the first line of the new text.

    The whole subject or line must be the command, so an email whose subject
    is "Help with the report" is not read as HELP.
    """
    first_line = next((line for line in new_text.splitlines() if line.strip()), "")
    for candidate in (strip_reply_prefix(subject), first_line):
        match = _COMMAND_RE.match(candidate)
        if match:
            name = match.group(1).upper()
            argument = match.group(2)
            if name == "START" and not argument:
                return Command("START")
            if name != "START" and argument:
                continue
            return Command(name, argument)
    return None


class StudentCommands:
    """Mixin for ``Intake`` with the command handlers."""

    store: Store
    composer: Composer
    config: Config
    scenarios: list[Scenario]
    scenarios_by_id: dict[str, Scenario]
    signer: TokenSigner

    if TYPE_CHECKING:
        # Provided by Intake.

        async def _reply(
            self,
            db: aiosqlite.Connection,
            kind: str,
            student: Student,
            parsed: ParsedEmail,
            text: str,
            *,
            subject: str | None = None,
            reply_to: str | None = None,
            attachments: tuple[Artefact, ...] = (),
            attempt_id: int | None = None,
            html: str | None = None,
        ) -> None: ...

    async def _run_command(
        self,
        db: aiosqlite.Connection,
        command: Command,
        student: Student,
        parsed: ParsedEmail,
    ) -> int | None:
        name = first_name(student.name)
        if command.name == "LIST":
            text = self.composer.render(
                "list.txt.j2", student_name=name, scenarios=self.scenarios
            )
            await self._reply(db, "list", student, parsed, text)
        elif command.name == "STATUS":
            text, html = await self._status_texts(db, student)
            await self._reply(db, "status", student, parsed, text, html=html)
        elif command.name == "START":
            return await self._start(db, command.argument, student, parsed)
        else:
            await self._reply(db, "help", student, parsed, self._help_text(student))
        return None

    async def _start(
        self,
        db: aiosqlite.Connection,
        ref: str | None,
        student: Student,
        parsed: ParsedEmail,
    ) -> int | None:
        name = first_name(student.name)
        if not ref:
            text = self._help_text(
                student,
                note="START needs a scenario number or id, for example START 1.",
            )
            await self._reply(db, "help", student, parsed, text)
            return None
        try:
            scenario = find_scenario(self.scenarios, ref)
        except NotFoundError as exc:
            text = self.composer.render(
                "list.txt.j2",
                student_name=name,
                scenarios=self.scenarios,
                note=str(exc),
            )
            await self._reply(db, "list", student, parsed, text)
            return None

        already_open = [
            a
            for a in await sql.open_attempts(db, student.id)
            if a.scenario_id == scenario.id
        ]
        if already_open:
            # START twice: send the same brief again instead of a second attempt.
            attempt = already_open[-1]
        else:
            attempt_id = await sql.create_attempt(
                db,
                student.id,
                scenario.id,
                lambda new_id: self.signer.token(student.id, new_id),
                self.store.clock(),
            )
            attempt = await sql.fetch_attempt(db, attempt_id)
            assert attempt is not None
        attempt_id = attempt.id
        token = attempt.token
        emails = self.composer.start_emails(
            scenario,
            Mailbox(student.name, student.email),
            token,
            attempt_id=attempt_id,
            in_reply_to=parsed.message_id,
            references=parsed.references,
        )
        for item in emails:
            await sql.insert_outbox(db, item, self.store.clock())
        return attempt_id

    async def _status_texts(
        self, db: aiosqlite.Connection, student: Student
    ) -> tuple[str, str]:
        """Render STATUS as (text, html): scenarios, skill trends, a suggestion."""
        attempts = await sql.student_attempts(db, student.id)
        open_status = {}
        for attempt in attempts:
            scenario = self.scenarios_by_id.get(attempt.scenario_id)
            if attempt.state != "open" or scenario is None:
                continue
            if scenario.type == "initiate":
                address = self.composer.counterpart_address(scenario, attempt.token)
                open_status[attempt.id] = f"Started. Write your email to {address}"
            else:
                open_status[attempt.id] = (
                    f"Started. Reply to the email from {scenario.counterpart.name}."
                )
        progress = build_progress(attempts, self.scenarios, open_status)
        name = first_name(student.name)
        return (
            self.composer.render("status.txt.j2", student_name=name, progress=progress),
            self.composer.render(
                "status.html.j2", student_name=name, progress=progress
            ),
        )

    def _help_text(self, student: Student | None, note: str | None = None) -> str:
        example = self.scenarios[0].id if self.scenarios else "scenario-id"
        return self.composer.render(
            "help.txt.j2",
            student_name=first_name(student.name) if student else "",
            example_id=example,
            note=note,
        )


def first_name(name: str) -> str:
    parts = name.split()
    return parts[0] if parts else ""
