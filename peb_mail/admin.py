"""Admin operations behind the CLI: assign, grades export, regrade, doctor, digest.

Each function takes an open Store (or the Config) and returns plain data, so
the CLI only formats it. Writes follow the rest of the service: one
transaction per state change, with the emails it causes queued in the outbox
inside that transaction.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import io
import ipaddress
import logging
import os
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import aiosqlite
import jinja2

from . import store as sql
from .compose import Composer, Mailbox
from .config import Config
from .errors import ConfigError, NotFoundError, PebMailError
from .models import MAX_TOTAL, Scenario
from .scenarios import find_scenario
from .store import SCHEMA, Store, Student
from .tokens import SECRET_ENV, TokenSigner, load_signer

logger = logging.getLogger(__name__)

GRADE_COLUMNS = (
    "email",
    "name",
    "cohort",
    "scenario_id",
    "scenario_title",
    "attempts",
    "best_score",
    "latest_score",
    "max_score",
    "best_percent",
    "latest_graded_at",
)
# Sorts attempts of a scenario no longer in the catalogue after every known one.
UNKNOWN_SCENARIO_NUMBER = 1_000_000
# Maximum length of one character-string in DNS TXT data (RFC 1035, section 3.3).
TXT_STRING_MAX = 255


class AttemptStateError(PebMailError):
    """The attempt is in a state the operation does not apply to."""


# -- assign ------------------------------------------------------------------


@dataclass(frozen=True)
class AssignResult:
    """Outcome of starting one scenario for a whole cohort."""

    cohort: str
    scenario: Scenario
    # (student email, new attempt id) in roster order.
    started: list[tuple[str, int]] = field(default_factory=list)
    # Emails of students who already had an open attempt for the scenario.
    skipped: list[str] = field(default_factory=list)


async def assign(
    store: Store,
    config: Config,
    scenarios: list[Scenario],
    cohort: str,
    scenario_ref: str,
    signer: TokenSigner,
    on_progress: Callable[[int, int], None] | None = None,
    again: bool = False,
) -> AssignResult:
    """Start a scenario for every student of ``cohort``, as their START would.

    Each student gets one transaction: the attempt, its brief and, for a reply
    scenario, the starter email. A student who already has any attempt for the
    scenario is skipped, so running the command twice by mistake sends nothing
    twice; with ``again``, only students with an open attempt are skipped.
    ``on_progress(done, total)`` runs after each student. Raises NotFoundError
    for an unknown cohort or scenario.
    """
    try:
        scenario = find_scenario(scenarios, scenario_ref)
    except NotFoundError:
        raise NotFoundError(
            f'no scenario "{scenario_ref}"; run `peb-mail scenarios list` to see '
            "the numbers and ids"
        ) from None
    students = await cohort_students(store, cohort)
    composer = Composer(config)
    result = AssignResult(cohort=cohort, scenario=scenario)
    for done, student in enumerate(students, start=1):
        attempt_id = await _start_for(store, composer, scenario, student, signer, again)
        if attempt_id is None:
            result.skipped.append(student.email)
        else:
            result.started.append((student.email, attempt_id))
        if on_progress is not None:
            on_progress(done, len(students))
    logger.info(
        "assigned scenario %s to cohort %s: %d started, %d skipped (already started)",
        scenario.id,
        cohort,
        len(result.started),
        len(result.skipped),
    )
    return result


async def cohort_students(store: Store, cohort: str) -> list[Student]:
    """Return the students of ``cohort`` ordered by email.

    Raises NotFoundError naming the cohorts that have students.
    """
    everyone = await store.list_students()
    students = [student for student in everyone if student.cohort == cohort]
    if not students:
        known = sorted({student.cohort for student in everyone})
        listed = ", ".join(known) if known else "none yet"
        raise NotFoundError(
            f'no students in cohort "{cohort}" (cohorts with students: {listed}); '
            "run `peb-mail roster list` to see them"
        )
    return students


async def _start_for(
    store: Store,
    composer: Composer,
    scenario: Scenario,
    student: Student,
    signer: TokenSigner,
    again: bool = False,
) -> int | None:
    """Start ``scenario`` for one student and return the new attempt id.

    Returns None when the student already has an attempt for it (an open one
    only, with ``again``).
    """
    async with store.transaction() as db:
        # Checked inside the write transaction, so two assign runs at the same
        # time cannot both start the scenario for this student.
        existing = (
            await sql.open_attempts(db, student.id)
            if again
            else await sql.student_attempts(db, student.id)
        )
        if any(attempt.scenario_id == scenario.id for attempt in existing):
            return None
        now = store.clock()
        attempt_id = await sql.create_attempt(
            db,
            student.id,
            scenario.id,
            lambda new_id: signer.token(student.id, new_id),
            now,
        )
        attempt = await sql.fetch_attempt(db, attempt_id)
        assert attempt is not None
        emails = composer.start_emails(
            scenario,
            Mailbox(student.name, student.email),
            attempt.token,
            attempt_id=attempt_id,
        )
        for item in emails:
            await sql.insert_outbox(db, item, now)
    return attempt_id


# -- grades export -----------------------------------------------------------


async def _attempt_rows(store: Store, cohort: str | None = None) -> list[sqlite3.Row]:
    """Return every attempt with its student, optionally of one cohort only."""
    query = (
        "select a.id, a.scenario_id, a.state, a.score, a.graded_at, "
        "s.id as student_id, s.email, s.name, s.cohort "
        "from attempts a join students s on s.id = a.student_id"
    )
    params: tuple[Any, ...] = ()
    if cohort is not None:
        query += " where s.cohort = ?"
        params = (cohort,)
    query += " order by s.cohort, s.email, a.id"
    async with store.read() as db:
        async with db.execute(query, params) as cursor:
            return list(await cursor.fetchall())


def _iso_utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _scores_of(attempts: list[sqlite3.Row]) -> dict[str, Any]:
    """Summarise one student's attempts at one scenario.

    Only graded attempts count for scores; ``latest`` is the most recently
    graded one, so a regraded attempt counts at its new grading time.
    """
    graded = [row for row in attempts if row["state"] == "graded"]
    best = max((row["score"] for row in graded), default=None)
    latest = max(graded, key=lambda row: (row["graded_at"], row["id"]), default=None)
    return {
        "attempts": len(attempts),
        "best_score": best,
        "latest_score": latest["score"] if latest is not None else None,
        "max_score": MAX_TOTAL,
        "best_percent": round(100 * best / MAX_TOTAL, 1) if best is not None else None,
        "latest_graded_at": _iso_utc(latest["graded_at"]) if latest else None,
    }


async def grade_rows(store: Store, scenarios: list[Scenario]) -> list[dict[str, Any]]:
    """Build one gradebook row per student and scenario the student started.

    ``attempts`` counts every attempt started, graded or not. Score columns
    are None until an attempt is graded. Rows are ordered by cohort, email and
    scenario number; scenarios no longer in the catalogue come last under
    their id.
    """
    by_id = {scenario.id: scenario for scenario in scenarios}
    groups: dict[tuple[str, str, str], list[sqlite3.Row]] = {}
    for row in await _attempt_rows(store):
        groups.setdefault((row["cohort"], row["email"], row["scenario_id"]), []).append(
            row
        )

    def order(key: tuple[str, str, str]) -> tuple[str, str, int, str]:
        cohort, email, scenario_id = key
        scenario = by_id.get(scenario_id)
        number = scenario.number if scenario else UNKNOWN_SCENARIO_NUMBER
        return cohort, email, number, scenario_id

    rows = []
    for key in sorted(groups, key=order):
        cohort, email, scenario_id = key
        attempts = groups[key]
        scenario = by_id.get(scenario_id)
        rows.append(
            {
                "email": email,
                "name": attempts[0]["name"],
                "cohort": cohort,
                "scenario_id": scenario_id,
                "scenario_title": scenario.title if scenario else scenario_id,
                **_scores_of(attempts),
            }
        )
    return rows


def grades_csv(rows: list[dict[str, Any]]) -> str:
    """Format grade rows as CSV with a header line; None becomes an empty cell."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=GRADE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in row})
    return buffer.getvalue()


