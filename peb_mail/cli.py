"""The ``peb-mail`` command line for admins."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .config import Config, load_config
from .errors import ConfigError, NotFoundError, PebMailError
from .models import CRITERION_LABELS, Verdict

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)

_EMAIL_RE = re.compile(r"^[^@\s<>()\[\],;:\"]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# A pipe or a file gets wide lines instead of rich's 80-column default, so
# addresses and ids are not folded.
console = Console() if sys.stdout.isatty() else Console(width=200)


def _time(value: float | None) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M")


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _print_rows(
    args: argparse.Namespace, title: str, columns: list[str], rows: list[dict[str, Any]]
) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    # Columns empty in every row only take width from the useful ones.
    shown = [c for c in columns if any(row.get(c) not in (None, "") for row in rows)]
    table = Table(title=f"{title} ({len(rows)})")
    for column in shown or columns:
        # fold wraps long values instead of cutting them with an ellipsis, so
        # addresses and ids stay whole in a narrow terminal or a pipe.
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            *(
                "" if row.get(column) is None else str(row.get(column))
                for column in shown or columns
            )
        )
    console.print(table)


# -- roster ---------------------------------------------------------------


def read_roster(path: Path) -> tuple[list[tuple[str, str, str]], dict[str, list[str]]]:
    """Read and validate a roster CSV; raises ConfigError listing every bad row."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"roster file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(
            f"roster path {str(path)!r} is a folder; give the CSV file"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid UTF-8 ({exc}); save the file as UTF-8 CSV"
        ) from exc
    # newline="" lets the csv module see CR and LF inside quoted fields, so a
    # name with a line break is reported instead of silently joined.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if not header:
        raise ConfigError(
            f"{path}: the file is empty; the first line must be email,name,cohort"
        )
    missing = {"email", "name", "cohort"} - set(header)
    if missing:
        raise ConfigError(
            f"{path}: the first line must name the columns email,name,cohort "
            f"(and optionally instructors); missing {', '.join(sorted(missing))}"
        )
    rows: list[tuple[str, str, str]] = []
    instructors: dict[str, list[str]] = {}
    errors: list[str] = []
    seen: set[str] = set()
    for raw in reader:
        # line_num is where the row ends; a quoted field may span lines.
        values = [value for value in raw.values() if isinstance(value, str)]
        line_number = reader.line_num - sum(_line_breaks(value) for value in values)
        if None in raw.values():
            given = sum(1 for value in raw.values() if value is not None)
            errors.append(
                f"line {line_number}: {given} fields, expected {len(header)} "
                f"({','.join(header)})"
            )
            continue
        if None in raw:
            errors.append(
                f"line {line_number}: {len(raw[None]) + len(header)} fields in "
                f"{','.join(str(v) for v in raw.values() if isinstance(v, str))!r}..., "
                f"expected {len(header)}; put a name that contains a comma in double quotes"
            )
            continue
        row = {
            (key or "").strip().lower(): (value or "").strip()
            for key, value in raw.items()
        }
        email = row.get("email", "").lower()
        name = " ".join(row.get("name", "").split())
        cohort = row.get("cohort", "")
        if not any(row.values()):
            continue
        if not _EMAIL_RE.match(email):
            errors.append(
                f"line {line_number}: invalid email {email!r}; use name@example.com"
            )
        elif email in seen:
            errors.append(
                f"line {line_number}: {email} appears twice; keep one row per student"
            )
        if not name or _CONTROL_RE.search(row.get("name", "").replace("\t", " ")):
            errors.append(
                f"line {line_number}: invalid name {row.get('name', '')!r}; give the student's name"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", cohort):
            errors.append(
                f"line {line_number}: invalid cohort {cohort!r}; use letters, digits, '-', '_' or '.'"
            )
        for address in filter(
            None, re.split(r"[;\s]+", row.get("instructors", "").lower())
        ):
            if not _EMAIL_RE.match(address):
                errors.append(
                    f"line {line_number}: invalid instructor email {address!r}"
                )
            else:
                instructors.setdefault(cohort, [])
                if address not in instructors[cohort]:
                    instructors[cohort].append(address)
        seen.add(email)
        rows.append((email, name, cohort))
    if errors:
        raise ConfigError(
            f"{path}: {plural(len(errors), 'invalid row')}, nothing imported:\n  "
            + "\n  ".join(errors)
        )
    if not rows:
        raise ConfigError(f"{path}: no students found below the header line")
    return rows, instructors


def _line_breaks(value: str) -> int:
    return len(re.findall(r"\r\n|\r|\n", value))


# -- commands ---------------------------------------------------------------


async def _open_store(config: Config, create: bool = False) -> Store:
    """Open the database; unless ``create``, fail with advice when it is missing."""
    from .store import Store

    database = config.service.database
    if not create and not database.exists():
        where = f" --config {config.path}" if config.path else ""
        raise ConfigError(
            f"database {str(database)!r} not found; run 'peb-mail init{where}' "
            "first, or check service.database in the config"
        )
    return await Store.open(database)


async def cmd_init(args: argparse.Namespace, config: Config) -> int:
    from .scenarios import load_scenarios

    store = await _open_store(config, create=True)
    await store.close()
    config.service.data_dir.mkdir(parents=True, exist_ok=True)
    scenarios = load_scenarios(config.service.scenarios_dir)
    # Create the token key now (unless $PEB_MAIL_SECRET is set), so doctor
    # passes before the first serve and the key can be backed up at once.
    from .tokens import SECRET_ENV, load_signer

    load_signer(config.service.secret_file)
    console.print(f"Database ready: {config.service.database}")
    if not os.environ.get(SECRET_ENV):
        console.print(f"Token key: {config.service.secret_file} (back it up)")
    console.print(f"Scenarios: {len(scenarios)} in {config.service.scenarios_dir}")
    console.print("Next: peb-mail roster import FILE.csv, then peb-mail serve")
    return 0


async def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from .service import serve

    await serve(config)
    return 0


async def cmd_roster_import(args: argparse.Namespace, config: Config) -> int:
    rows, instructors = read_roster(Path(args.file))
    async with await _open_store(config, create=True) as store:
        added, updated = await store.upsert_students(rows, instructors)
    console.print(
        f"Imported {plural(len(rows), 'student')}: {added} added, {updated} updated."
    )
    for cohort in sorted({cohort for _, _, cohort in rows}):
        if not instructors.get(cohort) and not config.cohorts.get(cohort):
            known = await _cohort_instructors(config, cohort)
            if not known:
                console.print(
                    f"[yellow]warning:[/yellow] cohort {cohort!r} has no instructors, "
                    "so nobody gets its grade summaries; add [cohorts."
                    f"{cohort}] to the config or an instructors column to the roster"
                )
    return 0


async def _cohort_instructors(config: Config, cohort: str) -> list[str]:
    async with await _open_store(config) as store:
        return await store.cohort_instructors(cohort)


async def cmd_roster_list(args: argparse.Namespace, config: Config) -> int:
    async with await _open_store(config) as store:
        students = await store.list_students()
        cohorts = sorted({student.cohort for student in students})
        instructors = {
            cohort: await store.cohort_instructors(cohort) for cohort in cohorts
        }
    rows = [
        {
            "id": s.id,
            "email": s.email,
            "name": s.name,
            "cohort": s.cohort,
            "instructors": ", ".join(
                sorted({*instructors[s.cohort], *config.cohorts.get(s.cohort, ())})
            ),
            "hard_bounces": s.hard_bounces,
            "flagged": s.flagged,
        }
        for s in students
    ]
    _print_rows(
        args,
        "Students",
        ["id", "email", "name", "cohort", "instructors", "flagged"],
        rows,
    )
    return 0


async def cmd_scenarios_list(args: argparse.Namespace, config: Config) -> int:
    from .scenarios import load_scenarios

    scenarios = load_scenarios(config.service.scenarios_dir)
    rows = [
        {
            "number": s.number,
            "id": s.id,
            "type": s.type,
            "title": s.title,
            "counterpart": f"{s.counterpart.name} <{s.counterpart.local_part}@{config.service.domain}>",
        }
        for s in scenarios
    ]
    _print_rows(
        args, "Scenarios", ["number", "id", "type", "title", "counterpart"], rows
    )
    return 0


async def cmd_scenarios_check(args: argparse.Namespace, config: Config) -> int:
    from .scenario_check import check_scenarios

    directory = Path(args.dir) if args.dir else config.service.scenarios_dir
    findings = check_scenarios(directory, config.service.domain)
    rows = [
        {
            "severity": f.severity,
            "file": f.path.name if f.path else "",
            "code": f.code,
            "message": f.message,
        }
        for f in findings
    ]
    errors = sum(f.severity == "error" for f in findings)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            print(f"{row['severity']}: {row['file']}: {row['code']}: {row['message']}")
        print(
            f"{plural(len(findings), 'finding')}, {plural(errors, 'error')} "
            f"in {directory}"
        )
    return 1 if errors else 0


async def cmd_scenarios_review(args: argparse.Namespace, config: Config) -> int:
    from .scenario_check import find_loaded, review_offline, review_with_model

    directory = config.service.scenarios_dir
    if args.id and args.id.strip().isdigit():
        # A catalogue number needs the loaded catalogue to become an id.
        args.id = find_loaded(directory, args.id).id
    findings = review_offline(directory, config.service.domain, args.id)
    for f in findings:
        print(f"{f.severity}: {f.scenario_id}: {f.code}: {f.message}")
    if not findings:
        print("The checks found no gaps.")
    if config.grader.kind != "llm":
        print(
            "(grader.kind is offline, so only the checks ran; set it to llm for a model review)"
        )
        return 1 if any(f.severity == "error" for f in findings) else 0
    refs = [args.id] if args.id else [s.id for s in _load_catalogue(config)]
    for ref in refs:
        scenario = find_loaded(directory, ref)
        print(f"\n== Model review of {scenario.id} ==")
        print(
            await review_with_model(
                scenario,
                config.grader,
                findings=[f for f in findings if f.scenario_id == scenario.id],
                prompts_dir=config.service.prompts_dir,
            )
        )
    return 1 if any(f.severity == "error" for f in findings) else 0


async def cmd_scenarios_preview(args: argparse.Namespace, config: Config) -> int:
    from email.policy import SMTP

    from .scenario_check import find_loaded, render_preview

    scenario = find_loaded(config.service.scenarios_dir, args.id)
    messages = render_preview(scenario, config, args.name)
    for index, message in enumerate(messages, start=1):
        if args.eml_dir:
            folder = Path(args.eml_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{scenario.id}-{index}.eml"
            path.write_bytes(message.as_bytes(policy=SMTP))
            print(path)
        else:
            print(_readable(message))
            print("-" * 72)
    return 0


def _readable(message: Any) -> str:
    """Show an email as a student's mail client would: headers, text, attachments."""
    lines = [
        f"{name}: {message[name]}"
        for name in ("From", "To", "Reply-To", "Subject")
        if message[name]
    ]
    body = message.get_body(preferencelist=("plain",))
    lines += ["", body.get_content().rstrip() if body is not None else ""]
    for part in message.iter_attachments():
        lines.append(f"[attached: {part.get_filename()} ({part.get_content_type()})]")
    return "\n".join(lines)


def _load_catalogue(config: Config) -> list[Any]:
    from .scenarios import load_scenarios

    return load_scenarios(config.service.scenarios_dir)


async def cmd_calibrate(args: argparse.Namespace, config: Config) -> int:
    import dataclasses

    from .calibrate import load_cases, run_calibration
    from .scenarios import load_scenarios
    from .service import make_grader

    kind = args.grader or config.grader.kind
    grader_config = dataclasses.replace(config.grader, kind=kind)
    if kind == "llm" and not grader_config.model:
        raise ConfigError("grader.model must be set to calibrate with --grader llm")
    grader = make_grader(dataclasses.replace(config, grader=grader_config))
    cases_path = Path(args.cases)
    report = await run_calibration(
        grader, load_scenarios(config.service.scenarios_dir), load_cases(cases_path)
    )
    print(report.format())
    return 0 if report.passed else 1


async def cmd_attempts_list(args: argparse.Namespace, config: Config) -> int:
    async with await _open_store(config) as store:
        student_id = None
        if args.student:
            student = await store.student_by_email(args.student)
            if student is None:
                raise NotFoundError(
                    f"student {args.student!r} not found; see peb-mail roster list"
                )
            student_id = student.id
        rows = [dict(row) for row in await store.list_attempts(student_id)]
    for row in rows:
        row["created"] = _time(row.pop("created_at"))
        row["graded"] = _time(row.pop("graded_at"))
    _print_rows(
        args,
        "Attempts",
        [
            "id",
            "email",
            "scenario_id",
            "state",
            "score",
            "tries",
            "created",
            "graded",
            "last_error",
        ],
        rows,
    )
    return 0


async def cmd_attempts_show(args: argparse.Namespace, config: Config) -> int:
    async with await _open_store(config) as store:
        attempt = await store.attempt(args.id)
        if attempt is None:
            raise NotFoundError(
                f"attempt {args.id} not found; see peb-mail attempts list"
            )
        student = await store.student_by_id(attempt.student_id)
        emails = await store.outbox_for_attempt(attempt.id)
    verdict = Verdict.from_json(attempt.verdict) if attempt.verdict else None
    data: dict[str, Any] = {
        "id": attempt.id,
        "student": student.email if student else None,
        "scenario": attempt.scenario_id,
        "state": attempt.state,
        "score": attempt.score,
        "created": _time(attempt.created_at),
        "submitted": _time(attempt.submitted_at),
        "graded": _time(attempt.graded_at),
        "subject": attempt.subject,
        "text": attempt.body,
        "attachments": json.loads(attempt.attachments or "[]"),
        "verdict": json.loads(attempt.verdict) if attempt.verdict else None,
        "emails": [
            {
                "id": e.id,
                "kind": e.kind,
                "state": e.state,
                "message_id": e.message_id,
                "to": list(e.rcpt_tos),
            }
            for e in emails
        ],
    }
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    for key in (
        "id",
        "student",
        "scenario",
        "state",
        "score",
        "created",
        "submitted",
        "graded",
        "subject",
    ):
        console.print(
            f"[bold]{key}:[/bold] {data[key] if data[key] is not None else ''}"
        )
    if attempt.body:
        console.print("[bold]text:[/bold]")
        console.print(attempt.body, markup=False, highlight=False)
    if verdict:
        table = Table(title=f"Verdict ({verdict.grader}): {verdict.total}/35")
        table.add_column("criterion")
        table.add_column("score")
        table.add_column("justification")
        for item in verdict.scores:
            table.add_row(
                CRITERION_LABELS.get(item.criterion, item.criterion),
                str(item.score),
                item.justification,
            )
        console.print(table)
    _print_rows(
        args, "Emails", ["id", "kind", "state", "message_id", "to"], data["emails"]
    )
    return 0


async def cmd_outbox_list(args: argparse.Namespace, config: Config) -> int:
    async with await _open_store(config) as store:
        emails = await store.list_outbox(args.state, args.limit)
    rows = [
        {
            "id": e.id,
            "kind": e.kind,
            "state": e.state,
            "to": ", ".join(e.rcpt_tos),
            "tries": e.tries,
            "attempt": e.attempt_id,
            "created": _time(e.created_at),
            "sent": _time(e.sent_at),
            "bounced": e.bounce_status if e.bounced_at else None,
            "last_error": e.last_error,
        }
        for e in emails
    ]
    _print_rows(
        args,
        "Outbox",
        [
            "id",
            "kind",
            "state",
            "to",
            "tries",
            "attempt",
            "created",
            "sent",
            "bounced",
            "last_error",
        ],
        rows,
    )
    return 0


async def cmd_outbox_retry(args: argparse.Namespace, config: Config) -> int:
    if args.ids and args.all:
        raise ConfigError("pass outbox ids or --all, not both")
    if not args.ids and not args.all:
        raise ConfigError(
            "name the outbox ids to retry, or pass --all for every dead email"
        )
    async with await _open_store(config) as store:
        if args.ids:
            states = await store.outbox_states(args.ids)
            for email_id in args.ids:
                if email_id not in states:
                    raise NotFoundError(
                        f"outbox {email_id} not found; see peb-mail outbox list"
                    )
                if states[email_id] != "dead":
                    raise ConfigError(
                        f"outbox {email_id} is {states[email_id]}, not dead; only "
                        "dead emails can be retried"
                    )
        count = await store.retry_outbox(None if args.all else args.ids)
    console.print(f"{plural(count, 'dead email')} queued again.")
    return 0


async def cmd_inbound_list(
    args: argparse.Namespace, config: Config, title: str = "Inbound"
) -> int:
    async with await _open_store(config) as store:
        rows = [dict(row) for row in await store.list_inbound(args.state, args.limit)]
    for row in rows:
        row["received"] = _time(row.pop("received_at"))
    _print_rows(
        args,
        title,
        ["id", "received", "mail_from", "state", "reason", "attempt_id", "size"],
        rows,
    )
    return 0


async def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from .compose import Composer
    from .intake import Intake
    from .scenarios import load_scenarios

    async with await _open_store(config) as store:
        row = await store.find_inbound(args.message)
        if row is None:
            raise NotFoundError(
                f"message {args.message!r} not found; give a number or a Message-ID "
                "from peb-mail inbound list"
            )
        intake = Intake(
            store,
            Composer(config),
            load_scenarios(config.service.scenarios_dir),
            config,
        )
        lines = await intake.explain(row["id"])
    print("\n".join(lines))
    return 0


async def cmd_quarantine_list(args: argparse.Namespace, config: Config) -> int:
    args.state = "quarantined"
    return await cmd_inbound_list(args, config, title="Quarantined")


async def cmd_quarantine_release(args: argparse.Namespace, config: Config) -> int:
    async with await _open_store(config) as store:
        for inbound_id in args.ids:
            row = await store.inbound_row(inbound_id)
            if row is None:
                raise NotFoundError(
                    f"message {inbound_id} not found; see peb-mail quarantine list"
                )
            if row["state"] != "quarantined":
                raise ConfigError(
                    f"message {inbound_id} is {row['state']}, not quarantined; only "
                    "quarantined messages can be released"
                )
        count = await store.release_inbound(args.ids, trust=args.trust)
    console.print(
        f"{plural(count, 'message')} released; a running peb-mail serve processes "
        "them again within a second."
    )
    return 0


async def cmd_extract(args: argparse.Namespace, config: Config) -> int:
    from .extract import extract_reply
    from .message import parse

    path = Path(args.file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    head = raw[:4096].decode("utf-8", errors="replace")
    looks_like_message = re.search(
        r"^(From|Subject|Message-ID|Content-Type|Received):", head, re.M | re.I
    )
    if looks_like_message:
        parsed = parse(raw)
        print(parsed.new_text)
    else:
        print(extract_reply(raw.decode("utf-8", errors="replace")).text)
    return 0


async def cmd_student_export(args: argparse.Namespace, config: Config) -> int:
    import dataclasses

    async with await _open_store(config) as store:
        data = await store.export_student(args.email)
    if data is None:
        raise NotFoundError(
            f"student {args.email!r} not found; see peb-mail roster list"
        )
    folder = Path(args.out or f"export-{args.email.lower()}")
    (folder / "emails").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for table in ("inbound", "outbox"):
        for row in data[table]:
            raw = row.pop("raw", b"") or b""
            name = f"emails/{table}-{row['id']}.eml"
            (folder / name).write_bytes(raw)
            row["raw_file"] = name if raw else None
    for row in data["attempts"]:
        if row.get("verdict"):
            row["verdict"] = json.loads(row["verdict"])
        if row.get("attachments"):
            row["attachments"] = json.loads(row["attachments"])
    data["student"] = dataclasses.asdict(data["student"])
    (folder / "student.json").write_text(
        json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )
    console.print(
        f"Exported {args.email}: {plural(len(data['attempts']), 'attempt')}, "
        f"{plural(len(data['inbound']), 'received email')}, "
        f"{plural(len(data['outbox']), 'sent email')} to {folder}/"
    )
    return 0


async def cmd_student_delete(args: argparse.Namespace, config: Config) -> int:
    if not args.yes:
        raise ConfigError(
            f"this deletes {args.email} and all their attempts and emails for good; "
            "run 'peb-mail student export' first if you need a copy, then add --yes"
        )
    async with await _open_store(config) as store:
        counts = await store.delete_student(args.email)
    if counts is None:
        raise NotFoundError(
            f"student {args.email!r} not found; see peb-mail roster list"
        )
    console.print(
        f"Deleted {args.email}: "
        + ", ".join(f"{count} {table}" for table, count in counts.items() if count)
    )
    return 0


async def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    days = args.days if args.days is not None else config.service.retention_days
    if days <= 0:
        raise ConfigError(
            "no retention period: set service.retention_days in the config or pass --days N"
        )
    async with await _open_store(config) as store:
        count = await store.purge_raw(store.clock() - days * 86400)
    console.print(
        f"Deleted the raw bytes of {plural(count, 'message')} older than {days} days."
    )
    return 0


async def cmd_assign(args: argparse.Namespace, config: Config) -> int:
    from rich.progress import Progress

    from .admin import assign
    from .scenarios import load_scenarios
    from .tokens import load_signer

    scenarios = load_scenarios(config.service.scenarios_dir)
    signer = load_signer(config.service.secret_file)
    async with await _open_store(config) as store:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"Starting for cohort {args.cohort}", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            result = await assign(
                store,
                config,
                scenarios,
                args.cohort,
                args.scenario,
                signer,
                advance,
                again=args.again,
            )
    console.print(
        f"Scenario {result.scenario.number} ({result.scenario.id}) started for "
        f"{plural(len(result.started), 'student')} of cohort {result.cohort}."
    )
    if result.skipped:
        console.print(
            f"Skipped {plural(len(result.skipped), 'student')} who already started it: "
            + ", ".join(result.skipped)
        )
    return 0


async def cmd_grades_export(args: argparse.Namespace, config: Config) -> int:
    from .admin import grade_rows, grades_csv
    from .scenarios import load_scenarios

    async with await _open_store(config) as store:
        rows = await grade_rows(store, load_scenarios(config.service.scenarios_dir))
    if args.format == "json":
        text = json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n"
    else:
        text = grades_csv(rows)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        console.print(f"Wrote {plural(len(rows), 'row')} to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


async def cmd_regrade(args: argparse.Namespace, config: Config) -> int:
    from .admin import regrade

    async with await _open_store(config) as store:
        await regrade(store, args.id)
    console.print(
        f"Attempt {args.id} is queued for grading again; a running peb-mail serve "
        "sends the student new feedback."
    )
    return 0


async def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from .admin import dns_records, doctor

    checks = await doctor(config, smtp_timeout_s=args.smtp_timeout)
    rows = [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
    if args.json:
        print(json.dumps({"checks": rows, "dns": dns_records(config)}, indent=2))
    else:
        for check in checks:
            mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
            console.print(f"{mark} {check.name}: {check.detail}", highlight=False)
        console.print("\nDNS records to publish for " + config.service.domain + ":")
        for line in dns_records(config):
            console.print("  " + line, markup=False, highlight=False)
    return 0 if all(c.ok for c in checks) else 1


async def cmd_stats(args: argparse.Namespace, config: Config) -> int:
    async with await _open_store(config) as store:
        counts = await store.counts()
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    table = Table(title="peb-mail")
    table.add_column("table")
    table.add_column("state")
    table.add_column("count", justify="right")
    for name, states in counts.items():
        for state, count in states.items():
            table.add_row(name, state, str(count))
    console.print(table)
    return 0


# -- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peb-mail", description="Practise professional email by email."
    )
    parser.add_argument(
        "--version", action="version", version=f"peb-mail {__version__}"
    )
    config_help = "config file (default: $PEB_MAIL_CONFIG or ./config.toml)"
    parser.add_argument("--config", metavar="PATH", help=config_help)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level"
    )
    # The same options after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", help=config_help, default=argparse.SUPPRESS
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at DEBUG level",
        default=argparse.SUPPRESS,
    )
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument(
        "--json", action="store_true", help="print JSON instead of a table"
    )

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        handler: Callable[..., Awaitable[int]],
        help_text: str,
        *parents: argparse.ArgumentParser,
        sub: Any = commands,
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(
            name, help=help_text, description=help_text, parents=[common, *parents]
        )
        command.set_defaults(handler=handler)
        return command

    add("init", cmd_init, "create the database and check the scenarios")
    add(
        "serve",
        cmd_serve,
        "run the listener, workers and sender until SIGINT or SIGTERM",
    )

    roster = commands.add_parser(
        "roster", help="import or list students"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    add(
        "import",
        cmd_roster_import,
        "import students from a CSV file (columns email,name,cohort[,instructors])",
        sub=roster,
    ).add_argument("file", help="path of the CSV file")
    add("list", cmd_roster_list, "list enrolled students", listing, sub=roster)

    scenarios = commands.add_parser(
        "scenarios", help="list, check and preview practice scenarios"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    add(
        "list",
        cmd_scenarios_list,
        "list the scenario catalogue",
        listing,
        sub=scenarios,
    )
    check = add(
        "check",
        cmd_scenarios_check,
        "validate every scenario file and find gaps (exit 1 on errors)",
        listing,
        sub=scenarios,
    )
    check.add_argument(
        "--dir", metavar="DIR", help="folder to check (default: service.scenarios_dir)"
    )
    add(
        "review",
        cmd_scenarios_review,
        "run the checks and, with grader.kind = llm, ask the model to read a "
        "scenario as a student would",
        sub=scenarios,
    ).add_argument("id", nargs="?", help="scenario id or number (default: all)")
    preview = add(
        "preview",
        cmd_scenarios_preview,
        "show the brief and starter emails exactly as a student receives them",
        sub=scenarios,
    )
    preview.add_argument("id", help="scenario id or number")
    preview.add_argument(
        "--eml-dir", metavar="DIR", help="write .eml files here instead of printing"
    )
    preview.add_argument(
        "--name",
        default="Ana Silva",
        help="student name to fill in (default: Ana Silva)",
    )

    attempts = commands.add_parser(
        "attempts", help="list or show attempts"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    attempts_list = add(
        "list", cmd_attempts_list, "list attempts, newest first", listing, sub=attempts
    )
    attempts_list.add_argument(
        "--student", metavar="EMAIL", help="only this student's attempts"
    )
    add(
        "show",
        cmd_attempts_show,
        "show one attempt with its text, verdict and emails",
        listing,
        sub=attempts,
    ).add_argument("id", type=int, help="attempt id")

    outbox = commands.add_parser(
        "outbox", help="list or retry outbound emails"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    outbox_list = add(
        "list",
        cmd_outbox_list,
        "list outbound emails, newest first",
        listing,
        sub=outbox,
    )
    outbox_list.add_argument(
        "--state", choices=["pending", "sent", "dead"], help="only emails in this state"
    )
    outbox_list.add_argument(
        "--limit", type=int, default=100, help="rows to show (default 100)"
    )
    retry = add(
        "retry", cmd_outbox_retry, "queue dead emails for delivery again", sub=outbox
    )
    retry.add_argument("ids", nargs="*", type=int, help="outbox ids")
    retry.add_argument("--all", action="store_true", help="retry every dead email")

    inbound = commands.add_parser(
        "inbound", help="list received messages"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    inbound_list = add(
        "list",
        cmd_inbound_list,
        "list received messages, newest first",
        listing,
        sub=inbound,
    )
    inbound_list.add_argument(
        "--state",
        choices=["received", "processed", "ignored", "rejected", "quarantined"],
        help="only messages in this state",
    )
    inbound_list.add_argument(
        "--limit", type=int, default=100, help="rows to show (default 100)"
    )

    add("stats", cmd_stats, "count records by state", listing)
    assign = add(
        "assign",
        cmd_assign,
        "start a scenario for every student of a cohort, as if each sent START "
        "(students who already started it are skipped unless --again)",
    )
    assign.add_argument("--cohort", required=True, help="cohort name from the roster")
    assign.add_argument("--scenario", required=True, help="scenario number or id")
    assign.add_argument(
        "--again",
        action="store_true",
        help="also start it for students who already finished it (not for open ones)",
    )
    grades = commands.add_parser("grades", help="export grades").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    grades_export = add(
        "export",
        cmd_grades_export,
        "one row per student and scenario (best and latest) for a gradebook import",
        sub=grades,
    )
    grades_export.add_argument(
        "--format",
        choices=["csv", "json"],
        default="csv",
        help="output format (default csv)",
    )
    grades_export.add_argument(
        "--out", metavar="FILE", help="file to write (default: standard output)"
    )
    add(
        "regrade",
        cmd_regrade,
        "grade a graded or failed attempt again and send new feedback",
    ).add_argument("id", type=int, help="attempt id")
    doctor = add(
        "doctor",
        cmd_doctor,
        "check the database, templates, scenarios, secret, mail transport and API "
        "key, and print the DNS records to publish (exit 1 if a check fails)",
        listing,
    )
    doctor.add_argument(
        "--smtp-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait for the smarthost (default 5)",
    )
    student = commands.add_parser(
        "student", help="export or delete everything stored about one student"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    export = add(
        "export",
        cmd_student_export,
        "write the student's data as JSON plus every raw email to a folder",
        sub=student,
    )
    export.add_argument("email", help="the student's address")
    export.add_argument("--out", metavar="DIR", help="folder (default: export-EMAIL)")
    delete = add(
        "delete",
        cmd_student_delete,
        "delete the student, their attempts, jobs, received and sent emails",
        sub=student,
    )
    delete.add_argument("email", help="the student's address")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    add(
        "purge",
        cmd_purge,
        "delete the raw bytes of processed messages older than the retention period",
    ).add_argument(
        "--days", type=int, help="retention in days (default: service.retention_days)"
    )
    add(
        "replay",
        cmd_replay,
        "re-run parsing, classification, matching and extraction on a stored "
        "message and print each decision (changes nothing)",
    ).add_argument("message", help="message number or Message-ID (see inbound list)")
    quarantine = commands.add_parser(
        "quarantine", help="list or release quarantined messages"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    quarantine_list = add(
        "list",
        cmd_quarantine_list,
        "list quarantined messages with the reason",
        listing,
        sub=quarantine,
    )
    quarantine_list.add_argument(
        "--limit", type=int, default=100, help="rows to show (default 100)"
    )
    release = add(
        "release",
        cmd_quarantine_release,
        "send quarantined messages through intake again (after a fix or review)",
        sub=quarantine,
    )
    release.add_argument("ids", nargs="+", type=int, help="message numbers")
    release.add_argument(
        "--trust",
        action="store_true",
        help="mark the messages as genuine so the sender policy does not hold them again",
    )
    add(
        "extract",
        cmd_extract,
        "print exactly the text that would be graded from an email file "
        "(a whole message, or a bare body)",
    ).add_argument("file", help="path of the .eml or text file")
    calibrate = add(
        "calibrate",
        cmd_calibrate,
        "grade the calibration emails and print scores, bands and order agreement",
    )
    calibrate.add_argument(
        "--grader",
        choices=["offline", "llm"],
        help="grader to run (default: grader.kind)",
    )
    calibrate.add_argument(
        "--cases",
        default=str(
            Path(__file__).resolve().parent.parent
            / "tests"
            / "calibration"
            / "cases.json"
        ),
        help="calibration cases file (default: tests/calibration/cases.json)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        config = load_config(args.config)
        setup_logging(
            logging.DEBUG if args.verbose else logging.INFO,
            redact_addresses=config.service.redact_addresses,
            fmt=config.service.log_format,
        )
        return asyncio.run(args.handler(args, config))
    except (ConfigError, NotFoundError) as exc:
        print(f"peb-mail: error: {exc}", file=sys.stderr)
        return 2
    except PebMailError as exc:
        print(f"peb-mail: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (such as "head") closed the pipe; that is not an error.
        sys.stderr.close()
        return 0
