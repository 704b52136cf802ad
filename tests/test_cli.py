"""Tests for the admin command line, run in-process on real SQLite files.

Each test writes its own config.toml into tmp_path. ``main`` calls
``asyncio.run``, so these tests are plain functions and set up the database
with ``asyncio.run`` too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peb_mail.cli import main
from peb_mail.store import NewEmail, Store, create_attempt, insert_outbox

REPO = Path(__file__).resolve().parent.parent
CONFIG_INSTRUCTOR = "instructor@school.test"
SHIPPED_SCENARIOS = {
    "correct-error-in-report",
    "clarify-vague-task",
    "reschedule-client-call",
    "missed-remote-standup",
    "reschedule-internal-meeting",
    "follow-up-late-invoice",
    "follow-up-missing-documents",
    "respond-to-feedback-slow-responses",
    "request-deadline-adjustment",
    "respond-to-customer-complaint",
    "clarify-multistep-process",
}
COMMANDS = [
    "init",
    "serve",
    "roster",
    "scenarios",
    "attempts",
    "outbox",
    "inbound",
    "stats",
]
# 2023-11-14 22:13:20 UTC, a fixed creation time for attempts and emails.
CREATED_AT = 1_700_000_000.0
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


# -- config files -------------------------------------------------------------


def default_sections() -> dict[str, dict[str, Any]]:
    """Return the sections of the shipped config.toml, with data beside the file."""
    return {
        "service": {
            "domain": "peb-mail.test",
            "address": "practice",
            "display_name": "peb-mail",
            # Relative paths resolve against the folder of the config file.
            "data_dir": "var",
            "database": "var/peb.sqlite3",
            "scenarios_dir": str(REPO / "scenarios"),
            "prompts_dir": str(REPO / "prompts"),
        },
        "listener": {"host": "127.0.0.1", "port": 0, "max_message_bytes": 10485760},
        "queue": {"workers": 1, "lease_s": 300, "max_tries": 5},
        "grader": {"kind": "offline", "model": "", "timeout_s": 60},
        "outbox": {"transport": "maildir", "maildir": "var/sent", "max_tries": 10},
        "instructors": {"delivery": "separate"},
        "cohorts.demo": {"instructors": [CONFIG_INSTRUCTOR]},
    }


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    # JSON strings and lists of strings are also valid TOML values.
    return json.dumps(value)


def write_config(tmp_path: Path, **overrides: dict[str, Any]) -> Path:
    """Write config.toml into tmp_path. Each override adds keys to a section or adds the section."""
    sections = default_sections()
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep the repository's config.toml and $PEB_MAIL_CONFIG out of every test.
    monkeypatch.delenv("PEB_MAIL_CONFIG", raising=False)
    monkeypatch.delenv("PEB_MAIL_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "var" / "peb.sqlite3"


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = main(list(argv))
    captured = capsys.readouterr()
    # rich colours its output when stdout is a terminal (pytest -s).
    return Result(code, _ANSI_RE.sub("", captured.out), captured.err)


@pytest.fixture
def bare_cli(capsys: pytest.CaptureFixture[str], config_path: Path) -> Cli:
    """Run ``main`` with the test's config, before any ``init``."""

    def run(*argv: str) -> Result:
        return run_main(capsys, *argv, "--config", str(config_path))

    return run


@pytest.fixture
def cli(bare_cli: Cli) -> Cli:
    """Like ``bare_cli``, after ``peb-mail init`` created the database."""
    assert bare_cli("init").code == 0
    return bare_cli


