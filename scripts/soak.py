"""Soak test: real `peb-mail serve` processes, SMTP load and SIGKILL faults.

Run ``python scripts/soak.py --help`` for the options; docs/soak.md explains
every figure. The script checks the three storage promises of the README:

- nothing accepted is lost: every submission that got a 250 is stored and graded;
- every outbound email goes through the outbox: each submission's feedback
  reaches the smarthost at least once, and duplicates stay within the number
  of kills;
- grading work is leased: each attempt is graded once and no job fails.

Everything listens on 127.0.0.1 with port 0. The smarthost is an aiosmtpd sink
in this script's event loop, and ``--grader stub`` adds the loopback model
server from tests/model_server.py, scripted so that about a third of the calls
fail. Exit status 0 means every check passed, 1 that a check failed, and 2
that the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.parser
import email.policy
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "peb-mail.test"
SERVICE = f"practice@{DOMAIN}"
STUDENT_DOMAIN = "student.test"
INSTRUCTOR = "instructor@school.test"
# Marker put in every submission body so that model requests map to attempts.
MARKER_RE = re.compile(r"\bSK-(\d{5})\b")
TOKEN_ADDRESS_RE = re.compile(
    r"\b[a-z0-9._-]+\+[a-z0-9]+@" + re.escape(DOMAIN) + r"\b", re.IGNORECASE
)
# Seconds the stub stalls a reply, longer than grader.timeout_s in the config.
GRADER_TIMEOUT_S = 3.0
STALL_S = 6.0

FIRST_NAMES = [
    "Ana", "Ben", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hina", "Ivan", "Jana",
    "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priti", "Quinn", "Rosa", "Sami", "Tomas",
]  # fmt: skip
LAST_NAMES = [
    "Silva", "Novak", "Okoro", "Haddad", "Kowalski", "Tanaka", "Murphy", "Rossi",
    "Moreau", "Schmidt", "Costa", "Larsen", "Yilmaz", "Nair", "Ortiz",
]  # fmt: skip

# Emails each sender delivers at once. A kill can land between the smarthost's
# 250 and "sent" for each of them, so a kill may cause this many duplicates.
OUTBOX_CONCURRENCY = 4


# -- submissions ------------------------------------------------------------

GREETINGS = {
    "correct-error-in-report": ["Dear Daniel,", "Hi Daniel,", "Hello Daniel,"],
    "clarify-vague-task": ["Hi Priya,", "Dear Priya,", "Hello Priya,"],
    "reschedule-client-call": ["Dear Hannah,", "Hi Hannah,", "Hello Hannah,"],
}
SUBJECTS = {
    "correct-error-in-report": [
        "Correction to the Q1 sales report",
        "Corrected Q1 regional sales file",
        "Error in the North region figures",
    ],
}
BODIES = {
    "correct-error-in-report": [
        "I found a mistake in the Q1 regional sales report I sent you yesterday. "
        "The March revenue for the North region is $14,200, not $12,400, so the "
        "Q1 total for the North region is $45,300, not $43,500.",
        "I am sorry, but yesterday's Q1 report has an error. For the North region "
        "I entered $12,400 for March; the correct figure is $14,200. The North "
        "total therefore changes from $43,500 to $45,300.",
        "While checking the Q1 report again I saw that the North region's March "
        "revenue is wrong. It should be $14,200 instead of $12,400, and the "
        "quarter total should be $45,300.",
    ],
    "clarify-vague-task": [
        "Thanks for your email. I understand that you would like me to turn the "
        "notes from Tuesday's planning meeting for version 2.3 into a clean "
        "document. Before I start, I have three questions:",
        "Happy to clean up the notes from yesterday's 2.3 planning meeting. To "
        "make sure I prepare the right thing, could you answer a few questions?",
        "I will tidy up the notes from the version 2.3 meeting. I would like to "
        "check a few details first so that the result fits what you need:",
    ],
    "reschedule-client-call": [
        "I am sorry, but I cannot join our video call today at 3:00 pm. My home "
        "internet has been failing all morning and the mobile signal is too weak "
        "for a phone call. A technician will fix it tomorrow morning.",
        "I apologise for the short notice. My internet connection keeps dropping "
        "today, so a video call at 3:00 pm is not possible, and my phone signal "
        "is weak too. The provider will repair the line tomorrow morning.",
        "Unfortunately my home internet has been down on and off all morning, so "
        "I cannot hold our 3:00 pm call. The provider is sending a technician "
        "tomorrow morning.",
    ],
}
CLOSINGS = {
    "correct-error-in-report": [
        "I attached the corrected file, q1_regional_sales_corrected.csv. Could you "
        "please use it for Thursday's meeting with the regional directors? The "
        "other regions are correct.",
        "The corrected file is attached. Please use the new version on Thursday. "
        "I checked the other regions and their numbers are right.",
    ],
    "clarify-vague-task": [
        "1. What format would you like (a one-page summary or full notes)?\n"
        "2. Who will read it?\n"
        "3. When do you need it?\n\n"
        "I will start on a draft as soon as I hear from you.",
        "1. Should it be a short summary or the complete notes?\n"
        "2. Is it for the team or for someone outside it?\n"
        "3. What is your deadline?\n"
        "Also, is PDF export part of 2.3? I will send you a draft once I know.",
    ],
    "reschedule-client-call": [
        "Could we move the call to tomorrow between 2:00 pm and 5:00 pm, or to "
        "Friday between 10:00 am and 12:00 pm? I can also send you a written "
        "update on the launch plan today by 5:00 pm.",
        "Would tomorrow at 2:30 pm or Friday at 10:00 am work for you? In the "
        "meantime I can send you a written update on the launch plan by 5:00 pm "
        "today.",
    ],
}
SCENARIOS = list(BODIES)
# Reply scenarios and the local part their counterpart writes from.
REPLY_SCENARIOS = {
    "clarify-vague-task": "priya.natarajan",
    "reschedule-client-call": "hannah.becker",
}


def submission_text(
    scenario_id: str, number: int, name: str, rng: random.Random
) -> str:
    """Compose a short realistic submission that contains the marker SK-NNNNN."""
    first = name.split()[0]
    return (
        f"{rng.choice(GREETINGS[scenario_id])}\n\n"
        f"{rng.choice(BODIES[scenario_id])} (Ticket SK-{number:05d}.)\n\n"
        f"{rng.choice(CLOSINGS[scenario_id])}\n\n"
        f"{rng.choice(['Best regards', 'Kind regards', 'Thank you'])},\n{first}\n"
    )


# -- smarthost sink ---------------------------------------------------------


@dataclass
class SinkRecord:
    message_id: str
    in_reply_to: str
    mail_from: str
    from_address: str
    reply_to: str
    subject: str
    rcpt_tos: list[str]
    # The first address with a token in the text body of a brief, else "".
    body_address: str = ""


class Sink:
    """aiosmtpd handler that records every message and wakes waiting clients."""

    def __init__(self) -> None:
        self.records: list[SinkRecord] = []
        self.by_message_id: collections.Counter[str] = collections.Counter()
        self._futures: dict[str, asyncio.Future[SinkRecord]] = {}
        self._starters: dict[tuple[str, str], asyncio.Queue[SinkRecord]] = {}
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    def starters(self, student: str, local_part: str) -> asyncio.Queue[SinkRecord]:
        """Queue of the starters one counterpart sent to one student, in order."""
        key = (student, local_part)
        if key not in self._starters:
            self._starters[key] = asyncio.Queue()
        return self._starters[key]

    def future(self, key: str) -> asyncio.Future[SinkRecord]:
        if key not in self._futures:
            self._futures[key] = asyncio.get_running_loop().create_future()
        return self._futures[key]

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        headers = self._parser.parsebytes(envelope.original_content or b"")
        record = SinkRecord(
            message_id=_bare_id(headers.get("Message-ID", "")),
            in_reply_to=_bare_id(headers.get("In-Reply-To", "")),
            mail_from=envelope.mail_from or "",
            from_address=parseaddr(str(headers.get("From", "")))[1].lower(),
            reply_to=parseaddr(str(headers.get("Reply-To", "")))[1].lower(),
            subject=str(headers.get("Subject", "")),
            rcpt_tos=[address.lower() for address in envelope.rcpt_tos],
        )
        if record.subject.startswith("Scenario "):
            record.body_address = _address_in_body(envelope.original_content or b"")
        self.records.append(record)
        self.by_message_id[record.message_id] += 1
        if self.by_message_id[record.message_id] == 1 and token_of(record.from_address):
            # A starter: the counterpart writes to the student with a token.
            for student in record.rcpt_tos:
                local = record.from_address.partition("+")[0]
                self.starters(student, local).put_nowait(record)
        keys = []
        if record.in_reply_to:
            keys.append("irt:" + record.in_reply_to)
        token = token_of(record.from_address)
        if token:
            keys.append("from-token:" + token)
        for key in keys:
            future = self.future(key)
            if not future.done():
                future.set_result(record)
        return "250 OK"


def _bare_id(value: Any) -> str:
    return str(value).strip().strip("<>").strip()


def _address_in_body(raw: bytes) -> str:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("plain",))
    text = part.get_content() if part is not None else ""
    found = TOKEN_ADDRESS_RE.search(text)
    return found.group(0).lower() if found else ""


def token_of(address: str) -> str | None:
    local = address.partition("@")[0]
    return local.partition("+")[2] or None


# -- serve processes --------------------------------------------------------


@dataclass
class ServeProcess:
    index: int
    config: Path
    port_file: Path
    log_dir: Path
    popen: subprocess.Popen[bytes] | None = None
    port: int | None = None
    generation: int = 0
    logs: list[tuple[Path, bool]] = field(default_factory=list)  # (log, killed)

    async def start(self, env: dict[str, str]) -> None:
        self.port = None
        self.port_file.unlink(missing_ok=True)
        self.generation += 1
        log = self.log_dir / f"serve-{self.index}-{self.generation:02d}.log"
        with log.open("wb") as handle:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "peb_mail",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                cwd=REPO,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.logs.append((log, False))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"serve {self.index} exited with {self.popen.returncode} at start; "
                    f"see {log}"
                )
            try:
                self.port = int(self.port_file.read_text())
                return
            except (FileNotFoundError, ValueError):
                await asyncio.sleep(0.05)
        raise RuntimeError(f"serve {self.index} wrote no port file in 60 s; see {log}")

    def kill(self) -> None:
        assert self.popen is not None
        self.port = None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        log, _ = self.logs[-1]
        self.logs[-1] = (log, True)


def write_configs(
    args: argparse.Namespace, workdir: Path, sink_port: int, api_base: str | None
) -> list[Path]:
    if api_base:
        grader = (
            f'kind = "llm"\nmodel = "openai/test-model"\napi_base = "{api_base}"\n'
            f"timeout_s = {GRADER_TIMEOUT_S}\nmax_output_tries = 3"
        )
    else:
        grader = 'kind = "offline"'
    paths = []
    for index in range(args.processes):
        path = workdir / f"config-{index}.toml"
        path.write_text(
            f"""# Written by scripts/soak.py.
