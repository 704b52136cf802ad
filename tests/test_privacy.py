"""Data protection: export, delete, retention, and what logs may contain."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
from pathlib import Path

import pytest

from peb_mail.cli import main
from peb_mail.logs import RedactingFilter, setup_logging
from peb_mail.service import Service

from .conftest import DOMAIN, STUDENT, Sink, make_config, smtp_outbox
from .test_loop import compose, parts, send


def write_config(tmp_path: Path, database: Path) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[service]\ndomain = "{DOMAIN}"\ndatabase = "{database}"\n'
        f'scenarios_dir = "{Path(__file__).resolve().parent.parent / "scenarios"}"\n'
    )
    return path


@pytest.fixture
async def graded(tmp_path: Path, sink: Sink) -> Path:
    """Run one START and one graded submission for the student; return the database."""
    config = make_config(tmp_path, outbox=smtp_outbox(sink))
    service = Service(config)
    await service.start()
    assert service.store is not None
    await service.store.upsert_students(
        [(STUDENT, "Ana Silva", "demo"), ("ben@student.test", "Ben", "demo")], {}
    )
    await send(service, compose("START 1", ""))
    [brief] = await sink.wait_for(lambda items: len(items) >= 1)
    from .conftest import address_in

    address = address_in(parts(brief)["text/plain"])
    await send(
        service,
        compose(
            "Correction",
            "Dear Daniel,\n\nThe March figure is $14,200.\n\nAna",
            to=address,
        ),
    )
    await sink.wait_for(lambda items: len(items) >= 3)
    await service.stop()
    return config.service.database


def test_export_writes_json_and_raw(
    graded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, graded)
    out = tmp_path / "export"
    assert (
        main(["student", "export", STUDENT, "--out", str(out), "--config", str(config)])
        == 0
    )
    data = json.loads((out / "student.json").read_text())
    assert data["student"]["email"] == STUDENT
    assert data["attempts"][0]["verdict"]["scores"]
    assert len(data["inbound"]) == 2
    assert all((out / row["raw_file"]).read_bytes() for row in data["inbound"])
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_delete_cascades(graded: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, graded)
    assert main(["student", "delete", STUDENT, "--config", str(config)]) == 2
    assert main(["student", "delete", STUDENT, "--yes", "--config", str(config)]) == 0
    with sqlite3.connect(graded) as db:
        remaining = {
            table: db.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("students", "attempts", "jobs", "inbound", "thread_ids")
        }
        outbox_to_student = db.execute(
            "select count(*) from outbox where rcpt_tos like ?", (f'%"{STUDENT}"%',)
        ).fetchone()[0]
    assert remaining == {
        "students": 1,
        "attempts": 0,
        "jobs": 0,
        "inbound": 0,
        "thread_ids": 0,
    }
    assert outbox_to_student == 0


def test_purge_keeps_unprocessed(graded: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, graded)
    with sqlite3.connect(graded) as db:
        db.execute("update inbound set received_at = received_at - 40 * 86400")
        db.execute("update inbound set state = 'received' where id = 1")
    assert main(["purge", "--days", "30", "--config", str(config)]) == 0
    with sqlite3.connect(graded) as db:
        sizes = dict(db.execute("select id, length(raw) from inbound").fetchall())
    assert sizes[1] > 0
    assert sizes[2] == 0


def test_log_filter_masks_tokens_and_addresses() -> None:
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "to %s",
        (f"daniel+abcdefgh12345678@{DOMAIN}",),
        None,
    )
    RedactingFilter(redact_addresses=False).filter(record)
    assert record.getMessage() == f"to daniel+***@{DOMAIN}"
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "from %s", (STUDENT,), None
    )
    RedactingFilter(redact_addresses=True).filter(record)
    assert record.getMessage() == "from a***@student.test"


async def test_service_logs_hold_no_bodies_or_tokens(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    setup_logging(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    config = make_config(tmp_path, outbox=smtp_outbox(sink))
    service = Service(config)
    await service.start()
    assert service.store is not None
    await service.store.upsert_students([(STUDENT, "Ana Silva", "demo")], {})
    await send(service, compose("START 1", ""))
    [brief] = await sink.wait_for(lambda items: len(items) >= 1)
    from .conftest import address_in

    address = address_in(parts(brief)["text/plain"])
    secret_sentence = "Zebra-marmalade confidential sentence"
    await send(
        service,
        compose("Correction", f"Dear Daniel,\n\n{secret_sentence}.\n\nAna", to=address),
    )
    await sink.wait_for(lambda items: len(items) >= 3)
    await service.stop()
    token = address.split("+", 1)[1].split("@", 1)[0]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert secret_sentence not in logged
    assert token not in logged
    assert "submission queued" in logged
