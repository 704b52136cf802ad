"""Admin operations: assign, grades export, regrade, doctor, DNS records, digest."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest

from peb_mail import store as sql
from peb_mail.admin import (
    GRADE_COLUMNS,
    AttemptStateError,
    assign,
    dns_records,
    doctor,
    grade_rows,
    grades_csv,
    regrade,
)
from peb_mail.admin import digest_rows as collect_digest
from peb_mail.compose import Composer
from peb_mail.config import Config
from peb_mail.errors import ConfigError, NotFoundError
from peb_mail.models import MAX_TOTAL, Scenario
from peb_mail.offline_grader import OfflineGrader
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Store
from peb_mail.tokens import SECRET_ENV, TokenSigner
from peb_mail.worker import GradingWorker

from .conftest import DOMAIN, STUDENT, Sink, make_config, smtp_outbox

BEN = "ben.okoro@student.test"
CARA = "cara.lind@student.test"
ANSWER = (
    "Dear Daniel,\n\nI made a mistake in the report: the March revenue for North "
    "is $14,200, not $12,400. I have corrected the file.\n\nBest regards,\nAna"
)
START_TIME = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START_TIME

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    config: Config
    store: Store
    clock: Clock
    scenarios: list[Scenario]
    signer: TokenSigner

    def scenario(self, number: int) -> Scenario:
        return self.scenarios[number - 1]

    def worker(self, scenarios: list[Scenario] | None = None) -> GradingWorker:
        return GradingWorker(
            store=self.store,
            composer=Composer(self.config),
            grader=OfflineGrader(),
            scenarios=self.scenarios if scenarios is None else scenarios,
            config=self.config,
            name="test-worker",
        )

    async def student_id(self, address: str) -> int:
        student = await self.store.student_by_email(address)
        assert student is not None
        return student.id

    async def submitted(self, address: str, scenario_id: str, body: str) -> int:
        """Create an attempt and submit ``body`` for it, as intake would."""
        student_id = await self.student_id(address)
        async with self.store.transaction() as db:
            attempt_id = await sql.create_attempt(
                db,
                student_id,
                scenario_id,
                lambda new_id: self.signer.token(student_id, new_id),
                self.clock.now,
            )
            await sql.submit_attempt(
                db,
                attempt_id,
                inbound_id=0,
                subject="Correction to the March report",
                body=body,
                attachments="[]",
                max_tries=self.config.queue.max_tries,
                now=self.clock.now,
            )
        return attempt_id

    async def graded(self, address: str, scenario_id: str, score: int) -> int:
        """Submit an attempt and store ``score`` as its grade, finishing its job."""
        attempt_id = await self.submitted(address, scenario_id, ANSWER)
        job = await self.store.claim_job("test-grader", 60.0)
        assert job is not None and job.attempt_id == attempt_id
        async with self.store.transaction() as db:
            assert await sql.complete_job(db, job.id, "test-grader", self.clock.now)
            await sql.set_attempt_graded(db, attempt_id, score, "{}", self.clock.now)
        return attempt_id

    async def kinds(self, attempt_id: int) -> list[str]:
        return [item.kind for item in await self.store.outbox_for_attempt(attempt_id)]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = make_config(tmp_path)
    clock = Clock()
    store = await Store.open(config.service.database, clock=clock)
    await store.upsert_students(
        [
            (STUDENT, "Ana Silva", "demo"),
            (BEN, "Ben Okoro", "demo"),
            (CARA, "Cara Lind", "evening"),
        ],
        {},
    )
    scenarios = load_scenarios(config.service.scenarios_dir)
    signer = TokenSigner([b"k" * 32])
    yield Env(config, store, clock, scenarios, signer)
    await store.close()


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# -- assign ------------------------------------------------------------------


async def test_assign_starts_whole_cohort(env: Env) -> None:
    progress: list[tuple[int, int]] = []
    result = await assign(
        env.store,
        env.config,
        env.scenarios,
        "demo",
        "2",
        env.signer,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    started = dict(result.started)
    assert sorted(started) == [STUDENT, BEN]
    assert result.skipped == []
    assert result.scenario.id == "clarify-vague-task"
    assert progress == [(1, 2), (2, 2)]
    assert await env.kinds(started[STUDENT]) == ["brief", "starter"]
    assert await env.kinds(started[BEN]) == ["brief", "starter"]
    attempts = await env.store.list_attempts()
    assert CARA not in {row["email"] for row in attempts}


async def test_assign_uses_signed_token(env: Env) -> None:
    result = await assign(
        env.store, env.config, env.scenarios, "demo", "clarify-vague-task", env.signer
    )
    email_address, attempt_id = result.started[0]
    attempt = await env.store.attempt(attempt_id)
    student_id = await env.student_id(email_address)
    assert attempt is not None
    assert attempt.state == "open"
    assert env.signer.verify(attempt.token, student_id, attempt_id)
    outbox = await env.store.outbox_for_attempt(attempt_id)
    starter = parsed(outbox[1].raw)
    assert starter["From"].addresses[0].addr_spec == (
        f"priya.natarajan+{attempt.token}@{DOMAIN}"
    )
    assert outbox[0].rcpt_tos == (email_address,)


async def test_assign_skips_open_attempts(env: Env) -> None:
    first = await assign(env.store, env.config, env.scenarios, "demo", "1", env.signer)
    second = await assign(env.store, env.config, env.scenarios, "demo", "1", env.signer)
    assert len(first.started) == 2
    assert second.started == []
    assert second.skipped == [STUDENT, BEN]
    assert len(await env.store.list_attempts()) == 2


async def test_assign_skips_finished_students(env: Env) -> None:
    await env.graded(STUDENT, "correct-error-in-report", 25)
    result = await assign(env.store, env.config, env.scenarios, "demo", "1", env.signer)
    assert [email for email, _ in result.started] == [BEN]
    assert result.skipped == [STUDENT]


async def test_assign_again_restarts_after_grading(env: Env) -> None:
    await env.graded(STUDENT, "correct-error-in-report", 25)
    result = await assign(
        env.store, env.config, env.scenarios, "demo", "1", env.signer, again=True
    )
    assert sorted(email for email, _ in result.started) == [STUDENT, BEN]


async def test_assign_other_scenario_open(env: Env) -> None:
    await assign(env.store, env.config, env.scenarios, "demo", "1", env.signer)
    result = await assign(env.store, env.config, env.scenarios, "demo", "2", env.signer)
    assert len(result.started) == 2


async def test_assign_unknown_cohort(env: Env) -> None:
    with pytest.raises(NotFoundError) as caught:
        await assign(env.store, env.config, env.scenarios, "nope", "1", env.signer)
    message = str(caught.value)
    assert '"nope"' in message
    assert "demo, evening" in message
    assert "peb-mail roster list" in message
    assert await env.store.list_attempts() == []


async def test_assign_unknown_scenario(env: Env) -> None:
    with pytest.raises(NotFoundError) as caught:
        await assign(env.store, env.config, env.scenarios, "demo", "99", env.signer)
    assert '"99"' in str(caught.value)
    assert "peb-mail scenarios list" in str(caught.value)


# -- grades ------------------------------------------------------------------


async def test_grades_csv_best_and_latest(env: Env) -> None:
    await env.graded(STUDENT, "correct-error-in-report", 30)
    env.clock.now += 3600
    await env.graded(STUDENT, "correct-error-in-report", 20)
    text = grades_csv(await grade_rows(env.store, env.scenarios))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    assert reader.fieldnames == list(GRADE_COLUMNS)
    assert len(rows) == 1
    row = rows[0]
    assert row["email"] == STUDENT
    assert row["name"] == "Ana Silva"
    assert row["cohort"] == "demo"
    assert row["scenario_id"] == "correct-error-in-report"
    assert row["attempts"] == "2"
    assert row["best_score"] == "30"
    assert row["latest_score"] == "20"
    assert row["max_score"] == str(MAX_TOTAL)
    assert row["best_percent"] == "85.7"
    assert row["latest_graded_at"] == "2027-01-15T09:00:00Z"


async def test_grade_rows_order_and_omission(env: Env) -> None:
    await env.graded(CARA, "clarify-vague-task", 20)
    await env.graded(STUDENT, "clarify-vague-task", 21)
    await env.graded(STUDENT, "correct-error-in-report", 22)
    rows = await grade_rows(env.store, env.scenarios)
    keys = [(row["cohort"], row["email"], row["scenario_id"]) for row in rows]
    assert keys == [
        ("demo", STUDENT, "correct-error-in-report"),
        ("demo", STUDENT, "clarify-vague-task"),
        ("evening", CARA, "clarify-vague-task"),
    ]


async def test_grade_rows_ungraded_attempt(env: Env) -> None:
    await assign(env.store, env.config, env.scenarios, "evening", "1", env.signer)
    [row] = await grade_rows(env.store, env.scenarios)
    assert row["attempts"] == 1
    assert row["best_score"] is None
    assert row["latest_graded_at"] is None
    line = grades_csv([row]).splitlines()[1]
    assert line.endswith(",1,,,35,,")


async def test_grades_csv_quotes_commas(env: Env) -> None:
    row = {column: "" for column in GRADE_COLUMNS}
    row["name"] = 'Silva, Ana "Nita"'
    [parsed_row] = list(csv.DictReader(io.StringIO(grades_csv([row]), newline="")))
    assert parsed_row["name"] == 'Silva, Ana "Nita"'


# -- regrade -----------------------------------------------------------------


async def test_regrade_sends_second_feedback(env: Env) -> None:
    attempt_id = await env.submitted(STUDENT, "correct-error-in-report", ANSWER)
    worker = env.worker()
    assert await worker.run_once()
    assert await env.kinds(attempt_id) == ["feedback", "summary"]
    env.clock.now += 60
    await regrade(env.store, attempt_id)
    [job] = await env.store.list_jobs()
    attempt = await env.store.attempt(attempt_id)
    assert job.state == "queued"
    assert job.tries == 0
    assert attempt is not None and attempt.state == "submitted"
    assert await env.store.next_job_due_at() == env.clock.now
    assert await worker.run_once()
    attempt = await env.store.attempt(attempt_id)
    assert attempt is not None and attempt.state == "graded"
    assert attempt.graded_at == env.clock.now
    assert (await env.kinds(attempt_id)).count("feedback") == 2


async def test_regrade_failed_attempt(env: Env) -> None:
    attempt_id = await env.submitted(STUDENT, "correct-error-in-report", ANSWER)
    # A worker without the scenario gives up at once: "scenario not found".
    assert await env.worker(scenarios=[]).run_once()
    failed = await env.store.attempt(attempt_id)
    assert failed is not None and failed.state == "failed"
    await regrade(env.store, attempt_id)
    assert await env.worker().run_once()
    [job] = await env.store.list_jobs()
    attempt = await env.store.attempt(attempt_id)
    assert job.state == "done"
    assert job.tries == 1
    assert attempt is not None and attempt.state == "graded"
    assert "feedback" in await env.kinds(attempt_id)


async def test_regrade_unknown_attempt(env: Env) -> None:
    with pytest.raises(NotFoundError, match="no attempt 42"):
        await regrade(env.store, 42)


async def test_regrade_open_attempt(env: Env) -> None:
    result = await assign(
        env.store, env.config, env.scenarios, "evening", "1", env.signer
    )
    [(_, attempt_id)] = result.started
    with pytest.raises(AttemptStateError, match="nothing to grade"):
        await regrade(env.store, attempt_id)


async def test_regrade_already_queued(env: Env) -> None:
    attempt_id = await env.submitted(STUDENT, "correct-error-in-report", ANSWER)
    with pytest.raises(AttemptStateError, match="already waiting"):
        await regrade(env.store, attempt_id)


# -- doctor ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Create the secret file with mode 600 and unset $PEB_MAIL_SECRET."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    secret = tmp_path / "data" / "secret.key"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("s" * 40 + "\n", encoding="utf-8")
    secret.chmod(0o600)
    return tmp_path


async def create_database(config: Config) -> None:
    store = await Store.open(config.service.database)
    await store.close()


def by_name(checks: list) -> dict:  # type: ignore[type-arg]
    return {check.name: check for check in checks}


def doctor_config(tmp_path: Path, **sections: dict) -> Config:  # type: ignore[type-arg]
    service = {"secret_file": str(tmp_path / "data" / "secret.key")}
    service.update(sections.pop("service", {}))
    return make_config(tmp_path, service=service, **sections)


async def test_doctor_all_checks_pass(ready: Path) -> None:
    config = doctor_config(ready)
    await create_database(config)
    checks = await doctor(config)
    names = [check.name for check in checks]
    assert names == [
        "config",
        "database",
        "templates",
        "scenarios",
        "secret",
        "maildir",
    ]
    failed = [check for check in checks if not check.ok]
    assert failed == []


async def test_doctor_missing_database(ready: Path) -> None:
    config = doctor_config(ready)
    check = by_name(await doctor(config))["database"]
    assert not check.ok
    assert "peb-mail init" in check.detail
    assert not config.service.database.exists()


async def test_doctor_old_schema_untouched(ready: Path) -> None:
    config = doctor_config(ready)
    config.service.database.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(config.service.database)
    connection.execute("create table students (id integer primary key, email text)")
    connection.commit()
    connection.close()
    check = by_name(await doctor(config))["database"]
    assert not check.ok
    assert "table jobs missing" in check.detail
    assert "table students lacks cohort" in check.detail
    connection = sqlite3.connect(config.service.database)
    tables = connection.execute("select name from sqlite_master").fetchall()
    connection.close()
    assert tables == [("students",)]


async def test_doctor_secret_readable_by_group(ready: Path) -> None:
    config = doctor_config(ready)
    config.service.secret_file.chmod(0o640)
    check = by_name(await doctor(config))["secret"]
    assert not check.ok
    assert "chmod 600" in check.detail


async def test_doctor_secret_missing(ready: Path) -> None:
    config = doctor_config(ready)
    config.service.secret_file.unlink()
    check = by_name(await doctor(config))["secret"]
    assert not check.ok
    assert SECRET_ENV in check.detail
    assert not config.service.secret_file.exists()


async def test_doctor_secret_from_env(
    ready: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = doctor_config(ready)
    config.service.secret_file.unlink()
    monkeypatch.setenv(SECRET_ENV, "e" * 32)
    check = by_name(await doctor(config))["secret"]
    assert check.ok
    assert SECRET_ENV in check.detail


async def test_doctor_secret_short_key(
    ready: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "short")
    check = by_name(await doctor(doctor_config(ready)))["secret"]
    assert not check.ok
    assert "at least 32 characters" in check.detail


async def test_doctor_scenario_errors(ready: Path) -> None:
    folder = ready / "scenarios"
    folder.mkdir()
    (folder / "broken.toml").write_text('id = "broken"\n', encoding="utf-8")
    config = doctor_config(ready, service={"scenarios_dir": str(folder)})
    check = by_name(await doctor(config))["scenarios"]
    assert not check.ok
    assert "broken.toml" in check.detail


async def test_doctor_smarthost_answers(ready: Path, sink: Sink) -> None:
    config = doctor_config(ready, outbox=smtp_outbox(sink))
    checks = by_name(await doctor(config))
    assert "maildir" not in checks
    assert checks["smarthost"].ok
    assert f"127.0.0.1:{sink.port} answered EHLO" in checks["smarthost"].detail
    assert sink.received == []


async def test_doctor_smarthost_closed_port(ready: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    outbox = {
        "transport": "smtp",
        "smarthost_host": "127.0.0.1",
        "smarthost_port": closed_port,
    }
    config = doctor_config(ready, outbox=outbox)
    started = time.monotonic()
    check = by_name(await doctor(config, smtp_timeout_s=2.0))["smarthost"]
    assert not check.ok
    assert f"127.0.0.1:{closed_port}" in check.detail
    assert time.monotonic() - started < 5.0


async def test_doctor_smarthost_without_starttls(ready: Path, sink: Sink) -> None:
    config = doctor_config(ready, outbox={**smtp_outbox(sink), "starttls": True})
    check = by_name(await doctor(config))["smarthost"]
    assert not check.ok
    assert "STARTTLS" in check.detail


async def test_doctor_smarthost_password_unset(
    ready: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PEB_TEST_SMTP_PASSWORD", raising=False)
    outbox = {
        **smtp_outbox(sink),
        "username": "peb",
        "password_env": "PEB_TEST_SMTP_PASSWORD",
    }
    check = by_name(await doctor(doctor_config(ready, outbox=outbox)))["smarthost"]
    assert not check.ok
    assert "$PEB_TEST_SMTP_PASSWORD" in check.detail


async def test_doctor_maildir_under_file(ready: Path) -> None:
    blocker = ready / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    outbox = {"maildir": str(blocker / "sent")}
    check = by_name(await doctor(doctor_config(ready, outbox=outbox)))["maildir"]
    assert not check.ok
    assert "not a writable folder" in check.detail


async def test_doctor_maildir_existing(ready: Path) -> None:
    maildir = ready / "sent"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    check = by_name(await doctor(doctor_config(ready)))["maildir"]
    assert check.ok
    assert "is writable" in check.detail
    assert sorted(os.listdir(maildir / "tmp")) == []


async def test_doctor_llm_key(ready: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grader = {
        "kind": "llm",
        "model": "openai/gpt-4o-mini",
        "api_key_env": "PEB_TEST_LLM_KEY",
    }
    config = doctor_config(ready, grader=grader)
    monkeypatch.delenv("PEB_TEST_LLM_KEY", raising=False)
    missing = by_name(await doctor(config))["llm api key"]
    monkeypatch.setenv("PEB_TEST_LLM_KEY", "sk-test")
    present = by_name(await doctor(config))["llm api key"]
    assert not missing.ok
    assert "$PEB_TEST_LLM_KEY" in missing.detail
    assert present.ok


async def test_doctor_dkim_key(ready: Path, dkim_key_file: Path) -> None:
    outbox = {"dkim_selector": "sel", "dkim_key_file": str(dkim_key_file)}
    check = by_name(await doctor(doctor_config(ready, outbox=outbox)))["dkim key"]
    assert check.ok


async def test_doctor_dkim_key_not_rsa(ready: Path) -> None:
    bad_key = ready / "bad.pem"
    bad_key.write_text("not a key\n", encoding="utf-8")
    outbox = {"dkim_selector": "sel", "dkim_key_file": str(bad_key)}
    check = by_name(await doctor(doctor_config(ready, outbox=outbox)))["dkim key"]
    assert not check.ok
    assert "openssl could not read the key" in check.detail


# -- DNS records --------------------------------------------------------------


def txt_data(line: str) -> bytes:
    """Join the quoted strings of a TXT record line, as a resolver returns them."""
    quoted = line.split(" IN TXT ", 1)[1]
    parts = [part for part in quoted.split('"') if part.strip()]
    return "".join(parts).encode("ascii")


def test_dns_records_dkim_verifies(tmp_path: Path, dkim_key_file: Path) -> None:
    outbox = {"dkim_selector": "sel", "dkim_key_file": str(dkim_key_file)}
    lines = dns_records(make_config(tmp_path, outbox=outbox))
    [record] = [line for line in lines if line.startswith("sel._domainkey.")]
    quoted = record.split(" IN TXT ", 1)[1].split('" "')
    message = (
        b"From: practice@peb-mail.test\r\nTo: ana@student.test\r\n"
        b"Subject: test\r\n\r\nHello.\r\n"
    )
    signature = dkim.sign(message, b"sel", DOMAIN.encode(), dkim_key_file.read_bytes())

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        if name == f"sel._domainkey.{DOMAIN}.".encode():
            return txt_data(record)
        return None

    assert record.startswith(f"sel._domainkey.{DOMAIN}. IN TXT ")
    assert all(len(part.strip('"')) <= 255 for part in quoted)
    assert len(quoted) > 1
    assert dkim.verify(signature + message, dnsfunc=lookup)


def test_dns_records_mx_spf_dmarc(tmp_path: Path) -> None:
    records = [
        line for line in dns_records(make_config(tmp_path)) if not line[0] == ";"
    ]
    assert records == [
        f"{DOMAIN}. IN MX 10 mail.{DOMAIN}.",
        f'{DOMAIN}. IN TXT "v=spf1 mx ~all"',
        f'_dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=none; adkim=r; aspf=r"',
    ]


def test_dns_records_smarthost_name(tmp_path: Path) -> None:
    # Only formatted: dns_records makes no connection and no DNS lookup.
    outbox = {"transport": "smtp", "smarthost_host": f"relay.{DOMAIN}"}
    lines = dns_records(make_config(tmp_path, outbox=outbox))
    assert f'{DOMAIN}. IN TXT "v=spf1 a:relay.{DOMAIN} ~all"' in lines


def test_dns_records_missing_key(tmp_path: Path) -> None:
    outbox = {"dkim_selector": "sel", "dkim_key_file": str(tmp_path / "none.pem")}
    with pytest.raises(ConfigError, match="none.pem not found"):
        dns_records(make_config(tmp_path, outbox=outbox))


# -- digest ------------------------------------------------------------------


async def test_digest_scores_and_gaps(env: Env) -> None:
    await env.graded(STUDENT, "correct-error-in-report", 30)
    await env.graded(STUDENT, "correct-error-in-report", 20)
    failed_id = await env.submitted(STUDENT, "clarify-vague-task", ANSWER)
    assert await env.worker(scenarios=[]).run_once()
    digest = await collect_digest(env.store, env.scenarios, "demo")
    ana, ben = digest["students"]
    cells = {cell["scenario_id"]: cell for cell in ana["scenarios"]}
    assert digest["cohort"] == "demo"
    assert digest["max_score"] == MAX_TOTAL
    assert len(digest["scenarios"]) == len(env.scenarios)
    assert ana["email"] == STUDENT
    assert cells["correct-error-in-report"]["best_score"] == 30
    assert cells["correct-error-in-report"]["attempts"] == 2
    assert cells["clarify-vague-task"]["state"] == "failed"
    assert cells["clarify-vague-task"]["best_score"] is None
    assert cells["reschedule-client-call"]["attempts"] == 0
    assert digest["not_started"] == [{"email": BEN, "name": "Ben Okoro"}]
    [failure] = digest["failed"]
    assert failure["attempt_id"] == failed_id
    assert failure["scenario_title"] == env.scenario(2).title
    assert failure["error"] == "scenario not found"
    assert failure["failed_at"] == "2027-01-15T08:00:00Z"


async def test_digest_unknown_cohort(env: Env) -> None:
    with pytest.raises(NotFoundError, match='"nope"'):
        await collect_digest(env.store, env.scenarios, "nope")
