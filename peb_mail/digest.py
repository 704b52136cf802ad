"""The daily instructor digest: one email per cohort, sent once per UTC day."""

from __future__ import annotations

import datetime as dt
import logging

from . import store as sql
from .admin import digest_rows
from .compose import Composer, Mailbox
from .config import Config
from .models import Scenario
from .store import Store

logger = logging.getLogger(__name__)


async def send_due_digests(
    store: Store, composer: Composer, config: Config, scenarios: list[Scenario]
) -> int:
    """Queue today's digest for every cohort that has not had one; returns how many.

    Each digest and the row that marks it sent commit together, so two
    processes, or a restart, never send the same day's digest twice.
    """
    hour = config.instructors.digest_hour_utc
    now = dt.datetime.fromtimestamp(store.clock(), dt.UTC)
    if hour < 0 or now.hour < hour:
        return 0
    day = now.date().isoformat()
    sent = 0
    for cohort in await store.cohorts():
        instructors = sorted(
            {*await store.cohort_instructors(cohort), *config.cohorts.get(cohort, ())}
        )
        if not instructors:
            continue
        rows = await digest_rows(store, scenarios, cohort)
        email = composer.build(
            kind="digest",
            sender=composer.service,
            to=[Mailbox("", address) for address in instructors],
            subject=f"[peb-mail] Daily digest: {cohort}, {day}",
            text=composer.render("digest.txt.j2", digest=rows, day=day),
            auto_submitted="auto-generated",
        )
        async with store.transaction() as db:
            if not await sql.take_digest_slot(db, cohort, day):
                continue
            await sql.insert_outbox(db, email, store.clock())
        logger.info(
            "digest for cohort %s queued to %d instructors", cohort, len(instructors)
        )
        sent += 1
    return sent