# -- regrade -----------------------------------------------------------------


async def regrade(store: Store, attempt_id: int) -> None:
    """Queue a graded or failed attempt for grading again.

    The job becomes queued and due now with its tries reset, and the attempt
    becomes ``submitted``. The worker then replaces the stored grade and sends
    a new feedback email. Raises NotFoundError for an unknown id and
    AttemptStateError for an attempt that is open or already queued.
    """
    async with store.transaction() as db:
        attempt = await sql.fetch_attempt(db, attempt_id)
        if attempt is None:
            raise NotFoundError(
                f"no attempt {attempt_id}; run `peb-mail attempts list` to see the ids"
            )
        if attempt.state == "open":
            raise AttemptStateError(
                f"attempt {attempt_id} is open: the student has not submitted an "
                "email yet, so there is nothing to grade"
            )
        if attempt.state == "submitted":
            raise AttemptStateError(
                f"attempt {attempt_id} is already waiting for grading; see "
                "`peb-mail attempts list` for its tries and last error"
            )
        now = store.clock()
        cursor = await db.execute(
            "update jobs set state = 'queued', tries = 0, not_before = ?, "
            "lease_owner = null, lease_expires_at = null, last_error = null, "
            "updated_at = ? where attempt_id = ?",
            (now, now, attempt_id),
        )
        if cursor.rowcount != 1:
            raise AttemptStateError(
                f"attempt {attempt_id} ({attempt.state}) has no grading job to queue"
            )
        await sql.set_attempt_state(db, attempt_id, "submitted")
    logger.info("attempt %d (%s) queued for regrading", attempt_id, attempt.state)