[service]
domain = "{DOMAIN}"
data_dir = "{workdir}/data"
database = "{workdir}/data/peb.sqlite3"
scenarios_dir = "{REPO}/scenarios"
prompts_dir = "{REPO}/prompts"
stop_timeout_s = 10
busy_timeout_s = 10

[listener]
host = "127.0.0.1"
port = 0
port_file = "{workdir}/port-{index}"

[queue]
workers = {args.workers}
lease_s = {args.lease_s}
max_tries = {args.max_tries}
backoff_base_s = 0.2
backoff_max_s = 2.0
poll_interval_s = 0.2

[grader]
{grader}

[outbox]
transport = "smtp"
smarthost_host = "127.0.0.1"
smarthost_port = {sink_port}
timeout_s = 5
# Short, so emails a killed process had claimed are taken over quickly.
send_lease_s = {args.lease_s * 2}
concurrency = {OUTBOX_CONCURRENCY}
max_tries = 50
backoff_base_s = 0.2
backoff_max_s = 2.0
poll_interval_s = 0.2

[cohorts.soak]
instructors = ["{INSTRUCTOR}"]
""",
            encoding="utf-8",
        )
        paths.append(path)
    return paths


def enrol(config: Path, workdir: Path, count: int) -> list[tuple[str, str]]:
    students = []
    for number in range(count):
        first = FIRST_NAMES[number % len(FIRST_NAMES)]
        last = LAST_NAMES[(number // len(FIRST_NAMES)) % len(LAST_NAMES)]
        address = f"{first}.{last}.{number}@{STUDENT_DOMAIN}".lower()
        students.append((address, f"{first} {last}"))
    roster = workdir / "roster.csv"
    lines = ["email,name,cohort"] + [f"{a},{n},soak" for a, n in students]
    roster.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for command in (["init"], ["roster", "import", str(roster)]):
        done = subprocess.run(
            [sys.executable, "-m", "peb_mail", *command, "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"peb-mail {' '.join(command)} failed: {done.stderr}")
    return students


# -- load -------------------------------------------------------------------


@dataclass
class AttemptRecord:
    number: int
    student: str
    scenario_id: str
    start_id: str = ""
    start_accepted: bool = False
    brief_received: bool = False
    submission_id: str = ""
    submission_sent: bool = False
    accepted: bool = False
    error: str = ""


@dataclass
class Run:
    args: argparse.Namespace
    sink: Sink
    processes: list[ServeProcess]
    deadline: float
    rng: random.Random
    attempts: list[AttemptRecord] = field(default_factory=list)
    finished: int = 0
    smtp_retries: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: list[tuple[float, int]] = field(default_factory=list)  # (time, index)

    def live_ports(self) -> list[int]:
        return [p.port for p in self.processes if p.port is not None]


async def send_reliably(
    run: Run, message: EmailMessage, sender: str, recipients: list[str]
) -> str | None:
    """Send like an MTA: resend the same bytes until a 250, a 5xx or the deadline.

    Returns None after a 250, else the reason the message was not accepted.
    """
    data = message.as_bytes()
    for _ in range(500):
        if time.monotonic() > run.deadline:
            return "deadline reached"
        ports = run.live_ports()
        if not ports:
            run.smtp_retries["no live process"] += 1
            await asyncio.sleep(0.2)
            continue
        port = run.rng.choice(ports)
        try:
            await aiosmtplib.send(
                data,
                sender=sender,
                recipients=recipients,
                hostname="127.0.0.1",
                port=port,
                timeout=30,
            )
            return None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [item.code for item in exc.recipients]
            if any(code >= 500 for code in codes):
                return f"recipients refused: {exc}"
            run.smtp_retries["4xx"] += 1
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                return f"rejected: {exc.code} {exc.message}"
            run.smtp_retries["4xx"] += 1
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            run.smtp_retries[type(exc).__name__] += 1
        await asyncio.sleep(run.rng.uniform(0.1, 0.6))
    return "gave up after 500 tries"


def build_message(
    sender: tuple[str, str],
    to: str,
    subject: str,
    body: str,
    in_reply_to: str | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"{sender[1]} <{sender[0]}>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=STUDENT_DOMAIN)
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
        message["References"] = f"<{in_reply_to}>"
    message.set_content(body)
    return message


async def wait_record(run: Run, key: str) -> SinkRecord | None:
    remaining = run.deadline - time.monotonic()
    if remaining <= 0:
        return None
    try:
        return await asyncio.wait_for(asyncio.shield(run.sink.future(key)), remaining)
    except TimeoutError:
        return None


async def wait_starter(run: Run, student: str, local_part: str) -> SinkRecord | None:
    remaining = run.deadline - time.monotonic()
    if remaining <= 0:
        return None
    try:
        return await asyncio.wait_for(
            run.sink.starters(student, local_part).get(), remaining
        )
    except TimeoutError:
        return None


async def run_attempt(
    run: Run, record: AttemptRecord, student: tuple[str, str]
) -> None:
    start = build_message(
        student, SERVICE, f"START {record.scenario_id}", "Hello, I would like to start."
    )
    record.start_id = _bare_id(start["Message-ID"])
    failure = await send_reliably(run, start, student[0], [SERVICE])
    if failure:
        record.error = f"START not accepted: {failure}"
        return
    record.start_accepted = True
    brief = await wait_record(run, "irt:" + record.start_id)
    if brief is None:
        record.error = "no brief before the deadline"
        return
    record.brief_received = True
    to, subject, in_reply_to = "", "", None
    if record.scenario_id in REPLY_SCENARIOS:
        local_part = REPLY_SCENARIOS[record.scenario_id]
        starter = await wait_starter(run, student[0], local_part)
        if starter is None:
            record.error = "no starter before the deadline"
            return
        to, in_reply_to = starter.from_address, starter.message_id
        subject = "Re: " + starter.subject
    else:
        # Older briefs name the address in Reply-To, newer ones in the text.
        to = brief.reply_to if token_of(brief.reply_to) else brief.body_address
        subject = run.rng.choice(SUBJECTS[record.scenario_id])
    if not to:
        record.error = f"no address with a token in brief {brief.message_id}"
        return
    body = submission_text(record.scenario_id, record.number, student[1], run.rng)
    submission = build_message(student, to, subject, body, in_reply_to)
    record.submission_id = _bare_id(submission["Message-ID"])
    record.submission_sent = True
    failure = await send_reliably(run, submission, student[0], [to])
    if failure:
        record.error = f"submission not accepted: {failure}"
        return
    record.accepted = True


async def load(run: Run, students: list[tuple[str, str]]) -> None:
    numbers = iter(range(run.args.submissions))
    # Each client takes a student no other client is using, so that each
    # starter a student receives belongs to the one attempt waiting for it.
    idle: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for student in students:
        idle.put_nowait(student)

    async def client() -> None:
        for number in numbers:
            if time.monotonic() > run.deadline:
                return
            student = await idle.get()
            record = AttemptRecord(number, student[0], run.rng.choice(SCENARIOS))
            run.attempts.append(record)
            try:
                await run_attempt(run, record, student)
            finally:
                run.finished += 1
                idle.put_nowait(student)

    clients = min(run.args.concurrency, len(students))
    await asyncio.gather(*(client() for _ in range(clients)))


async def killer(run: Run, env: dict[str, str], load_done: asyncio.Event) -> None:
    """SIGKILL a random serve process at random points of the load, then restart it."""
    total = run.args.submissions
    thresholds = sorted(
        run.rng.uniform(0.02, 0.9) * total for _ in range(run.args.kills)
    )
    for threshold in thresholds:
        while run.finished < threshold and not load_done.is_set():
            await asyncio.sleep(0.05)
        # A load that ends early still gets every kill: the later ones land
        # while the queue drains, which tests recovery of grading and sending.
        if time.monotonic() > run.deadline:
            return
        await asyncio.sleep(run.rng.uniform(0.0, 1.0))
        process = run.rng.choice(run.processes)
        process.kill()
        run.kills.append((time.monotonic(), process.index))
        await process.start(env)


# -- drain and checks -------------------------------------------------------


def query(
    database: Path, sql: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        return db.execute(sql, params).fetchall()


def backlog(database: Path) -> dict[str, int]:
    rows = query(
        database,
        "select 'inbound received', count(*) from inbound where state = 'received' "
        "union all select 'jobs open', count(*) from jobs "
        "where state in ('queued', 'grading') "
        "union all select 'outbox pending', count(*) from outbox "
        "where state = 'pending'",
    )
    return {name: count for name, count in rows}


async def drain(database: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        counts = await asyncio.to_thread(backlog, database)
        if not any(counts.values()):
            return True
        await asyncio.sleep(0.5)
    return False


def scan_logs(processes: list[ServeProcess]) -> tuple[list[str], list[str]]:
    """Return the "database is locked" lines and the Traceback lines of all logs.

    The last line of a log whose process was killed is skipped, because
    SIGKILL may cut it in the middle.
    """
    locked, tracebacks = [], []
    for process in processes:
        for log, killed in process.logs:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            if killed and lines:
                lines = lines[:-1]
            for number, line in enumerate(lines, 1):
                where = f"{log.name}:{number}: {line.strip()[:200]}"
                if "database is locked" in line:
                    locked.append(where)
                if line.startswith("Traceback"):
                    tracebacks.append(where)
    return locked, tracebacks


def distribution(values: list[int]) -> str:
    counts = collections.Counter(values)
    return ", ".join(f"{key}: {counts[key]}" for key in sorted(counts)) or "none"


def collect(
    run: Run,
    database: Path,
    model_requests: list[dict[str, Any]] | None,
    drained: bool,
    drain_s: float | None,
    exit_codes: list[int | None],
    elapsed_s: float,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Compute the figures and the list of failed checks."""
    accepted = {r.submission_id: r for r in run.attempts if r.accepted}
    sent = [r for r in run.attempts if r.submission_sent]
    rows = query(
        database,
        "select i.message_id, a.id, a.state, j.state, j.tries, "
        "(select count(*) from outbox o where o.attempt_id = a.id "
        "and o.kind = 'feedback') "
        "from inbound i left join attempts a on a.inbound_id = i.id "
        "left join jobs j on j.attempt_id = a.id",
    )
    by_message = {row[0]: row for row in rows}
    stored = [mid for mid in accepted if mid in by_message]
    graded = [mid for mid in stored if by_message[mid][2] == "graded"]
    once = [
        mid
        for mid in graded
        if by_message[mid][3] == "done" and by_message[mid][5] == 1
    ]
    tries = [row[4] for row in rows if row[0] in accepted and row[4] is not None]
    job_states = dict(
        query(database, "select state, count(*) from jobs group by state")
    )
    outbox_states = dict(
        query(database, "select state, count(*) from outbox group by state")
    )
    delivered = {rec.in_reply_to for rec in run.sink.records} & set(accepted)
    duplicates = {mid: n for mid, n in run.sink.by_message_id.items() if n > 1}
    locked, tracebacks = scan_logs(run.processes)
    not_submitted = [r for r in run.attempts if not r.submission_sent]

    figures = [
        ("attempts started (START sent)", str(len(run.attempts))),
        ("attempts that never reached a submission", str(len(not_submitted))),
        ("submissions sent", str(len(sent))),
        ("accepted (250)", str(len(accepted))),
        ("stored (inbound rows with those Message-IDs)", str(len(stored))),
        ("graded (attempts.state = 'graded')", str(len(graded))),
        ("graded exactly once (job done, one feedback row)", str(len(once))),
        ("feedback delivered (distinct In-Reply-To at the sink)", str(len(delivered))),
        ("messages received by the sink", str(len(run.sink.records))),
        (
            "duplicates at the sink (Message-IDs received twice or more)",
            str(len(duplicates)),
        ),
        ("kills done", str(len(run.kills))),
        (
            "upper bound for duplicates (kills x outbox.concurrency)",
            str(len(run.kills) * OUTBOX_CONCURRENCY),
        ),
        ("grading tries per attempt: max", str(max(tries, default=0))),
        ("grading tries per attempt: distribution", distribution(tries)),
        ("jobs by state", json.dumps(job_states, sort_keys=True)),
        ("outbox by state", json.dumps(outbox_states, sort_keys=True)),
        ("SMTP client retries", json.dumps(dict(run.smtp_retries), sort_keys=True)),
        ('"database is locked" lines in serve logs', str(len(locked))),
        ("Traceback lines in serve logs", str(len(tracebacks))),
        (
            "time to drain after the last kill (s)",
            f"{drain_s:.1f}" if drain_s is not None else "not drained",
        ),
        ("serve exit codes after SIGTERM", ", ".join(map(str, exit_codes))),
        ("total run time (s)", f"{elapsed_s:.1f}"),
    ]
    if model_requests is not None:
        calls: collections.Counter[int] = collections.Counter()
        for body in model_requests:
            text = json.dumps(body.get("messages", []))
            markers = set(MARKER_RE.findall(text))
            for marker in markers:
                calls[int(marker)] += 1
        per_attempt = [calls[r.number] for r in accepted.values()]
        figures += [
            ("model calls", str(len(model_requests))),
            ("model calls per attempt: max", str(max(per_attempt, default=0))),
            ("model calls per attempt: distribution", distribution(per_attempt)),
        ]

    failed = []
    if not_submitted:
        failed.append(
            f"{len(not_submitted)} attempts never reached a submission, for example "
            f"#{not_submitted[0].number}: {not_submitted[0].error}"
        )
    for name, subset in [
        ("stored", stored),
        ("graded", graded),
        ("graded exactly once", once),
        ("delivered", delivered),
    ]:
        missing = sorted(set(accepted) - set(subset))
        if missing:
            failed.append(
                f"{len(missing)} accepted submissions not {name}: "
                f"{', '.join(missing[:5])}"
            )
    if len(accepted) != len(sent):
        failed.append(f"{len(sent) - len(accepted)} submissions never got a 250")
    bound = len(run.kills) * OUTBOX_CONCURRENCY
    if len(duplicates) > bound:
        failed.append(
            f"{len(duplicates)} duplicates exceed {bound} "
            f"({len(run.kills)} kills x outbox.concurrency {OUTBOX_CONCURRENCY})"
        )
    if job_states.get("failed"):
        failed.append(f"{job_states['failed']} jobs failed")
    if outbox_states.get("dead"):
        failed.append(f"{outbox_states['dead']} outbox emails dead")
    if locked:
        failed.append("database is locked in logs: " + " | ".join(locked[:3]))
    if tracebacks:
        failed.append("Traceback in logs: " + " | ".join(tracebacks[:3]))
    if not drained:
        failed.append(
            "queue not drained before the deadline: " + json.dumps(backlog(database))
        )
    if any(code != 0 for code in exit_codes):
        failed.append(f"serve exit codes after SIGTERM: {exit_codes}")
    if duplicates:
        figures.append(
            (
                "duplicate Message-IDs",
                ", ".join(f"{m} x{n}" for m, n in sorted(duplicates.items())),
            )
        )
    return figures, failed


