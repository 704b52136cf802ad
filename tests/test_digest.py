"""The daily instructor digest: due once a day per cohort, with the right rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from peb_mail import store as sql
from peb_mail.compose import Composer
from peb_mail.digest import send_due_digests
from peb_mail.scenarios import load_scenarios
from peb_mail.store import Store

from .conftest import INSTRUCTOR, STUDENT, make_config


async def test_digest_sent_once_per_day(tmp_path: Path) -> None:
    config = make_config(tmp_path, instructors={"digest_hour_utc": 7})
    morning = dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC).timestamp()
    clock = [morning]
    store = await Store.open(config.service.database, clock=lambda: clock[0])
    scenarios = load_scenarios(config.service.scenarios_dir)
    composer = Composer(config)
    try:
        await store.upsert_students(
            [(STUDENT, "Ana Silva", "demo"), ("bo@student.test", "Bo", "demo")], {}
        )
        async with store.transaction() as db:
            attempt_id = await sql.create_attempt(
                db, 1, scenarios[0].id, "tok", clock[0]
            )
            await db.execute(
                "update attempts set state = 'graded', score = 27 where id = ?",
                (attempt_id,),
            )
        before_hour = await send_due_digests(store, composer, config, scenarios)
        clock[0] += 3 * 3600
        first = await send_due_digests(store, composer, config, scenarios)
        again = await send_due_digests(store, composer, config, scenarios)
        clock[0] += 86400
        next_day = await send_due_digests(store, composer, config, scenarios)
        [digest, _] = await store.list_outbox()
    finally:
        await store.close()
    text = digest.raw.decode("utf-8", "replace")
    assert (before_hour, first, again, next_day) == (0, 1, 0, 1)
    assert digest.rcpt_tos == (INSTRUCTOR,)
    assert "27" in text
    assert "NOT STARTED YET (1)" in text
    assert "bo@student.test" in text
