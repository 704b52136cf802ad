"""Contract of the SQLite queue in peb_mail.store, through its public API.

Every test uses a real database file under ``tmp_path`` and a fake clock that
the test moves forward, so leases and delays are checked without sleeping.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peb_mail import store as sql
from peb_mail.store import NewEmail, OutboxEmail, Store

START = 1_700_000_000.0
LEASE_S = 60.0
# Enough jobs that both stores usually win claims (in trial runs on one machine
# each store won 3 to 97 of the 100), so claims interleave across connections.
JOB_COUNT = 100


class FakeClock:
    """A clock for ``Store(clock=...)`` that moves only when advance() is called."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "x.sqlite3"


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await Store.open(db_path, clock=clock)
    yield opened
    await opened.close()


async def add_student(store: Store, email: str = "ana@student.test") -> int:
    await store.upsert_students([(email, "Ana", "demo")], {})
    student = await store.student_by_email(email)
    assert student is not None
    return student.id


async def submit(store: Store, student_id: int, *tokens: str) -> list[int]:
    """Create and submit one attempt per token, which queues their grading jobs."""
    inbound_id = await store.ingest(
        peer="127.0.0.1",
        mail_from="ana@student.test",
        rcpt_tos=["practice@peb-mail.test"],
        message_id=f"<{tokens[0]}@student.test>",
        raw=b"Subject: reply\r\n\r\nbody\r\n",
    )
    assert inbound_id is not None
    now = store.clock()
    attempt_ids = []
    async with store.transaction() as db:
        for token in tokens:
            attempt_id = await sql.create_attempt(db, student_id, "refund", token, now)
            await sql.submit_attempt(
                db,
                attempt_id,
                inbound_id=inbound_id,
                subject="reply",
                body="body",
                attachments="[]",
                max_tries=3,
                now=now,
            )
            attempt_ids.append(attempt_id)
    return attempt_ids


def new_email(message_id: str, attempt_id: int | None = None) -> NewEmail:
    return NewEmail(
        message_id=message_id,
        kind="feedback",
        envelope_from="practice@peb-mail.test",
        rcpt_tos=("ana@student.test", "teacher@school.test"),
        raw=f"Message-ID: {message_id}\r\nSubject: hi\r\n\r\nbody\r\n".encode(),
        attempt_id=attempt_id,
    )


async def queue_email(store: Store, email: NewEmail) -> None:
    async with store.transaction() as db:
        await sql.insert_outbox(db, email, store.clock())


async def outbox_by_message_id(store: Store) -> dict[str, OutboxEmail]:
    return {item.message_id: item for item in await store.list_outbox()}


async def thread_attempt(store: Store, message_ids: list[str]) -> int | None:
    async with store.transaction() as db:
        return await sql.attempt_for_message_ids(db, message_ids)


# -- connection settings -----------------------------------------------------