# -- doctor ------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """Result of one doctor check; ``detail`` is what was found or how to fix it."""

    name: str
    ok: bool
    detail: str


async def doctor(config: Config, smtp_timeout_s: float = 5.0) -> list[Check]:
    """Check that the service can run with ``config``, changing nothing.

    Checks that do not apply (the smarthost for the Maildir transport, the
    API key for the offline grader) are left out. The only network
    connection is to the configured smarthost, with ``smtp_timeout_s``.
    """
    checks = [
        Check("config", True, f"loaded {config.path}" if config.path else "loaded"),
        await check_database(config.service.database),
        check_templates(config),
        check_scenario_files(config),
        check_secret(config),
    ]
    if config.outbox.transport == "smtp":
        checks.append(await check_smarthost(config, smtp_timeout_s))
    else:
        checks.append(check_maildir(config.outbox.maildir))
    if config.outbox.dkim_key_file is not None:
        checks.append(
            await asyncio.to_thread(check_dkim_key, config.outbox.dkim_key_file)
        )
    if config.grader.kind == "llm":
        checks.append(check_api_key(config))
    return checks


async def _table_columns(db: aiosqlite.Connection) -> dict[str, set[str]]:
    """Return the column names of each table in the database."""
    async with db.execute(
        "select name from sqlite_master where type = 'table' "
        "and name not like 'sqlite_%'"
    ) as cursor:
        tables = [row[0] for row in await cursor.fetchall()]
    columns: dict[str, set[str]] = {}
    for table in tables:
        async with db.execute(f"pragma table_info({table})") as cursor:
            columns[table] = {row[1] for row in await cursor.fetchall()}
    return columns


async def _expected_schema() -> dict[str, set[str]]:
    """Return the tables and columns that ``store.SCHEMA`` creates."""
    async with aiosqlite.connect(":memory:") as db:
        await db.executescript(SCHEMA)
        return await _table_columns(db)