def markdown(figures: list[tuple[str, str]]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in figures]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> int:
    started = time.monotonic()
    # SIGTERM and Ctrl-C cancel the run, and the cleanup below stops the
    # serve processes.
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    deadline = started + args.max_minutes * 60
    rng = random.Random(args.seed)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="peb-soak-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    print(f"work folder: {workdir}", flush=True)

    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink.test"), host="127.0.0.1", port=0
    )
    sink_port = server.sockets[0].getsockname()[1]

    model = None
    if args.grader == "stub":
        sys.path.insert(0, str(REPO))
        from tests.model_server import ModelServer, ScriptedReply

        model = ModelServer()
        await model.start()
        faults = [
            ScriptedReply(status=429, headers={"Retry-After": "1"}),
            ScriptedReply(status=500),
            ScriptedReply(delay_s=STALL_S),
            ScriptedReply(content="this is not JSON {"),
        ]
        # One scripted reply per expected call; later calls get valid verdicts.
        for _ in range(args.submissions * 4):
            if rng.random() < 1 / 3:
                model.push(rng.choice(faults))
            else:
                model.push(ScriptedReply())

    env = {**os.environ, "PEB_MAIL_LLM_API_KEY": "soak-key", "PYTHONUNBUFFERED": "1"}
    configs = write_configs(args, workdir, sink_port, model.api_base if model else None)
    database = workdir / "data" / "peb.sqlite3"
    students = enrol(configs[0], workdir, args.students)
    processes = [
        ServeProcess(i, path, workdir / f"port-{i}", workdir / "logs")
        for i, path in enumerate(configs)
    ]
    try:
        return await exercise(
            args,
            processes,
            students,
            env,
            sink,
            database,
            model,
            rng,
            started,
            deadline,
        )
    finally:
        # Only reached with live processes when the run failed half-way.
        for process in processes:
            if process.popen is not None and process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(timeout=10)
        server.close()
        if model is not None:
            await model.stop()