def write_csv(tmp_path: Path, text: str, name: str = "roster.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# -- database set-up through the Store ----------------------------------------


async def add_attempt(database: Path, email: str = "ana@student.test") -> int:
    store = await Store.open(database, clock=lambda: CREATED_AT)
    try:
        await store.upsert_students([(email, "Ana Silva", "demo")], {})
        student = await store.student_by_email(email)
        assert student is not None
        async with store.transaction() as db:
            return await create_attempt(
                db, student.id, "correct-error-in-report", "token-1", CREATED_AT
            )
    finally:
        await store.close()


async def add_dead_email(database: Path, attempt_id: int | None = None) -> None:
    store = await Store.open(database, clock=lambda: CREATED_AT)
    try:
        email = NewEmail(
            message_id="<feedback-1@peb-mail.test>",
            kind="feedback",
            envelope_from="practice@peb-mail.test",
            rcpt_tos=("ana@student.test",),
            raw=b"Subject: feedback\r\n\r\nWell done.\r\n",
            attempt_id=attempt_id,
        )
        async with store.transaction() as db:
            await insert_outbox(db, email, CREATED_AT)
        [row] = await store.list_outbox()
        await store.mark_dead(row.id, "550 mailbox unavailable")
    finally:
        await store.close()


async def add_inbound(database: Path) -> None:
    store = await Store.open(database, clock=lambda: CREATED_AT)
    try:
        await store.ingest(
            peer="127.0.0.1",
            mail_from="Ana@Student.test",
            rcpt_tos=["practice@peb-mail.test"],
            message_id="<reply-1@student.test>",
            raw=b"Subject: HELP\r\n\r\nhelp\r\n",
        )
    finally:
        await store.close()


# -- init -----------------------------------------------------------------------


def test_init_creates_database(bare_cli: Cli, database: Path) -> None:
    assert not database.exists()

    result = bare_cli("init")

    assert result.code == 0
    assert database.is_file()
    assert "Database ready" in result.out
    assert "Scenarios: 11" in result.out
    assert (database.parent / "secret.key").exists()
    assert "Token key" in result.out


def test_listing_before_init_says_so(bare_cli: Cli, database: Path) -> None:
    result = bare_cli("stats")

    assert result.code == 2
    assert "peb-mail init" in result.err
    assert not database.exists()


def test_init_twice_keeps_students(cli: Cli, tmp_path: Path) -> None:
    assert cli("init").code == 0
    roster = write_csv(tmp_path, "email,name,cohort\nana@student.test,Ana,demo\n")
    assert cli("roster", "import", str(roster)).code == 0

    assert cli("init").code == 0

    assert len(cli("roster", "list", "--json").json()) == 1


# -- roster import: good files ---------------------------------------------------


def test_roster_import_bom_and_blank_lines(cli: Cli, tmp_path: Path) -> None:
    text = (
        "\ufeffEmail,Name,Cohort\n"
        "\n"
        "Ana@Student.test,  Ana   Silva ,demo\n"
        "\n"
        "\n"
        "bo@student.test,Bo Chen,demo\n"
        "\n"
    )
    roster = write_csv(tmp_path, text)

    result = cli("roster", "import", str(roster))

    assert result.code == 0, result.err
    assert "2 added, 0 updated" in result.out
    students = cli("roster", "list", "--json").json()
    assert [s["email"] for s in students] == ["ana@student.test", "bo@student.test"]
    assert [s["name"] for s in students] == ["Ana Silva", "Bo Chen"]
    assert [s["cohort"] for s in students] == ["demo", "demo"]


def test_roster_import_crlf_lines(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(tmp_path, "email,name,cohort\r\nana@student.test,Ana,demo\r\n")

    result = cli("roster", "import", str(roster))

    assert result.code == 0, result.err
    assert cli("roster", "list", "--json").json()[0]["name"] == "Ana"


def test_roster_import_instructors_column(cli: Cli, tmp_path: Path) -> None:
    text = (
        "email,name,cohort,instructors\n"
        "ana@student.test,Ana Silva,demo,Extra@School.test;second@school.test\n"
        "bo@student.test,Bo Chen,evening,night@school.test\n"
        "cy@student.test,Cy Park,demo,\n"
    )
    roster = write_csv(tmp_path, text)

    result = cli("roster", "import", str(roster))

    assert result.code == 0, result.err
    assert "3 added, 0 updated" in result.out
    by_email = {s["email"]: s for s in cli("roster", "list", "--json").json()}
    demo = f"extra@school.test, {CONFIG_INSTRUCTOR}, second@school.test"
    assert by_email["ana@student.test"]["instructors"] == demo
    assert by_email["cy@student.test"]["instructors"] == demo
    assert by_email["bo@student.test"]["instructors"] == "night@school.test"


def test_roster_import_second_run_updates(cli: Cli, tmp_path: Path) -> None:
    first = write_csv(
        tmp_path,
        "email,name,cohort\nana@student.test,Ana,demo\nbo@student.test,Bo,demo\n",
        "first.csv",
    )
    second = write_csv(
        tmp_path,
        "email,name,cohort\nana@student.test,Ana Silva,evening\ncy@student.test,Cy,demo\n",
        "second.csv",
    )
    assert cli("roster", "import", str(first)).code == 0

    result = cli("roster", "import", str(second))

    assert result.code == 0, result.err
    assert "1 added, 1 updated" in result.out
    by_email = {s["email"]: s for s in cli("roster", "list", "--json").json()}
    assert sorted(by_email) == [
        "ana@student.test",
        "bo@student.test",
        "cy@student.test",
    ]
    assert by_email["ana@student.test"]["name"] == "Ana Silva"
    assert by_email["ana@student.test"]["cohort"] == "evening"


def test_roster_import_same_file_twice(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(tmp_path, "email,name,cohort\nana@student.test,Ana,demo\n")
    assert cli("roster", "import", str(roster)).code == 0

    result = cli("roster", "import", str(roster))

    assert result.code == 0
    assert "0 added, 1 updated" in result.out
    assert len(cli("roster", "list", "--json").json()) == 1


# -- roster import: bad files ------------------------------------------------------

GOOD_ROW = "good@student.test,Good Row,demo\n"
BAD_ROWS = [
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "not-an-email,Bob,demo\n",
        "line 3",
        "'not-an-email'",
        id="invalid-email",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "GOOD@student.test,Good Twin,demo\n",
        "line 3",
        "good@student.test",
        id="duplicate-email",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "ana@student.test,,demo\n",
        "line 3",
        "invalid name ''",
        id="empty-name",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "ana@student.test,Ana\x07Silva,demo\n",
        "line 3",
        repr("Ana\x07Silva"),
        id="bell-in-name",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + 'ana@student.test,"Ana\rSilva",demo\n',
        "line 3",
        repr("Ana\rSilva"),
        id="cr-in-name",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + 'ana@student.test,"Ana\nSilva",demo\n',
        "line 3",
        repr("Ana\nSilva"),
        id="lf-in-name",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "ana@student.test,Ana,demo group\n",
        "line 3",
        "'demo group'",
        id="invalid-cohort",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "ana@student.test,Ana,\n",
        "line 3",
        "invalid cohort ''",
        id="empty-cohort",
    ),
    pytest.param(
        "email,name,cohort,instructors\n"
        "good@student.test,Good Row,demo,\n"
        "ana@student.test,Ana,demo,teacher-at-school\n",
        "line 3",
        "'teacher-at-school'",
        id="invalid-instructor",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "\n\nnot-an-email,Bob,demo\n",
        "line 5",
        "'not-an-email'",
        id="blank-lines-before-bad-row",
    ),
    pytest.param(
        "email,name,cohort\n" + GOOD_ROW + "ana@student.test,Silva, Ana,demo\n",
        "line 3",
        "Silva",
        id="extra-field",
    ),
]


@pytest.mark.parametrize(("text", "line", "value"), BAD_ROWS)
def test_roster_import_bad_row(
    cli: Cli, tmp_path: Path, text: str, line: str, value: str
) -> None:
    roster = write_csv(tmp_path, text)

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert line in result.err
    assert value in result.err
    assert "nothing imported" in result.err
    assert cli("roster", "list", "--json").json() == []


def test_roster_import_lists_every_bad_row(cli: Cli, tmp_path: Path) -> None:
    text = "email,name,cohort\nnot-an-email,Bob,demo\n" + GOOD_ROW + "cy@x.test,,demo\n"
    roster = write_csv(tmp_path, text)

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert "2 invalid rows" in result.err
    assert "line 2: invalid email 'not-an-email'" in result.err
    assert "line 4: invalid name ''" in result.err


def test_roster_import_missing_columns(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(tmp_path, "email,name\nana@student.test,Ana\n")

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert str(roster) in result.err
    assert "first line" in result.err
    assert "missing cohort" in result.err
    assert cli("roster", "list", "--json").json() == []


def test_roster_import_empty_file(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(tmp_path, "")

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert str(roster) in result.err
    assert "email,name,cohort" in result.err
    assert cli("roster", "list", "--json").json() == []


def test_roster_import_header_only(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(tmp_path, "email,name,cohort\n\n")

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert "no students found" in result.err


def test_roster_import_missing_file(cli: Cli, tmp_path: Path) -> None:
    roster = tmp_path / "absent.csv"

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert str(roster) in result.err
    assert "not found" in result.err
    assert cli("roster", "list", "--json").json() == []


def test_roster_import_not_utf8(cli: Cli, tmp_path: Path) -> None:
    roster = tmp_path / "latin1.csv"
    roster.write_bytes(
        "email,name,cohort\nana@student.test,Inês,demo\n".encode("latin-1")
    )

    result = cli("roster", "import", str(roster))

    assert result.code == 2
    assert "UTF-8" in result.err
    assert cli("roster", "list", "--json").json() == []


# -- roster list and scenarios list ---------------------------------------------


def test_roster_list_empty_json(cli: Cli) -> None:
    result = cli("roster", "list", "--json")

    assert result.code == 0
    assert result.json() == []


def test_roster_list_table(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(tmp_path, "email,name,cohort\nana@x.test,Ana,demo\n")
    assert cli("roster", "import", str(roster)).code == 0

    result = cli("roster", "list")

    assert result.code == 0
    assert "Students" in result.out
    assert "ana@x.test" in result.out


def test_scenarios_list_json(cli: Cli) -> None:
    result = cli("scenarios", "list", "--json")

    assert result.code == 0
    scenarios = result.json()
    assert sorted(s["number"] for s in scenarios) == list(range(1, 12))
    assert {s["id"] for s in scenarios} == SHIPPED_SCENARIOS
    for scenario in scenarios:
        assert scenario["counterpart"].endswith("@peb-mail.test>")


# -- attempts --------------------------------------------------------------------


def test_attempts_list_empty(cli: Cli) -> None:
    assert cli("attempts", "list", "--json").json() == []
    table = cli("attempts", "list")
    assert table.code == 0
    assert "Attempts" in table.out


def test_attempts_show_empty_database(cli: Cli) -> None:
    result = cli("attempts", "show", "1")

    assert result.code == 2
    assert "attempt 1 not found" in result.err


def test_attempts_list_one_attempt(cli: Cli, database: Path) -> None:
    attempt_id = asyncio.run(add_attempt(database))

    result = cli("attempts", "list", "--json")

    assert result.code == 0
    [row] = result.json()
    assert row["id"] == attempt_id
    assert row["email"] == "ana@student.test"
    assert row["scenario_id"] == "correct-error-in-report"
    assert row["state"] == "open"
    assert row["created"] == "2023-11-14 22:13"
    assert row["graded"] == ""


def test_attempts_list_by_student(cli: Cli, database: Path) -> None:
    asyncio.run(add_attempt(database))

    assert (
        len(cli("attempts", "list", "--student", "ANA@student.test", "--json").json())
        == 1
    )
    unknown = cli("attempts", "list", "--student", "zed@student.test")
    assert unknown.code == 2
    assert "zed@student.test" in unknown.err


def test_attempts_show_json(cli: Cli, database: Path) -> None:
    attempt_id = asyncio.run(add_attempt(database))
    asyncio.run(add_dead_email(database, attempt_id))

    result = cli("attempts", "show", str(attempt_id), "--json")

    assert result.code == 0
    data = result.json()
    assert data["id"] == attempt_id
    assert data["student"] == "ana@student.test"
    assert data["scenario"] == "correct-error-in-report"
    assert data["state"] == "open"
    assert data["verdict"] is None
    assert data["attachments"] == []
    assert [e["kind"] for e in data["emails"]] == ["feedback"]
    assert data["emails"][0]["to"] == ["ana@student.test"]


def test_attempts_show_table(cli: Cli, database: Path) -> None:
    attempt_id = asyncio.run(add_attempt(database))

    result = cli("attempts", "show", str(attempt_id))

    assert result.code == 0
    assert "correct-error-in-report" in result.out
    assert "ana@student.test" in result.out


def test_attempts_show_unknown_id(cli: Cli, database: Path) -> None:
    asyncio.run(add_attempt(database))

    result = cli("attempts", "show", "999")

    assert result.code == 2
    assert "999" in result.err
    assert "Traceback" not in result.err


def test_attempts_show_unknown_says_not_found(cli: Cli) -> None:
    assert "not found" in cli("attempts", "show", "999").err


# -- outbox ------------------------------------------------------------------------


def test_outbox_list_empty_json(cli: Cli) -> None:
    result = cli("outbox", "list", "--json")

    assert result.code == 0
    assert result.json() == []


def test_outbox_list_dead_email(cli: Cli, database: Path) -> None:
    asyncio.run(add_dead_email(database))

    [row] = cli("outbox", "list", "--json").json()

    assert row["state"] == "dead"
    assert row["kind"] == "feedback"
    assert row["to"] == "ana@student.test"
    assert row["last_error"] == "550 mailbox unavailable"
    assert cli("outbox", "list", "--state", "pending", "--json").json() == []


def test_outbox_retry_without_ids(cli: Cli, database: Path) -> None:
    asyncio.run(add_dead_email(database))

    result = cli("outbox", "retry")

    assert result.code == 2
    assert "ids" in result.err
    assert "--all" in result.err
    assert cli("outbox", "list", "--json").json()[0]["state"] == "dead"


def test_outbox_retry_all_revives_dead(cli: Cli, database: Path) -> None:
    asyncio.run(add_dead_email(database))

    result = cli("outbox", "retry", "--all")

    assert result.code == 0
    assert "1 dead email queued again" in result.out
    [row] = cli("outbox", "list", "--json").json()
    assert row["state"] == "pending"
    assert row["tries"] == 0


def test_outbox_retry_by_id(cli: Cli, database: Path) -> None:
    asyncio.run(add_dead_email(database))
    [row] = cli("outbox", "list", "--json").json()

    result = cli("outbox", "retry", str(row["id"]))

    assert result.code == 0
    assert cli("outbox", "list", "--json").json()[0]["state"] == "pending"


def test_outbox_retry_unknown_id(cli: Cli, database: Path) -> None:
    asyncio.run(add_dead_email(database))

    result = cli("outbox", "retry", "999")

    assert result.code == 2
    assert "outbox 999 not found" in result.err
    assert cli("outbox", "list", "--json").json()[0]["state"] == "dead"


def test_outbox_retry_sent_email_rejected(cli: Cli, database: Path) -> None:
    asyncio.run(add_dead_email(database))
    assert cli("outbox", "retry", "1").code == 0

    result = cli("outbox", "retry", "1")

    assert result.code == 2
    assert "outbox 1 is pending, not dead" in result.err


def test_outbox_retry_ids_and_all(cli: Cli) -> None:
    result = cli("outbox", "retry", "1", "--all")

    assert result.code == 2
    assert "not both" in result.err


# -- inbound and stats ------------------------------------------------------------


def test_inbound_list_empty_json(cli: Cli) -> None:
    result = cli("inbound", "list", "--json")

    assert result.code == 0
    assert result.json() == []


def test_inbound_list_one_message(cli: Cli, database: Path) -> None:
    asyncio.run(add_inbound(database))

    [row] = cli("inbound", "list", "--json").json()

    assert row["mail_from"] == "ana@student.test"
    assert row["state"] == "received"
    assert row["received"] == "2023-11-14 22:13"
    assert row["size"] == len(b"Subject: HELP\r\n\r\nhelp\r\n")
    assert cli("inbound", "list", "--state", "processed", "--json").json() == []


def test_stats_empty_json(cli: Cli) -> None:
    result = cli("stats", "--json")

    assert result.code == 0
    assert result.json() == {
        "inbound": {},
        "attempts": {},
        "jobs": {},
        "outbox": {},
        "students": {"enrolled": 0},
    }


def test_stats_counts_states(cli: Cli, database: Path) -> None:
    asyncio.run(add_attempt(database))
    asyncio.run(add_dead_email(database))
    asyncio.run(add_inbound(database))

    counts = cli("stats", "--json").json()

    assert counts["students"] == {"enrolled": 1}
    assert counts["attempts"] == {"open": 1}
    assert counts["outbox"] == {"dead": 1}
    assert counts["inbound"] == {"received": 1}


def test_stats_table(cli: Cli) -> None:
    result = cli("stats")

    assert result.code == 0
    assert "enrolled" in result.out


# -- config errors -------------------------------------------------------------------


def test_config_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "config.toml"

    result = run_main(capsys, "stats", "--config", str(missing))

    assert result.code == 2
    assert str(missing) in result.err
    assert "not found" in result.err
    assert "--config PATH" in result.err


def test_config_missing_init_advice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "config.toml"

    result = run_main(capsys, "init", "--config", str(missing))

    assert result.code == 2
    assert "copy config.toml" in result.err
    assert "peb-mail init" not in result.err


def test_config_from_environment(
    capsys: pytest.CaptureFixture[str],
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PEB_MAIL_CONFIG", str(config_path))
    assert run_main(capsys, "init").code == 0

    result = run_main(capsys, "stats", "--json")

    assert result.code == 0
    assert result.json()["students"] == {"enrolled": 0}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"grader": {"kind": "magic"}}, "grader.kind", id="bad-value"),
        pytest.param({"listener": {"prot": 25}}, "listener.prot", id="unknown-key"),
        pytest.param({"extras": {"enabled": True}}, "[extras]", id="unknown-section"),
        pytest.param({"queue": {"workers": "two"}}, "queue.workers", id="wrong-type"),
        pytest.param(
            {"cohorts.demo": {"instructors": "teacher"}},
            "cohorts.demo.instructors",
            id="bad-cohort",
        ),
    ],
)
def test_config_invalid_value(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    overrides: dict[str, dict[str, Any]],
    named: str,
) -> None:
    path = write_config(tmp_path, **overrides)

    result = run_main(capsys, "stats", "--config", str(path))

    assert result.code == 2
    assert named in result.err
    assert str(path) in result.err


def test_config_invalid_toml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[service\ndomain = 'x'\n", encoding="utf-8")

    result = run_main(capsys, "stats", "--config", str(path))

    assert result.code == 2
    assert "invalid TOML" in result.err


# -- help ----------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


@pytest.mark.parametrize(
    ("group", "actions"),
    [
        ("roster", ["import", "list"]),
        ("scenarios", ["list"]),
        ("attempts", ["list", "show"]),
        ("outbox", ["list", "retry"]),
        ("inbound", ["list"]),
    ],
)
def test_help_lists_group_actions(
    capsys: pytest.CaptureFixture[str], group: str, actions: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([group, "--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for action in actions:
        assert re.search(rf"^\s+{action}\s", out, re.MULTILINE), action


def test_no_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])

    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# -- python -m peb_mail ---------------------------------------------------------------


def run_module(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PEB_MAIL_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "peb_mail", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
def test_module_stats_exits_0(tmp_path: Path, config_path: Path) -> None:
    assert run_module(tmp_path, "init", "--config", str(config_path)).returncode == 0
    process = run_module(tmp_path, "stats", "--json", "--config", str(config_path))

    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["students"] == {"enrolled": 0}


@pytest.mark.slow
def test_module_unknown_attempt_exits_2(tmp_path: Path, config_path: Path) -> None:
    assert run_module(tmp_path, "init", "--config", str(config_path)).returncode == 0
    process = run_module(
        tmp_path, "attempts", "show", "999", "--config", str(config_path)
    )

    assert process.returncode == 2
    assert "999" in process.stderr
    assert "Traceback" not in process.stderr


# -- scenarios check and preview --------------------------------------------------


def test_scenarios_check_shipped_clean(cli: Cli) -> None:
    result = cli("scenarios", "check", "--json")

    assert result.code == 0
    assert result.json() == []


def test_scenarios_check_planted_gap(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "planted"
    folder.mkdir()
    source = (REPO / "scenarios" / "correct-error-in-report.toml").read_text()
    (folder / "gap.toml").write_text(
        source.replace("q1_regional_sales_corrected.csv", "missing.csv")
    )

    result = cli("scenarios", "check", "--dir", str(folder))

    assert result.code == 1
    assert "error" in result.out
    assert "missing.csv" in result.out


def test_scenarios_preview_by_number(cli: Cli) -> None:
    result = cli("scenarios", "preview", "2", "--name", "Li Wei")

    assert result.code == 0
    assert "Subject: Scenario 2:" in result.out
    assert "Hello Li," in result.out
    assert "Reply-To: practice@peb-mail.test" in result.out


def test_scenarios_preview_writes_eml(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "scenarios", "preview", "clarify-vague-task", "--eml-dir", str(tmp_path / "eml")
    )

    assert result.code == 0
    assert sorted(p.name for p in (tmp_path / "eml").iterdir()) == [
        "clarify-vague-task-1.eml",
        "clarify-vague-task-2.eml",
    ]


def test_scenarios_preview_unknown(cli: Cli) -> None:
    result = cli("scenarios", "preview", "no-such-thing")

    assert result.code == 2
    assert "no-such-thing" in result.err


# -- extract, replay, quarantine --------------------------------------------------


def test_extract_full_message(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "reply.eml"
    path.write_bytes(
        b"From: Ana <ana@student.test>\r\nTo: x@peb-mail.test\r\nSubject: Re: notes\r\n\r\n"
        b"Hi Priya,\r\n\r\nWho will read the notes?\r\n\r\nBest,\r\nAna\r\n\r\n"
        b"On Mon, 1 Dec 2026 at 09:00, Priya <p@x.test> wrote:\r\n> Please clean up the notes.\r\n"
    )

    result = cli("extract", str(path))

    assert result.code == 0
    assert "Who will read the notes?" in result.out
    assert "Please clean up" not in result.out


def test_extract_bare_body(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "body.txt"
    path.write_text("Thanks, I will do it today.\n\n> quoted history\n")

    result = cli("extract", str(path))

    assert result.code == 0
    assert result.out.strip() == "Thanks, I will do it today."


def test_replay_shows_decisions(cli: Cli, database: Path) -> None:
    asyncio.run(add_inbound(database))

    result = cli("replay", "1")

    # The stored message has no From header, so intake would quarantine it.
    assert result.code == 0
    assert "message 1: envelope from ana@student.test" in result.out
    assert "parse: failed, would quarantine" in result.out


def test_replay_unknown_message(cli: Cli) -> None:
    result = cli("replay", "<nothing@here>")

    assert result.code == 2
    assert "not found" in result.err


def test_quarantine_release_needs_quarantined(cli: Cli, database: Path) -> None:
    asyncio.run(add_inbound(database))

    result = cli("quarantine", "release", "1")

    assert result.code == 2
    assert "not quarantined" in result.err


def test_quarantine_list_empty(cli: Cli) -> None:
    result = cli("quarantine", "list", "--json")

    assert result.code == 0
    assert result.json() == []


# -- assign, grades, regrade, doctor ----------------------------------------------


def test_assign_cohort_starts_scenario(cli: Cli, tmp_path: Path) -> None:
    roster = write_csv(
        tmp_path,
        "email,name,cohort\nana@student.test,Ana,demo\nbo@student.test,Bo,demo\n",
    )
    assert cli("roster", "import", str(roster)).code == 0

    result = cli("assign", "--cohort", "demo", "--scenario", "2")
    again = cli("assign", "--cohort", "demo", "--scenario", "2")

    assert result.code == 0
    assert "started for 2 students" in result.out
    assert "Skipped 2 students" in again.out
    assert len(cli("attempts", "list", "--json").json()) == 2


def test_assign_unknown_cohort(cli: Cli) -> None:
    result = cli("assign", "--cohort", "nobody", "--scenario", "1")

    assert result.code == 2
    assert "nobody" in result.err


def test_grades_export_csv_header(cli: Cli) -> None:
    result = cli("grades", "export")

    assert result.code == 0
    assert result.out.splitlines()[0].startswith("email,name,cohort,scenario_id")


def test_regrade_open_attempt_rejected(cli: Cli, database: Path) -> None:
    attempt_id = asyncio.run(add_attempt(database))

    result = cli("regrade", str(attempt_id))

    assert result.code != 0
    assert str(attempt_id) in result.err


def test_doctor_reports_checks(cli: Cli) -> None:
    result = cli("doctor", "--json")

    checks = {row["check"]: row["ok"] for row in result.json()["checks"]}
    assert checks["database"] is True
    assert checks["templates"] is True
    assert any("MX" in line for line in result.json()["dns"])