async def check_database(path: Path) -> Check:
    """Open the database read-only and compare its tables with the schema."""
    if not path.exists():
        return Check(
            "database", False, f"{path} not found; run `peb-mail init` to create it"
        )
    # mode=ro: the doctor must not create or migrate anything.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        async with aiosqlite.connect(uri, uri=True) as db:
            await db.execute("pragma busy_timeout = 5000")
            found = await _table_columns(db)
    except sqlite3.Error as exc:
        return Check("database", False, f"{path}: cannot be opened: {exc}")
    problems = []
    for table, columns in sorted((await _expected_schema()).items()):
        if table not in found:
            problems.append(f"table {table} missing")
            continue
        missing = sorted(columns - found[table])
        if missing:
            problems.append(f"table {table} lacks {', '.join(missing)}")
    if problems:
        return Check(
            "database",
            False,
            f"{path}: schema out of date ({'; '.join(problems)}); "
            "run `peb-mail init` to update it",
        )
    return Check("database", True, f"{path}: schema current")


def check_templates(config: Config) -> Check:
    composer = Composer(config)
    try:
        composer.warm_up()
    except jinja2.TemplateError as exc:
        where = getattr(exc, "name", None) or "a template"
        line = getattr(exc, "lineno", None)
        at = f"{where} line {line}" if line else where
        return Check("templates", False, f"{at}: {exc}")
    count = len(composer.env.list_templates(extensions=["j2"]))
    return Check("templates", True, f"{count} templates compiled")


def check_scenario_files(config: Config) -> Check:
    from .scenario_check import check_scenarios
    from .scenarios import load_scenarios

    directory = config.service.scenarios_dir
    try:
        scenarios = load_scenarios(directory)
        findings = check_scenarios(directory, config.service.domain)
    except ConfigError as exc:
        return Check("scenarios", False, str(exc))
    errors = sum(finding.severity == "error" for finding in findings)
    warnings = len(findings) - errors
    detail = (
        f"{len(scenarios)} scenarios in {directory}, {errors} errors, "
        f"{warnings} warnings"
    )
    if errors:
        detail += "; run `peb-mail scenarios check` for the list"
    return Check("scenarios", errors == 0, detail)


def check_secret(config: Config) -> Check:
    """Check that reply-token keys exist and only their owner can read them."""
    path = config.service.secret_file
    if os.environ.get(SECRET_ENV, "").strip():
        source = f"${SECRET_ENV}"
    else:
        if not path.exists():
            return Check(
                "secret",
                False,
                f"{path} not found and ${SECRET_ENV} is not set; `peb-mail serve` "
                "creates the file, but if students already have reply addresses, "
                "restore it from a backup or their tokens stop working",
            )
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return Check(
                "secret",
                False,
                f"{path} has mode {mode:o}, readable by other users; "
                f"run: chmod 600 {path}",
            )
        source = str(path)
    try:
        # Neither branch above lets load_signer create a new file.
        signer = load_signer(path)
    except ConfigError as exc:
        return Check("secret", False, str(exc))
    return Check("secret", True, f"{len(signer.keys)} key(s) from {source}")


async def check_smarthost(config: Config, timeout_s: float) -> Check:
    """Connect to the smarthost and send EHLO and QUIT, without mail or login."""
    outbox = config.outbox
    where = f"{outbox.smarthost_host}:{outbox.smarthost_port}"
    client = aiosmtplib.SMTP(
        hostname=outbox.smarthost_host,
        port=outbox.smarthost_port,
        use_tls=outbox.use_tls,
        start_tls=False,
        timeout=timeout_s,
        # An explicit EHLO name avoids the DNS lookup of socket.getfqdn().
        local_hostname=config.service.domain,
    )
    try:
        await client.connect()
        await client.ehlo()
        extensions = sorted(client.esmtp_extensions)
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        client.close()
        return Check(
            "smarthost", False, f"{where}: {type(exc).__name__}: {exc}".rstrip(": ")
        )
    if outbox.starttls and "starttls" not in extensions:
        return Check(
            "smarthost",
            False,
            f"{where} does not offer STARTTLS, but outbox.starttls is true",
        )
    if outbox.username and not outbox.password:
        return Check(
            "smarthost",
            False,
            f"{where} answered, but ${outbox.password_env} (outbox.password_env) "
            "is not set, so login will fail",
        )
    # NOTE: the STARTTLS handshake and the login are not tried here.
    offered = ", ".join(extensions) or "no extensions"
    return Check("smarthost", True, f"{where} answered EHLO ({offered})")


