"""Crash recovery with real processes: kill -9 between the 250 and the grade."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import pytest

from .conftest import REPO, SERVICE, STUDENT, Sink, address_in
from .model_server import ModelServer, ScriptedReply

pytestmark = pytest.mark.slow


def write_config(path: Path, tmp_path: Path, sink: Sink, grader: str) -> None:
    path.write_text(
        f"""
[service]
domain = "peb-mail.test"
data_dir = "{tmp_path}/data"
database = "{tmp_path}/data/peb.sqlite3"
scenarios_dir = "{REPO}/scenarios"
prompts_dir = "{REPO}/prompts"

[listener]
host = "127.0.0.1"
port = 0
port_file = "{tmp_path}/data/port"

[queue]
workers = 1
lease_s = 2.0
poll_interval_s = 0.1
backoff_base_s = 0.1

{grader}

[outbox]
transport = "smtp"
smarthost_host = "127.0.0.1"
smarthost_port = {sink.port}
poll_interval_s = 0.1
backoff_base_s = 0.1

[cohorts.demo]
instructors = ["teacher@school.test"]
""",
        encoding="utf-8",
    )


async def start_serve(
    config: Path, port_file: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port_file.unlink(missing_ok=True)
    env = {**os.environ, "PEB_MAIL_LLM_API_KEY": "test-key"}
    process = subprocess.Popen(
        [sys.executable, "-m", "peb_mail", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None:
            raise AssertionError(
                f"serve exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("serve did not start listening within 20 s")
        await asyncio.sleep(0.05)
    return process, int(port_file.read_text())


def message(subject: str, body: str, to: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"Ana Silva <{STUDENT}>"
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="student.test")
    mail.set_content(body)
    return mail


async def test_kill_before_grading_answers_once(tmp_path: Path, sink: Sink) -> None:
    config = tmp_path / "config.toml"
    port_file = tmp_path / "data" / "port"
    async with ModelServer() as model:
        # The first grading call stalls, so the job is leased but not graded
        # when the process is killed.
        model.push(ScriptedReply(delay_s=60))
        llm = f'[grader]\nkind = "llm"\nmodel = "openai/test-model"\napi_base = "{model.api_base}"\ntimeout_s = 120'
        write_config(config, tmp_path, sink, llm)
        roster = tmp_path / "roster.csv"
        roster.write_text(f"email,name,cohort\n{STUDENT},Ana Silva,demo\n")
        imported = subprocess.run(
            [
                sys.executable,
                "-m",
                "peb_mail",
                "roster",
                "import",
                str(roster),
                "--config",
                str(config),
            ],
            capture_output=True,
        )
        assert imported.returncode == 0, imported.stderr

        process, port = await start_serve(config, port_file)
        try:
            await aiosmtplib.send(
                message("START 1", "", SERVICE), hostname="127.0.0.1", port=port
            )
            [brief] = await sink.wait_for(lambda items: len(items) >= 1)
            counterpart = address_in(brief.message.get_body(("plain",)).get_content())
            submission = message(
                "Correction to the Q1 sales report",
                "Dear Daniel,\n\nThe March revenue for the North region is $14,200, not "
                "$12,400. I attached the corrected file.\n\nBest regards,\nAna",
                counterpart,
            )
            await aiosmtplib.send(submission, hostname="127.0.0.1", port=port)
            deadline = time.monotonic() + 20
            while not model.requests:
                assert time.monotonic() < deadline, "the worker never called the model"
                await asyncio.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    database = tmp_path / "data" / "peb.sqlite3"
    with sqlite3.connect(database) as db:
        assert db.execute("select state, tries from jobs").fetchall() == [
            ("grading", 1)
        ]
        assert db.execute("select state from attempts").fetchall() == [("submitted",)]

    write_config(config, tmp_path, sink, '[grader]\nkind = "offline"')
    process, port = await start_serve(config, port_file)
    try:
        received = await sink.wait_for(
            lambda items: any(
                item.message["In-Reply-To"] == submission["Message-ID"]
                for item in items
            ),
            timeout_s=30,
        )
        # Let the sender run a little longer so a duplicate would show up.
        await asyncio.sleep(1.0)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)

    feedback = [
        item
        for item in sink.received
        if item.message["In-Reply-To"] == submission["Message-ID"]
    ]
    assert len(feedback) == 1
    assert len(received) >= 3
    with sqlite3.connect(database) as db:
        assert db.execute("select state, tries from jobs").fetchall() == [("done", 2)]
        assert db.execute("select state from attempts").fetchall() == [("graded",)]
        pending = db.execute(
            "select count(*) from outbox where state != 'sent'"
        ).fetchone()
    assert pending == (0,)
    assert process.returncode == 0