async def exercise(
    args: argparse.Namespace,
    processes: list[ServeProcess],
    students: list[tuple[str, str]],
    env: dict[str, str],
    sink: Sink,
    database: Path,
    model: Any,
    rng: random.Random,
    started: float,
    deadline: float,
) -> int:
    """Start the processes, run load and kills, drain, stop and check."""
    for process in processes:
        await process.start(env)
    print(f"{len(processes)} serve processes up; load starts", flush=True)

    # The load stops early enough to leave time for the drain and the stop.
    total_s = args.max_minutes * 60
    run = Run(args, sink, processes, deadline - min(60.0, total_s / 4), rng)
    load_done = asyncio.Event()
    kill_task = asyncio.create_task(killer(run, env, load_done))
    try:
        await load(run, students)
    finally:
        load_done.set()
        await kill_task
    print(
        f"load done after {time.monotonic() - started:.0f} s, "
        f"{len(run.kills)} kills; draining",
        flush=True,
    )

    last_kill = run.kills[-1][0] if run.kills else time.monotonic()
    drained = await drain(database, deadline - min(30.0, total_s / 8))
    drain_s = time.monotonic() - last_kill if drained else None

    exit_codes: list[int | None] = []
    for process in processes:
        assert process.popen is not None
        process.popen.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.popen is not None
        try:
            exit_codes.append(await asyncio.to_thread(process.popen.wait, 25))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            exit_codes.append(None)

    figures, failed = collect(
        run,
        database,
        model.requests if model else None,
        drained,
        drain_s,
        exit_codes,
        time.monotonic() - started,
    )
    table = markdown(figures)
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n", encoding="utf-8")
    for line in failed:
        print(f"FAILED: {line}")
    print("soak passed" if not failed else f"soak failed: {len(failed)} checks")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--students", type=int, default=100, help="students to enrol")
    add("--submissions", type=int, default=2000, help="attempts to run")
    add("--concurrency", type=int, default=20, help="SMTP clients at the same time")
    add("--processes", type=int, default=2, help="serve processes on one database")
    add("--kills", type=int, default=25, help="SIGKILLs during the load")
    add(
        "--grader",
        choices=["offline", "stub"],
        default="offline",
        help="offline grader, or the LLM grader against a failing loopback stub",
    )
    add("--workdir", help="folder for config, database and logs (default: new temp)")
    add("--report", help="also write the figures table to this markdown file")
    add("--max-minutes", type=float, default=20.0, help="hard limit for the run")
    add("--workers", type=int, default=2, help="grading workers per process")
    add("--lease-s", type=float, default=5.0, help="grading lease in seconds")
    add("--max-tries", type=int, default=10, help="grading tries before a job fails")
    add("--seed", type=int, default=None, help="random seed (default: random)")
    args = parser.parse_args(argv)
    if args.students < 1 or args.submissions < 1 or args.processes < 1:
        parser.error("--students, --submissions and --processes must be at least 1")
    if args.max_minutes < 0.5:
        parser.error("--max-minutes must be at least 0.5")
    return args


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(soak(args))
    except (RuntimeError, OSError) as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("soak stopped by a signal before it finished", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