def check_maildir(path: Path) -> Check:
    """Check that the sender can write emails into the Maildir at ``path``."""
    if path.exists():
        if not path.is_dir():
            return Check("maildir", False, f"{path} is not a folder")
        folders = [
            path,
            *(path / sub for sub in ("tmp", "new") if (path / sub).is_dir()),
        ]
        for folder in folders:
            try:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".peb-doctor-"):
                    pass
            except OSError as exc:
                return Check("maildir", False, f"{folder} is not writable: {exc}")
        return Check("maildir", True, f"{path} is writable")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Check("maildir", True, f"{path} will be created by the first send")
    return Check(
        "maildir",
        False,
        f"{path} does not exist and cannot be created because {parent} is not "
        "a writable folder; create it or change outbox.maildir",
    )


def check_dkim_key(path: Path) -> Check:
    try:
        public_key = dkim_public_key(path)
    except ConfigError as exc:
        return Check("dkim key", False, str(exc))
    return Check(
        "dkim key",
        True,
        f"{path}: RSA key read, public key is {len(public_key)} base64 characters",
    )


def check_api_key(config: Config) -> Check:
    variable = config.grader.api_key_env
    if config.grader.api_key:
        return Check("llm api key", True, f"${variable} is set")
    return Check(
        "llm api key",
        False,
        f"${variable} is not set; export the model provider's key in it "
        "(grader.api_key_env names the variable)",
    )


# -- DNS records ---------------------------------------------------------------