async def test_journal_mode_wal_on_disk(store: Store, db_path: Path) -> None:
    # The journal mode is stored in the file, so a separate connection reads it.
    with sqlite3.connect(db_path) as other:
        mode = other.execute("pragma journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_connection_pragmas(store: Store) -> None:
    # synchronous and busy_timeout belong to one connection, so a separate
    # sqlite3 connection would only show its own defaults. They are read on
    # the store's connection, which transaction() yields.
    async with store.transaction() as db:
        async with db.execute("pragma synchronous") as cursor:
            synchronous = (await cursor.fetchone())[0]
        async with db.execute("pragma busy_timeout") as cursor:
            busy_timeout_ms = (await cursor.fetchone())[0]
        async with db.execute("pragma foreign_keys") as cursor:
            foreign_keys = (await cursor.fetchone())[0]
    assert synchronous == 1  # NORMAL: later steps, not received mail
    # sqlite3.connect's default timeout of 5 s already sets 5000 ms, so the store
    # must set its own, longer wait.
    assert busy_timeout_ms >= 10_000
    assert foreign_keys == 1


async def test_ingest_connection_pragmas(store: Store) -> None:
    # Received mail is committed on the ingest writer's own connection, which
    # must sync every commit to disk before the listener replies 250.
    writer = store._ingest_writer  # noqa: SLF001
    [(synchronous,)] = await writer.execute("pragma synchronous")
    [(busy_timeout_ms,)] = await writer.execute("pragma busy_timeout")
    assert synchronous == 2  # FULL
    assert busy_timeout_ms >= 10_000


# -- inbound -----------------------------------------------------------------


async def test_ingest_dedup_by_sender_and_id(store: Store) -> None:
    first = await store.ingest(
        peer="127.0.0.1",
        mail_from="Ana@Student.test",
        rcpt_tos=["practice@peb-mail.test"],
        message_id="<m1@student.test>",
        raw=b"first",
    )

    again = await store.ingest(
        peer="127.0.0.1",
        mail_from="ana@STUDENT.TEST",
        rcpt_tos=["practice@peb-mail.test"],
        message_id="<m1@student.test>",
        raw=b"second",
    )
    other_sender = await store.ingest(
        peer="127.0.0.1",
        mail_from="bo@student.test",
        rcpt_tos=["practice@peb-mail.test"],
        message_id="<m1@student.test>",
        raw=b"third",
    )

    assert isinstance(first, int)
    assert again is None
    assert isinstance(other_sender, int)
    assert other_sender != first

    row = await store.inbound_row(first)
    assert row is not None
    assert row["raw"] == b"first"
    assert row["mail_from"] == "ana@student.test"
    assert len(await store.list_inbound()) == 2


async def test_ingest_without_message_id(store: Store) -> None:
    ids = [
        await store.ingest(
            peer="127.0.0.1",
            mail_from="ana@student.test",
            rcpt_tos=["practice@peb-mail.test"],
            message_id=None,
            raw=b"same bytes",
        )
        for _ in range(2)
    ]
    assert None not in ids
    assert ids[0] != ids[1]
    assert await store.received_inbound_ids() == ids


# -- grading jobs ------------------------------------------------------------


async def test_claim_job_leases_one(store: Store, clock: FakeClock) -> None:
    [attempt_id] = await submit(store, await add_student(store), "t1")
    job = await store.claim_job("w1", LEASE_S)
    assert job is not None
    assert job.attempt_id == attempt_id
    assert job.state == "grading"
    assert job.tries == 1
    assert job.lease_owner == "w1"
    assert job.lease_expires_at == clock.now + LEASE_S


async def test_claim_job_skips_live_lease(store: Store, clock: FakeClock) -> None:
    await submit(store, await add_student(store), "t1")
    assert await store.claim_job("w1", LEASE_S) is not None
    assert await store.claim_job("w2", LEASE_S) is None
    clock.advance(LEASE_S - 0.001)
    assert await store.claim_job("w2", LEASE_S) is None


async def test_claim_job_takes_expired_lease(store: Store, clock: FakeClock) -> None:
    await submit(store, await add_student(store), "t1")
    first = await store.claim_job("w1", LEASE_S)
    assert first is not None
    clock.advance(LEASE_S)
    taken = await store.claim_job("w2", LEASE_S)
    assert taken is not None
    assert taken.id == first.id
    assert taken.tries == 2
    assert taken.lease_owner == "w2"
    assert taken.lease_expires_at == clock.now + LEASE_S
    async with store.transaction() as db:
        old_owner_done = await sql.complete_job(db, first.id, "w1", clock.now)
        new_owner_done = await sql.complete_job(db, first.id, "w2", clock.now)
    assert old_owner_done is False
    assert new_owner_done is True
    [job] = await store.list_jobs()
    assert job.state == "done"
    assert job.lease_owner is None


async def test_release_job_delays_retry(store: Store, clock: FakeClock) -> None:
    await submit(store, await add_student(store), "t1")
    job = await store.claim_job("w1", LEASE_S)
    assert job is not None
    assert not await store.release_job(job, "w2", delay_s=30.0, error="other owner")
    assert await store.release_job(job, "w1", delay_s=30.0, error="model busy")
    [queued] = await store.list_jobs()
    assert queued.state == "queued"
    assert queued.lease_owner is None
    assert await store.next_job_due_at() == clock.now + 30.0
    assert await store.claim_job("w1", LEASE_S) is None
    clock.advance(29.999)
    assert await store.claim_job("w1", LEASE_S) is None
    clock.advance(0.001)
    again = await store.claim_job("w1", LEASE_S)
    assert again is not None
    assert again.tries == 2
    assert again.last_error == "model busy"


async def test_fail_job_by_owner_only(store: Store, clock: FakeClock) -> None:
    await submit(store, await add_student(store), "t1")
    job = await store.claim_job("w1", LEASE_S)
    assert job is not None
    async with store.transaction() as db:
        by_other = await sql.fail_job(db, job.id, "w2", "not mine", clock.now)
        by_owner = await sql.fail_job(db, job.id, "w1", "no verdict", clock.now)
    assert by_other is False
    assert by_owner is True
    [failed] = await store.list_jobs()
    assert failed.state == "failed"
    assert failed.last_error == "no verdict"
    assert failed.lease_owner is None
    clock.advance(10 * LEASE_S)
    assert await store.claim_job("w1", LEASE_S) is None


async def test_claim_job_two_stores_race(db_path: Path, clock: FakeClock) -> None:
    stores = [
        await Store.open(db_path, clock=clock),
        await Store.open(db_path, clock=clock),
    ]
    try:
        student_id = await add_student(stores[0])
        tokens = [f"t{n}" for n in range(JOB_COUNT)]
        attempt_ids = await submit(stores[0], student_id, *tokens)
        claimed: list[int] = []

        async def claimer(store: Store, owner: str) -> None:
            while (job := await store.claim_job(owner, LEASE_S)) is not None:
                claimed.append(job.attempt_id)
                await asyncio.sleep(0)

        await asyncio.gather(
            *(
                claimer(store, f"s{index}:w{worker}")
                for index, store in enumerate(stores)
                for worker in range(4)
            )
        )
    finally:
        for store in stores:
            await store.close()
    counts = Counter(claimed)
    assert sorted(counts) == sorted(attempt_ids)
    assert [n for n in counts.values() if n != 1] == []


# -- outbox ------------------------------------------------------------------


async def test_insert_outbox_records_thread(store: Store) -> None:
    [attempt_id] = await submit(store, await add_student(store), "t1")
    await queue_email(store, new_email("<f1@peb-mail.test>", attempt_id))
    await queue_email(store, new_email("<n1@peb-mail.test>"))
    assert await thread_attempt(store, ["<f1@peb-mail.test>"]) == attempt_id
    assert await thread_attempt(store, ["<n1@peb-mail.test>"]) is None


async def test_claim_outbox_leases_and_counts(store: Store, clock: FakeClock) -> None:
    email = new_email("<f1@peb-mail.test>")
    await queue_email(store, email)
    [claimed] = await store.claim_outbox(300.0)
    assert claimed.message_id == email.message_id
    assert claimed.state == "pending"
    assert claimed.tries == 1
    assert claimed.rcpt_tos == email.rcpt_tos
    assert claimed.raw == email.raw
    assert claimed.envelope_from == email.envelope_from
    assert await store.claim_outbox(300.0) == []
    clock.advance(299.999)
    assert await store.claim_outbox(300.0) == []
    clock.advance(0.001)
    [again] = await store.claim_outbox(300.0)
    assert again.id == claimed.id
    assert again.tries == 2


async def test_claim_outbox_limit(store: Store) -> None:
    for n in range(3):
        await queue_email(store, new_email(f"<f{n}@peb-mail.test>"))
    first = await store.claim_outbox(300.0, limit=2)
    rest = await store.claim_outbox(300.0, limit=2)
    assert [item.message_id for item in first] == [
        "<f0@peb-mail.test>",
        "<f1@peb-mail.test>",
    ]
    assert [item.message_id for item in rest] == ["<f2@peb-mail.test>"]


async def test_mark_retry_delays_email(store: Store, clock: FakeClock) -> None:
    await queue_email(store, new_email("<f1@peb-mail.test>"))
    [claimed] = await store.claim_outbox(300.0)
    await store.mark_retry(claimed.id, 30.0, "451 4.3.0 try later")
    [pending] = await store.list_outbox()
    assert pending.state == "pending"
    assert pending.not_before == clock.now + 30.0
    assert pending.last_error == "451 4.3.0 try later"
    assert await store.claim_outbox(300.0) == []
    clock.advance(30.0)
    [again] = await store.claim_outbox(300.0)
    assert again.tries == 2


async def test_retry_outbox_revives_dead(store: Store, clock: FakeClock) -> None:
    for name in ("a", "b", "c", "d"):
        await queue_email(store, new_email(f"<{name}@peb-mail.test>"))
    claimed = {item.message_id: item for item in await store.claim_outbox(300.0)}
    dead_a = claimed["<a@peb-mail.test>"].id
    dead_b = claimed["<b@peb-mail.test>"].id
    sent_c = claimed["<c@peb-mail.test>"].id
    leased_d = claimed["<d@peb-mail.test>"].id
    await store.mark_dead(dead_a, "550 no such user")
    await store.mark_dead(dead_b, "550 no such user")
    await store.mark_sent(sent_c)
    clock.advance(5.0)

    assert await store.retry_outbox([dead_a, sent_c, leased_d]) == 1
    emails = await outbox_by_message_id(store)
    revived = emails["<a@peb-mail.test>"]
    assert revived.state == "pending"
    assert revived.tries == 0
    assert revived.not_before == clock.now
    assert emails["<b@peb-mail.test>"].state == "dead"

    assert await store.retry_outbox(None) == 1
    emails = await outbox_by_message_id(store)
    assert emails["<b@peb-mail.test>"].state == "pending"
    assert emails["<c@peb-mail.test>"].state == "sent"
    assert emails["<d@peb-mail.test>"].tries == 1
    # d is still leased, so only the two revived emails are due.
    revived_ids = {item.id for item in await store.claim_outbox(300.0)}
    assert revived_ids == {dead_a, dead_b}


async def test_thread_lookup_newest_known_id(store: Store) -> None:
    student_id = await add_student(store)
    older, newer = await submit(store, student_id, "t1", "t2")
    async with store.transaction() as db:
        await sql.add_thread_id(db, "<m1@peb-mail.test>", older)
        await sql.add_thread_id(db, "<m2@peb-mail.test>", newer)
    ids = ["<m1@peb-mail.test>", "<m2@peb-mail.test>", "<unknown@x.test>"]
    assert await thread_attempt(store, ids) == newer
    assert await thread_attempt(store, ids[1::-1]) == older
    assert await thread_attempt(store, ["<unknown@x.test>"]) is None
    assert await thread_attempt(store, []) is None


# -- transactions ------------------------------------------------------------


async def test_transaction_error_rolls_back(store: Store, clock: FakeClock) -> None:
    student_id = await add_student(store)
    with pytest.raises(RuntimeError, match="abort"):
        async with store.transaction() as db:
            attempt_id = await sql.create_attempt(db, student_id, "refund", "t1", 0.0)
            await sql.insert_outbox(
                db, new_email("<f1@peb-mail.test>", attempt_id), clock.now
            )
            raise RuntimeError("abort")
    assert await store.list_attempts() == []
    assert await store.list_outbox() == []
    assert await thread_attempt(store, ["<f1@peb-mail.test>"]) is None
    # The lock and the connection are free again after the rollback.
    await queue_email(store, new_email("<f2@peb-mail.test>"))
    assert len(await store.list_outbox()) == 1


async def test_group_commit_each_caller_sees_commit(tmp_path: Path) -> None:
    path = tmp_path / "group.sqlite3"
    store = await Store.open(path)
    other = sqlite3.connect(path)
    try:

        async def ingest_and_check(index: int) -> bool:
            inbound_id = await store.ingest(
                peer="p",
                mail_from="a@b.test",
                rcpt_tos=["x@y.test"],
                message_id=f"group-{index}@b.test",
                raw=b"x",
            )
            # Committed before ingest returned: a second connection sees it.
            row = other.execute(
                "select 1 from inbound where id = ?", (inbound_id,)
            ).fetchone()
            return row is not None

        results = await asyncio.gather(*(ingest_and_check(i) for i in range(50)))
        duplicate = await store.ingest(
            peer="p",
            mail_from="A@B.test",
            rcpt_tos=["x@y.test"],
            message_id="group-3@b.test",
            raw=b"x",
        )
    finally:
        other.close()
        await store.close()
    assert all(results)
    assert duplicate is None