def dkim_public_key(key_file: Path) -> str:
    """Derive the base64 DER public key of a PEM RSA private key with openssl.

    Raises ConfigError when the file is missing, openssl is not installed or
    the key cannot be read (an encrypted key fails instead of prompting).
    """
    if not key_file.is_file():
        raise ConfigError(f"outbox.dkim_key_file {key_file} not found")
    command = ["openssl", "rsa", "-in", str(key_file), "-pubout", "-outform", "DER"]
    try:
        result = subprocess.run(
            [*command, "-passin", "pass:"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except FileNotFoundError:
        raise ConfigError(
            "openssl not found; install OpenSSL to derive the DKIM public key"
        ) from None
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(
            f"{key_file}: openssl could not read the key "
            f"({message[0] if message else f'exit status {result.returncode}'}); "
            "outbox.dkim_key_file must be an unencrypted PEM RSA private key"
        )
    return base64.b64encode(result.stdout).decode("ascii")


def _txt_value(text: str) -> str:
    """Quote ``text`` as TXT record data, split into strings of at most 255 bytes."""
    parts = [
        text[start : start + TXT_STRING_MAX]
        for start in range(0, len(text), TXT_STRING_MAX)
    ]
    return " ".join(f'"{part}"' for part in parts)


def _spf_mechanism(config: Config) -> str:
    """Return the SPF mechanism that authorises the host that sends our mail."""
    outbox = config.outbox
    if outbox.transport != "smtp":
        return "mx"
    try:
        address = ipaddress.ip_address(outbox.smarthost_host)
    except ValueError:
        return f"a:{outbox.smarthost_host}"
    if address.is_loopback or address.is_private:
        # A relay on this host or network sends from the public address of
        # the mail host, which the MX record names.
        return "mx"
    return f"ip{address.version}:{address}"


def dns_records(config: Config) -> list[str]:
    """Return the DNS records the operator publishes, as zone-file lines.

    Lines starting with ";" are comments that describe what to adapt. No DNS
    lookup is made. Raises ConfigError when the DKIM key cannot be read.
    """
    domain = config.service.domain
    outbox = config.outbox
    lines = [
        f"; MX: mail.{domain} needs an A or AAAA record for the host whose port 25 "
        f"reaches the listener (listener.port is {config.listener.port})",
        f"{domain}. IN MX 10 mail.{domain}.",
        f"; SPF: outbound mail uses the envelope sender bounces+TAG@{domain}; "
        "with a provider's smarthost, use the include: it documents",
        f"{domain}. IN TXT {_txt_value(f'v=spf1 {_spf_mechanism(config)} ~all')}",
    ]
    if outbox.dkim_selector and outbox.dkim_key_file is not None:
        dkim_domain = outbox.dkim_domain or domain
        public_key = dkim_public_key(outbox.dkim_key_file)
        lines += [
            f"; DKIM: public key of {outbox.dkim_key_file}",
            f"{outbox.dkim_selector}._domainkey.{dkim_domain}. IN TXT "
            + _txt_value(f"v=DKIM1; k=rsa; p={public_key}"),
        ]
    else:
        lines.append(
            "; DKIM: not configured; set outbox.dkim_selector and "
            "outbox.dkim_key_file to sign outbound mail, then list the records again"
        )
    lines += [
        f"; DMARC: start with p=none. Reports sent to an address at {domain} "
        "reach peb-mail, which does not read them, so add rua=mailto: with an "
        "address elsewhere, then raise the policy to quarantine",
        f"_dmarc.{domain}. IN TXT {_txt_value('v=DMARC1; p=none; adkim=r; aspf=r')}",
    ]
    return lines


# -- digest ------------------------------------------------------------------


async def digest_rows(
    store: Store, scenarios: list[Scenario], cohort: str
) -> dict[str, Any]:
    """Collect a cohort's progress for the daily instructor digest.

    Returns a dict with ``cohort``, ``max_score``, ``scenarios`` (the
    catalogue as number, id and title), ``students`` (each with one cell per
    scenario: attempts, best score and the latest attempt's state),
    ``not_started`` (students without any attempt) and ``failed`` (attempts
    whose grading failed, with the job's last error). Raises NotFoundError
    for a cohort without students.
    """
    students = await cohort_students(store, cohort)
    attempts = await _attempt_rows(store, cohort)
    by_student: dict[int, list[sqlite3.Row]] = {}
    for row in attempts:
        by_student.setdefault(row["student_id"], []).append(row)

    student_rows = []
    not_started = []
    for student in students:
        own = by_student.get(student.id, [])
        if not own:
            not_started.append({"email": student.email, "name": student.name})
        cells = []
        for scenario in scenarios:
            rows = [row for row in own if row["scenario_id"] == scenario.id]
            graded = [row["score"] for row in rows if row["state"] == "graded"]
            cells.append(
                {
                    "scenario_id": scenario.id,
                    "attempts": len(rows),
                    "best_score": max(graded, default=None),
                    "state": rows[-1]["state"] if rows else None,
                }
            )
        student_rows.append(
            {"email": student.email, "name": student.name, "scenarios": cells}
        )
    return {
        "cohort": cohort,
        "max_score": MAX_TOTAL,
        "scenarios": [
            {"number": s.number, "id": s.id, "title": s.title} for s in scenarios
        ],
        "students": student_rows,
        "not_started": not_started,
        "failed": await _failed_attempts(store, cohort, scenarios),
    }


async def _failed_attempts(
    store: Store, cohort: str, scenarios: list[Scenario]
) -> list[dict[str, Any]]:
    titles = {scenario.id: scenario.title for scenario in scenarios}
    async with store.read() as db:
        async with db.execute(
            "select a.id, a.scenario_id, s.email, s.name, j.last_error, j.updated_at "
            "from attempts a join students s on s.id = a.student_id "
            "left join jobs j on j.attempt_id = a.id "
            "where a.state = 'failed' and s.cohort = ? order by a.id",
            (cohort,),
        ) as cursor:
            rows = await cursor.fetchall()
    return [
        {
            "attempt_id": row["id"],
            "email": row["email"],
            "name": row["name"],
            "scenario_id": row["scenario_id"],
            "scenario_title": titles.get(row["scenario_id"], row["scenario_id"]),
            "error": row["last_error"],
            "failed_at": _iso_utc(row["updated_at"]),
        }
        for row in rows
    ]
