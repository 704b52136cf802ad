"""SQLite storage: the schema and every SQL statement of the service.

Each state change is one short ``BEGIN IMMEDIATE`` transaction, so a crash at
any point leaves the database in a state the service resumes from:

- ``inbound``: raw messages as received. ``state`` moves from ``received`` to
  ``processed``, ``ignored``, ``rejected`` or ``quarantined``.
- ``jobs``: one grading job per submitted attempt. A worker takes a *lease*:
  ``state = 'grading'`` with ``lease_expires_at``. Others skip the job while the
  lease lasts and take it over once it has expired. ``tries`` counts claims.
- ``outbox``: every email the service sends, written in the same transaction
  as the change that causes it, delivered later by the sender.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

SCHEMA = """
create table if not exists students (
    id integer primary key,
    email text not null unique,
    name text not null,
    cohort text not null,
    created_at real not null,
    -- Hard bounces of mail to this student; at HARD_BOUNCE_LIMIT the address
    -- is flagged for an admin to check.
    hard_bounces integer not null default 0,
    flagged text
);
create table if not exists cohort_instructors (
    cohort text not null,
    email text not null,
    primary key (cohort, email)
);
create table if not exists inbound (
    id integer primary key,
    received_at real not null,
    peer text not null,
    mail_from text not null,
    rcpt_tos text not null,
    message_id text,
    raw blob not null,
    state text not null default 'received',
    reason text,
    student_id integer,
    attempt_id integer,
    processed_at real,
    -- Set by "quarantine release --trust": skip the sender policy once.
    trusted integer not null default 0
);
create unique index if not exists inbound_dedup
    on inbound (mail_from, message_id) where message_id is not null;
create index if not exists inbound_state on inbound (state);
create table if not exists attempts (
    id integer primary key,
    student_id integer not null references students (id),
    scenario_id text not null,
    token text not null unique,
    state text not null default 'open',
    created_at real not null,
    inbound_id integer,
    subject text,
    body text,
    attachments text,
    score integer,
    verdict text,
    submitted_at real,
    graded_at real,
    -- The attempt this one revises, when a student replied to feedback.
    previous_attempt_id integer
);
create index if not exists attempts_student on attempts (student_id, state);
create table if not exists jobs (
    id integer primary key,
    attempt_id integer not null unique references attempts (id),
    state text not null default 'queued',
    tries integer not null default 0,
    max_tries integer not null,
    not_before real not null,
    lease_owner text,
    lease_expires_at real,
    last_error text,
    created_at real not null,
    updated_at real not null
);
create index if not exists jobs_ready on jobs (state, not_before);
create table if not exists outbox (
    id integer primary key,
    message_id text not null unique,
    attempt_id integer,
    kind text not null,
    envelope_from text not null,
    rcpt_tos text not null,
    raw blob not null,
    state text not null default 'pending',
    tries integer not null default 0,
    not_before real not null,
    lease_expires_at real,
    last_error text,
    created_at real not null,
    -- Set by "outbox retry": the dead-after age counts from here.
    revived_at real,
    sent_at real,
    -- Set when a bounce for this email comes back (RFC 3464 status, e.g. 5.1.1).
    bounced_at real,
    bounce_status text
);
create index if not exists outbox_ready on outbox (state, not_before);
create index if not exists outbox_envelope on outbox (envelope_from);
create table if not exists thread_ids (
    message_id text primary key,
    attempt_id integer not null
);
create table if not exists overrides (
    id integer primary key,
    attempt_id integer not null,
    instructor text not null,
    commands text not null,
    created_at real not null
);
create table if not exists digests (
    cohort text not null,
    day text not null,
    primary key (cohort, day)
);
create table if not exists notices (
    sender text not null,
    day text not null,
    primary key (sender, day)
);
"""


# Columns added after the first release. CREATE TABLE above has them for a
# new database; an older file gets them with ALTER TABLE when it is opened.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("outbox", "revived_at", "real"),
    ("outbox", "bounced_at", "real"),
    ("outbox", "bounce_status", "text"),
    ("students", "hard_bounces", "integer not null default 0"),
    ("students", "flagged", "text"),
    ("inbound", "trusted", "integer not null default 0"),
    ("attempts", "previous_attempt_id", "integer"),
)


async def _add_missing_columns(db: aiosqlite.Connection) -> None:
    for table, column, declaration in _ADDED_COLUMNS:
        existing = {
            row["name"]
            for row in await db.execute_fetchall(f"pragma table_info({table})")
        }
        if column not in existing:
            await db.execute(f"alter table {table} add column {column} {declaration}")


@dataclass(frozen=True)
class Student:
    id: int
    email: str
    name: str
    cohort: str
    hard_bounces: int = 0
    flagged: str | None = None


@dataclass(frozen=True)
class Attempt:
    id: int
    student_id: int
    scenario_id: str
    token: str
    state: str
    created_at: float
    inbound_id: int | None
    subject: str | None
    body: str | None
    attachments: str | None
    score: int | None
    verdict: str | None
    submitted_at: float | None
    graded_at: float | None
    previous_attempt_id: int | None = None


@dataclass(frozen=True)
class Job:
    id: int
    attempt_id: int
    state: str
    tries: int
    max_tries: int
    lease_owner: str | None
    lease_expires_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class OutboxEmail:
    id: int
    message_id: str
    attempt_id: int | None
    kind: str
    envelope_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    state: str
    tries: int
    not_before: float
    last_error: str | None
    created_at: float
    sent_at: float | None
    revived_at: float | None = None
    bounced_at: float | None = None
    bounce_status: str | None = None


@dataclass(frozen=True)
class NewEmail:
    """An outbound email ready to be queued in the outbox."""

    message_id: str
    kind: str
    envelope_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    attempt_id: int | None = None


INSERT_INBOUND = (
    "insert or ignore into inbound "
    "(received_at, peer, mail_from, rcpt_tos, message_id, raw) "
    "values (?, ?, ?, ?, ?, ?)"
)


async def _one(
    db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()
) -> sqlite3.Row | None:
    """Return the first row of a query in one trip to aiosqlite's thread.

    ``async with db.execute(...)`` and ``fetchone`` take three trips, each a
    hand-off between threads that the event loop must wake up for.
    """
    for row in await db.execute_fetchall(sql, tuple(params)):
        return row
    return None


class IngestWriter:
    """A second connection that commits received mail, on a thread of its own.

    A group commit is one call on that thread: BEGIN, one INSERT per waiting
    message, COMMIT. Through aiosqlite the same work takes one thread round
    trip per statement. On a 2-core machine, moving to one call raised the
    listener's rate in ``make bench`` by a fifth to a third.
    """

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._connection: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="peb-ingest")

    async def insert(self, rows: list[tuple[Any, ...]]) -> list[int | None]:
        """Commit ``rows`` in one transaction; None marks an ignored duplicate."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._insert, rows)

    async def execute(self, sql: str) -> list[Any]:
        """Run one statement, such as a pragma, on the writer's connection."""

        def run() -> list[Any]:
            return self._open().execute(sql).fetchall()

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run)

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout_s,
        )
        # synchronous is a setting of each connection, not of the file.
        connection.execute("pragma synchronous = full")
        connection.execute("pragma foreign_keys = on")
        return connection

    def _insert(self, rows: list[tuple[Any, ...]]) -> list[int | None]:
        connection = self._open()
        results: list[int | None] = []
        connection.execute("begin immediate")
        try:
            for row in rows:
                cursor = connection.execute(INSERT_INBOUND, row)
                results.append(cursor.lastrowid if cursor.rowcount == 1 else None)
        except BaseException:
            connection.execute("rollback")
            raise
        connection.execute("commit")
        return results

    def close(self) -> None:
        """Close the connection on its own thread and stop the thread."""

        def close_connection() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        self._executor.submit(close_connection).result()
        self._executor.shutdown()


class Store:
    """One aiosqlite connection with a lock that serialises transactions.

    aiosqlite runs statements on a worker thread, so two tasks sharing the
    connection could interleave their BEGIN and COMMIT. The lock keeps each
    transaction whole. Other processes are kept out by SQLite's own locking,
    with ``busy_timeout`` to wait instead of failing at once.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        ingest_writer: IngestWriter,
        clock: Clock = time.time,
    ) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.clock = clock
        self._ingest_writer = ingest_writer
        # Messages waiting for the next group commit, and the task doing it.
        self._ingest_waiting: list[
            tuple[tuple[Any, ...], asyncio.Future[int | None]]
        ] = []
        self._ingest_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, path: Path, clock: Clock = time.time, busy_timeout_s: float = 10.0
    ) -> Store:
        """Open (and create) the database; ``busy_timeout_s`` is how long a
        statement waits for another process's write lock before failing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        db = await aiosqlite.connect(path, isolation_level=None)
        if created:
            # Student mail is personal data: owner only. SQLite gives the -wal
            # and -shm files the same mode as the database file.
            os.chmod(path, 0o600)
        db.row_factory = sqlite3.Row
        await db.execute(f"pragma busy_timeout = {int(busy_timeout_s * 1000)}")
        await db.execute("pragma journal_mode = wal")
        # Received mail is committed by the IngestWriter with synchronous=FULL,
        # so 250 means stored even across a power loss. The later steps use
        # NORMAL: a commit survives a crash or kill -9 of the process, and only
        # a power loss or OS crash can undo the last steps before a WAL sync.
        # The service then redoes them (grades again, may send an email
        # twice) but loses nothing, and each commit skips an fsync of a few
        # milliseconds that all steps would otherwise queue behind.
        await db.execute("pragma synchronous = normal")
        await db.execute("pragma foreign_keys = on")
        await db.executescript(SCHEMA)
        await _add_missing_columns(db)
        return cls(db, IngestWriter(path, busy_timeout_s), clock)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self._ingest_writer.close
        )
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction.

        IMMEDIATE takes the write lock at the start, so two processes never
        both read a job as free and then both claim it.
        """
        async with self._lock:
            await self._db.execute("begin immediate")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("rollback")
                raise
            await self._db.execute("commit")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """Give the connection for reads only, outside any write transaction."""
        async with self._lock:
            yield self._db

    async def release_inbound(self, inbound_ids: list[int], trust: bool = False) -> int:
        """Send quarantined messages through intake again.

        ``trust`` marks them as genuine, so the sender policy does not hold
        them a second time.
        """
        async with self.transaction() as db:
            cursor = await db.execute(
                f"update inbound set state = 'received', reason = null, processed_at = null, "
                f"trusted = ? "
                f"where state = 'quarantined' and id in ({','.join('?' * len(inbound_ids))})",
                [1 if trust else 0, *inbound_ids],
            )
            return cursor.rowcount

    async def find_inbound(self, ref: str) -> sqlite3.Row | None:
        """Find a received message by its number or its Message-ID."""
        if ref.isdigit():
            return await self.inbound_row(int(ref))
        return await self._fetchone(
            "select * from inbound where message_id = ? order by id desc limit 1",
            (ref.strip().strip("<>"),),
        )

    async def _fetchall(
        self, sql: str, params: Iterable[Any] = ()
    ) -> list[sqlite3.Row]:
        async with self._lock:
            return list(await self._db.execute_fetchall(sql, tuple(params)))

    async def _fetchone(
        self, sql: str, params: Iterable[Any] = ()
    ) -> sqlite3.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # -- inbound ---------------------------------------------------------

    async def ingest(
        self,
        *,
        peer: str,
        mail_from: str,
        rcpt_tos: list[str],
        message_id: str | None,
        raw: bytes,
    ) -> int | None:
        """Commit one received message and return its id.

        Returns None for a duplicate delivery (same Message-ID from the same
        envelope sender), which the caller still acknowledges with 250.
        Messages that arrive while a commit runs wait and are committed
        together in the next transaction (group commit): each caller returns
        only after the transaction holding its message has committed, so the
        durability of each message is unchanged and one fsync serves many.
        Raises the storage error when that transaction fails.
        """
        row = (
            self.clock(),
            peer,
            mail_from.lower(),
            json.dumps(rcpt_tos),
            message_id,
            raw,
        )
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._ingest_waiting.append((row, future))
        if self._ingest_task is None or self._ingest_task.done():
            self._ingest_task = asyncio.create_task(self._commit_waiting())
        return await future

    async def _commit_waiting(self) -> None:
        while self._ingest_waiting:
            batch, self._ingest_waiting = self._ingest_waiting, []
            rows = [row for row, _ in batch]
            try:
                async with self._lock:
                    results = await self._ingest_writer.insert(rows)
            except Exception as exc:
                for _, future in batch:
                    # A caller whose SMTP session closed has a cancelled future.
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def received_inbound_ids(
        self, limit: int = 50, received_before: float | None = None
    ) -> list[int]:
        """List messages waiting for intake, oldest first.

        ``received_before`` keeps only those stored before that time.
        """
        if received_before is None:
            rows = await self._fetchall(
                "select id from inbound where state = 'received' order by id limit ?",
                (limit,),
            )
        else:
            rows = await self._fetchall(
                "select id from inbound where state = 'received' and received_at < ? "
                "order by id limit ?",
                (received_before, limit),
            )
        return [row["id"] for row in rows]

    async def inbound_row(self, inbound_id: int) -> sqlite3.Row | None:
        return await self._fetchone("select * from inbound where id = ?", (inbound_id,))

    async def list_inbound(
        self, state: str | None = None, limit: int = 100
    ) -> list[sqlite3.Row]:
        sql = (
            "select id, received_at, mail_from, message_id, state, reason, attempt_id, "
            "length(raw) as size from inbound"
        )
        params: list[Any] = []
        if state:
            sql += " where state = ?"
            params.append(state)
        sql += " order by id desc limit ?"
        params.append(limit)
        return await self._fetchall(sql, params)

    # -- students --------------------------------------------------------

    async def upsert_students(
        self, rows: list[tuple[str, str, str]], instructors: dict[str, list[str]]
    ) -> tuple[int, int]:
        """Insert or update roster rows (email, name, cohort) in one transaction.

        Returns (added, updated).
        """
        added = updated = 0
        now = self.clock()
        async with self.transaction() as db:
            for email, name, cohort in rows:
                existing = await _one(
                    db, "select id from students where email = ?", (email,)
                )
                if existing:
                    await db.execute(
                        "update students set name = ?, cohort = ? where id = ?",
                        (name, cohort, existing["id"]),
                    )
                    updated += 1
                else:
                    await db.execute(
                        "insert into students (email, name, cohort, created_at) "
                        "values (?, ?, ?, ?)",
                        (email, name, cohort, now),
                    )
                    added += 1
            # A roster that names instructors for a cohort replaces that
            # cohort's list, so re-importing can also remove someone.
            for cohort, addresses in instructors.items():
                await db.execute(
                    "delete from cohort_instructors where cohort = ?", (cohort,)
                )
                for address in addresses:
                    await db.execute(
                        "insert or ignore into cohort_instructors (cohort, email) values (?, ?)",
                        (cohort, address),
                    )
        return added, updated

    async def cohorts(self) -> list[str]:
        rows = await self._fetchall(
            "select distinct cohort from students order by cohort"
        )
        return [row["cohort"] for row in rows]

    async def list_students(self) -> list[Student]:
        rows = await self._fetchall(
            "select id, email, name, cohort, hard_bounces, flagged from students order by cohort, email"
        )
        return [Student(**dict(row)) for row in rows]

    async def student_by_email(self, email: str) -> Student | None:
        row = await self._fetchone(
            "select id, email, name, cohort, hard_bounces, flagged from students where email = ?",
            (email.lower(),),
        )
        return Student(**dict(row)) if row else None

    async def student_by_id(self, student_id: int) -> Student | None:
        row = await self._fetchone(
            "select id, email, name, cohort, hard_bounces, flagged from students where id = ?",
            (student_id,),
        )
        return Student(**dict(row)) if row else None

    async def cohort_instructors(self, cohort: str) -> list[str]:
        rows = await self._fetchall(
            "select email from cohort_instructors where cohort = ? order by email",
            (cohort,),
        )
        return [row["email"] for row in rows]

    # -- attempts --------------------------------------------------------

    async def attempt(self, attempt_id: int) -> Attempt | None:
        row = await self._fetchone("select * from attempts where id = ?", (attempt_id,))
        return Attempt(**dict(row)) if row else None

    async def list_attempts(
        self, student_id: int | None = None, limit: int = 200
    ) -> list[sqlite3.Row]:
        sql = (
            "select a.id, a.scenario_id, a.state, a.score, a.created_at, a.graded_at, "
            "s.email, s.name, s.cohort, j.tries, j.last_error from attempts a "
            "join students s on s.id = a.student_id left join jobs j on j.attempt_id = a.id"
        )
        params: list[Any] = []
        if student_id is not None:
            sql += " where a.student_id = ?"
            params.append(student_id)
        sql += " order by a.id desc limit ?"
        params.append(limit)
        return await self._fetchall(sql, params)

    # -- jobs ------------------------------------------------------------

    async def claim_job(self, owner: str, lease_s: float) -> Job | None:
        """Lease the next runnable job to ``owner`` and count one try.

        A job is runnable when it is queued and due, or when its lease has
        expired (its worker died or hung).
        """
        now = self.clock()
        async with self.transaction() as db:
            row = await _one(
                db,
                "update jobs set state = 'grading', lease_owner = ?, "
                "lease_expires_at = ?, tries = tries + 1, updated_at = ? "
                "where id = (select id from jobs where "
                "(state = 'queued' and not_before <= ?) or "
                "(state = 'grading' and lease_expires_at <= ?) "
                "order by not_before, id limit 1) "
                "returning id, attempt_id, state, tries, max_tries, lease_owner, "
                "lease_expires_at, last_error",
                (owner, now + lease_s, now, now, now),
            )
        return Job(**dict(row)) if row else None

    async def release_job(
        self,
        job: Job,
        owner: str,
        *,
        delay_s: float,
        error: str,
        refund_try: bool = False,
    ) -> bool:
        """Put a leased job back in the queue to be tried after ``delay_s``.

        ``refund_try`` uncounts the claim's try, for a pause that is not a
        failure (such as a spent daily budget), so waiting never uses up tries.
        """
        now = self.clock()
        async with self.transaction() as db:
            cursor = await db.execute(
                "update jobs set state = 'queued', lease_owner = null, "
                "lease_expires_at = null, not_before = ?, last_error = ?, updated_at = ?, "
                "tries = tries - ? "
                "where id = ? and state = 'grading' and lease_owner = ?",
                (now + delay_s, error, now, 1 if refund_try else 0, job.id, owner),
            )
            return cursor.rowcount == 1

    async def model_cost_since(self, since: float) -> float:
        """Sum the model cost (US dollars) of the grades stored since ``since``."""
        row = await self._fetchone(
            "select coalesce(sum(json_extract(verdict, '$.usage.cost_usd')), 0) as cost "
            "from attempts where graded_at >= ? and verdict is not null",
            (since,),
        )
        return float(row["cost"]) if row else 0.0

    async def expired_leases(self) -> list[Job]:
        rows = await self._fetchall(
            "select id, attempt_id, state, tries, max_tries, lease_owner, "
            "lease_expires_at, last_error from jobs "
            "where state = 'grading' and lease_expires_at <= ?",
            (self.clock(),),
        )
        return [Job(**dict(row)) for row in rows]

    async def next_job_due_at(self) -> float | None:
        row = await self._fetchone(
            "select min(case when state = 'queued' then not_before "
            "else lease_expires_at end) as due from jobs where state in ('queued', 'grading')"
        )
        return row["due"] if row and row["due"] is not None else None

    async def list_jobs(self, state: str | None = None) -> list[Job]:
        sql = (
            "select id, attempt_id, state, tries, max_tries, lease_owner, "
            "lease_expires_at, last_error from jobs"
        )
        params: list[Any] = []
        if state:
            sql += " where state = ?"
            params.append(state)
        rows = await self._fetchall(sql + " order by id", params)
        return [Job(**dict(row)) for row in rows]

    # -- outbox ----------------------------------------------------------

    async def claim_outbox(self, lease_s: float, limit: int = 10) -> list[OutboxEmail]:
        """Lease up to ``limit`` due emails for delivery and count one try each.

        An email stays ``pending`` while leased; an expired lease makes it due
        again, so a sender that died mid-delivery is retried.
        """
        now = self.clock()
        async with self.transaction() as db:
            rows = await db.execute_fetchall(
                "update outbox set lease_expires_at = ?, tries = tries + 1 "
                "where id in (select id from outbox where state = 'pending' "
                "and not_before <= ? and (lease_expires_at is null or lease_expires_at <= ?) "
                "order by not_before, id limit ?) returning *",
                (now + lease_s, now, now, limit),
            )
        return [_outbox_from_row(row) for row in rows]

    async def mark_sent(self, email_id: int, note: str | None = None) -> None:
        async with self.transaction() as db:
            await db.execute(
                "update outbox set state = 'sent', sent_at = ?, lease_expires_at = null, "
                "last_error = ? where id = ?",
                (self.clock(), note, email_id),
            )

    async def mark_retry(self, email_id: int, delay_s: float, error: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "update outbox set not_before = ?, lease_expires_at = null, last_error = ? "
                "where id = ? and state = 'pending'",
                (self.clock() + delay_s, error, email_id),
            )

    async def mark_dead(self, email_id: int, error: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "update outbox set state = 'dead', lease_expires_at = null, last_error = ? "
                "where id = ?",
                (error, email_id),
            )

    async def retry_outbox(self, email_ids: list[int] | None) -> int:
        """Make dead emails pending again; all dead ones when ``email_ids`` is None."""
        async with self.transaction() as db:
            sql = (
                "update outbox set state = 'pending', tries = 0, not_before = ?, "
                "revived_at = ?, lease_expires_at = null where state = 'dead'"
            )
            params: list[Any] = [self.clock(), self.clock()]
            if email_ids is not None:
                sql += f" and id in ({','.join('?' * len(email_ids))})"
                params.extend(email_ids)
            cursor = await db.execute(sql, params)
            return cursor.rowcount

    async def outbox_states(self, email_ids: list[int]) -> dict[int, str]:
        rows = await self._fetchall(
            f"select id, state from outbox where id in ({','.join('?' * len(email_ids))})",
            email_ids,
        )
        return {row["id"]: row["state"] for row in rows}

    async def list_outbox(
        self, state: str | None = None, limit: int = 100
    ) -> list[OutboxEmail]:
        sql = "select * from outbox"
        params: list[Any] = []
        if state:
            sql += " where state = ?"
            params.append(state)
        sql += " order by id desc limit ?"
        params.append(limit)
        return [_outbox_from_row(row) for row in await self._fetchall(sql, params)]

    async def outbox_for_attempt(self, attempt_id: int) -> list[OutboxEmail]:
        rows = await self._fetchall(
            "select * from outbox where attempt_id = ? order by id", (attempt_id,)
        )
        return [_outbox_from_row(row) for row in rows]

    async def next_outbox_due_at(self) -> float | None:
        row = await self._fetchone(
            "select min(max(not_before, coalesce(lease_expires_at, 0))) as due "
            "from outbox where state = 'pending'"
        )
        return row["due"] if row and row["due"] is not None else None

    async def export_student(self, email: str) -> dict[str, Any] | None:
        """Collect everything stored about one student, raw emails included."""
        student = await self.student_by_email(email)
        if student is None:
            return None
        attempts = [
            dict(row)
            for row in await self._fetchall(
                "select * from attempts where student_id = ? order by id", (student.id,)
            )
        ]
        inbound = [
            dict(row)
            for row in await self._fetchall(
                "select * from inbound where student_id = ? or mail_from = ? order by id",
                (student.id, student.email),
            )
        ]
        outbox = [
            dict(row)
            for row in await self._fetchall(
                "select * from outbox where attempt_id in "
                "(select id from attempts where student_id = ?) or rcpt_tos like ? "
                "order by id",
                (student.id, f'%"{student.email}"%'),
            )
        ]
        return {
            "student": student,
            "attempts": attempts,
            "inbound": inbound,
            "outbox": outbox,
        }

    async def delete_student(self, email: str) -> dict[str, int] | None:
        """Delete a student and everything stored about them, in one transaction."""
        student = await self.student_by_email(email)
        if student is None:
            return None
        counts: dict[str, int] = {}
        attempts = "(select id from attempts where student_id = ?)"
        statements = [
            (
                "thread_ids",
                f"delete from thread_ids where attempt_id in {attempts}",
                (student.id,),
            ),
            ("jobs", f"delete from jobs where attempt_id in {attempts}", (student.id,)),
            (
                "outbox",
                f"delete from outbox where attempt_id in {attempts} or rcpt_tos like ?",
                (student.id, f'%"{student.email}"%'),
            ),
            (
                "inbound",
                "delete from inbound where student_id = ? or mail_from = ?",
                (student.id, student.email),
            ),
            ("attempts", "delete from attempts where student_id = ?", (student.id,)),
            ("notices", "delete from notices where sender = ?", (student.email,)),
            ("students", "delete from students where id = ?", (student.id,)),
        ]
        async with self.transaction() as db:
            for table, sql, params in statements:
                cursor = await db.execute(sql, params)
                counts[table] = cursor.rowcount
        return counts

    async def purge_raw(self, older_than: float) -> int:
        """Delete the raw bytes of processed messages received before ``older_than``.

        Messages still waiting for intake keep their bytes.
        """
        async with self.transaction() as db:
            cursor = await db.execute(
                "update inbound set raw = x'' where received_at < ? and state != 'received' "
                "and length(raw) > 0",
                (older_than,),
            )
            return cursor.rowcount

    async def counts(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for table in ("inbound", "attempts", "jobs", "outbox"):
            rows = await self._fetchall(
                f"select state, count(*) as n from {table} group by state order by state"
            )
            result[table] = {row["state"]: row["n"] for row in rows}
        row = await self._fetchone("select count(*) as n from students")
        result["students"] = {"enrolled": row["n"] if row else 0}
        return result


# -- statements used inside a caller's transaction ---------------------------
# The intake and the worker combine these into one transaction each, so that a
# state change and the emails it causes commit together.


async def insert_outbox(db: aiosqlite.Connection, email: NewEmail, now: float) -> None:
    await db.execute(
        "insert into outbox (message_id, attempt_id, kind, envelope_from, rcpt_tos, raw, "
        "not_before, created_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            email.message_id,
            email.attempt_id,
            email.kind,
            email.envelope_from,
            json.dumps(list(email.rcpt_tos)),
            email.raw,
            now,
            now,
        ),
    )
    if email.attempt_id is not None:
        await add_thread_id(db, email.message_id, email.attempt_id)


async def add_thread_id(
    db: aiosqlite.Connection, message_id: str, attempt_id: int
) -> None:
    await db.execute(
        "insert or ignore into thread_ids (message_id, attempt_id) values (?, ?)",
        (message_id, attempt_id),
    )


async def attempt_for_message_ids(
    db: aiosqlite.Connection, message_ids: list[str]
) -> int | None:
    """Return the attempt of the newest listed id we know, searching from the end.

    References lists the oldest message first, so the last known id is the
    closest ancestor.
    """
    for message_id in reversed(message_ids):
        row = await _one(
            db, "select attempt_id from thread_ids where message_id = ?", (message_id,)
        )
        if row:
            return int(row["attempt_id"])
    return None


async def thread_kind(db: aiosqlite.Connection, message_id: str) -> str | None:
    """Return the outbox kind of a Message-ID we sent, or None for other ids."""
    row = await _one(db, "select kind from outbox where message_id = ?", (message_id,))
    return str(row["kind"]) if row else None


async def closest_known_id(
    db: aiosqlite.Connection, message_ids: list[str]
) -> str | None:
    """Return the last of ``message_ids`` that belongs to an attempt's thread."""
    for message_id in reversed(message_ids):
        if await _one(
            db, "select 1 from thread_ids where message_id = ?", (message_id,)
        ):
            return message_id
    return None


HARD_BOUNCE_LIMIT = 3


async def record_bounce(
    db: aiosqlite.Connection, envelope_to: str, status: str, hard: bool, now: float
) -> OutboxEmail | None:
    """Mark the email a bounce is about; count hard bounces per student.

    Returns the bounced email, or None when the address matches none.
    """
    row = await _one(
        db, "select * from outbox where envelope_from = ?", (envelope_to.lower(),)
    )
    if row is None:
        return None
    email = _outbox_from_row(row)
    await db.execute(
        "update outbox set bounced_at = ?, bounce_status = ? where id = ?",
        (now, status or "unknown", email.id),
    )
    if hard:
        for address in email.rcpt_tos:
            await db.execute(
                "update students set hard_bounces = hard_bounces + 1, "
                "flagged = case when hard_bounces + 1 >= ? then ? else flagged end "
                "where email = ?",
                (
                    HARD_BOUNCE_LIMIT,
                    f"{HARD_BOUNCE_LIMIT} or more hard bounces",
                    address.lower(),
                ),
            )
    return email


async def cohort_instructors_in(db: aiosqlite.Connection, cohort: str) -> list[str]:
    return [
        row["email"]
        for row in await db.execute_fetchall(
            "select email from cohort_instructors where cohort = ? order by email",
            (cohort,),
        )
    ]


async def fetch_student(db: aiosqlite.Connection, email: str) -> Student | None:
    row = await _one(
        db,
        "select id, email, name, cohort, hard_bounces, flagged from students where email = ?",
        (email.lower(),),
    )
    return Student(**dict(row)) if row else None


async def fetch_attempt(db: aiosqlite.Connection, attempt_id: int) -> Attempt | None:
    row = await _one(db, "select * from attempts where id = ?", (attempt_id,))
    return Attempt(**dict(row)) if row else None


async def attempt_by_token(db: aiosqlite.Connection, token: str) -> Attempt | None:
    row = await _one(db, "select * from attempts where token = ?", (token,))
    return Attempt(**dict(row)) if row else None


async def count_attempts(
    db: aiosqlite.Connection, student_id: int, scenario_id: str
) -> int:
    row = await _one(
        db,
        "select count(*) as n from attempts where student_id = ? and scenario_id = ?",
        (student_id, scenario_id),
    )
    return int(row["n"]) if row else 0


async def open_attempts(db: aiosqlite.Connection, student_id: int) -> list[Attempt]:
    rows = await db.execute_fetchall(
        "select * from attempts where student_id = ? and state = 'open' order by id",
        (student_id,),
    )
    return [Attempt(**dict(row)) for row in rows]


async def student_attempts(db: aiosqlite.Connection, student_id: int) -> list[Attempt]:
    rows = await db.execute_fetchall(
        "select * from attempts where student_id = ? order by id", (student_id,)
    )
    return [Attempt(**dict(row)) for row in rows]


async def create_attempt(
    db: aiosqlite.Connection,
    student_id: int,
    scenario_id: str,
    token: str | Callable[[int], str],
    now: float,
    previous_attempt_id: int | None = None,
) -> int:
    """Insert an attempt; ``token`` may be a function of the new attempt's id."""
    placeholder = token if isinstance(token, str) else f"pending-{now}-{student_id}"
    cursor = await db.execute(
        "insert into attempts (student_id, scenario_id, token, created_at, "
        "previous_attempt_id) values (?, ?, ?, ?, ?)",
        (student_id, scenario_id, placeholder, now, previous_attempt_id),
    )
    attempt_id = cursor.lastrowid
    assert attempt_id is not None
    if not isinstance(token, str):
        await db.execute(
            "update attempts set token = ? where id = ?",
            (token(attempt_id), attempt_id),
        )
    return attempt_id


async def submit_attempt(
    db: aiosqlite.Connection,
    attempt_id: int,
    *,
    inbound_id: int,
    subject: str,
    body: str,
    attachments: str,
    max_tries: int,
    now: float,
) -> None:
    """Record the submission and queue its grading job."""
    await db.execute(
        "update attempts set state = 'submitted', inbound_id = ?, subject = ?, body = ?, "
        "attachments = ?, submitted_at = ? where id = ? and state = 'open'",
        (inbound_id, subject, body, attachments, now, attempt_id),
    )
    await db.execute(
        "insert into jobs (attempt_id, max_tries, not_before, created_at, updated_at) "
        "values (?, ?, ?, ?, ?) on conflict (attempt_id) do update set "
        "state = 'queued', tries = 0, max_tries = excluded.max_tries, "
        "not_before = excluded.not_before, lease_owner = null, "
        "lease_expires_at = null, last_error = null, updated_at = excluded.updated_at",
        (attempt_id, max_tries, now, now, now),
    )


async def finish_inbound(
    db: aiosqlite.Connection,
    inbound_id: int,
    *,
    state: str,
    reason: str | None,
    now: float,
    student_id: int | None = None,
    attempt_id: int | None = None,
) -> bool:
    """Move a received message to its final state; False if another process did."""
    cursor = await db.execute(
        "update inbound set state = ?, reason = ?, student_id = ?, attempt_id = ?, "
        "processed_at = ? where id = ? and state = 'received'",
        (state, reason, student_id, attempt_id, now, inbound_id),
    )
    return cursor.rowcount == 1


async def take_digest_slot(db: aiosqlite.Connection, cohort: str, day: str) -> bool:
    """Return True the first time ``cohort``'s digest for ``day`` is claimed."""
    cursor = await db.execute(
        "insert or ignore into digests (cohort, day) values (?, ?)", (cohort, day)
    )
    return cursor.rowcount == 1


async def take_notice_slot(db: aiosqlite.Connection, sender: str, day: str) -> bool:
    """Return True the first time ``sender`` is due a notice on ``day``."""
    cursor = await db.execute(
        "insert or ignore into notices (sender, day) values (?, ?)", (sender, day)
    )
    return cursor.rowcount == 1


async def complete_job(
    db: aiosqlite.Connection, job_id: int, owner: str, now: float
) -> bool:
    """Mark a leased job done; False when the lease was lost to another worker."""
    cursor = await db.execute(
        "update jobs set state = 'done', lease_owner = null, lease_expires_at = null, "
        "updated_at = ? where id = ? and state = 'grading' and lease_owner = ?",
        (now, job_id, owner),
    )
    return cursor.rowcount == 1


async def fail_job(
    db: aiosqlite.Connection, job_id: int, owner: str, error: str, now: float
) -> bool:
    cursor = await db.execute(
        "update jobs set state = 'failed', lease_owner = null, lease_expires_at = null, "
        "last_error = ?, updated_at = ? where id = ? and state = 'grading' and lease_owner = ?",
        (error, now, job_id, owner),
    )
    return cursor.rowcount == 1


async def set_attempt_graded(
    db: aiosqlite.Connection, attempt_id: int, score: int, verdict_json: str, now: float
) -> None:
    await db.execute(
        "update attempts set state = 'graded', score = ?, verdict = ?, graded_at = ? "
        "where id = ?",
        (score, verdict_json, now, attempt_id),
    )


async def record_override(
    db: aiosqlite.Connection,
    attempt_id: int,
    instructor: str,
    commands: str,
    verdict_json: str | None,
    score: int | None,
    now: float,
) -> None:
    """Store an instructor's change with who made it, and the changed grade."""
    await db.execute(
        "insert into overrides (attempt_id, instructor, commands, created_at) "
        "values (?, ?, ?, ?)",
        (attempt_id, instructor, commands, now),
    )
    if verdict_json is not None:
        await db.execute(
            "update attempts set verdict = ?, score = ? where id = ?",
            (verdict_json, score, attempt_id),
        )


async def requeue_grading(
    db: aiosqlite.Connection, attempt_id: int, now: float
) -> bool:
    """Queue a graded or failed attempt for grading again; False if it has no job."""
    cursor = await db.execute(
        "update jobs set state = 'queued', tries = 0, not_before = ?, lease_owner = null, "
        "lease_expires_at = null, last_error = null, updated_at = ? where attempt_id = ?",
        (now, now, attempt_id),
    )
    if cursor.rowcount != 1:
        return False
    await db.execute(
        "update attempts set state = 'submitted' where id = ?", (attempt_id,)
    )
    return True


async def inbound_raw(db: aiosqlite.Connection, inbound_id: int | None) -> bytes:
    if inbound_id is None:
        return b""
    row = await _one(db, "select raw from inbound where id = ?", (inbound_id,))
    return bytes(row["raw"]) if row else b""


async def fetch_student_by_id(
    db: aiosqlite.Connection, student_id: int
) -> Student | None:
    row = await _one(
        db,
        "select id, email, name, cohort, hard_bounces, flagged from students where id = ?",
        (student_id,),
    )
    return Student(**dict(row)) if row else None


async def reopen_attempt(db: aiosqlite.Connection, attempt_id: int) -> None:
    """Make a submitted attempt open again, so the student's next email is graded."""
    await db.execute(
        "update attempts set state = 'open', submitted_at = null where id = ?",
        (attempt_id,),
    )


async def set_attempt_state(
    db: aiosqlite.Connection, attempt_id: int, state: str
) -> None:
    await db.execute("update attempts set state = ? where id = ?", (state, attempt_id))


def _outbox_from_row(row: sqlite3.Row) -> OutboxEmail:
    data = dict(row)
    data.pop("lease_expires_at", None)
    data["rcpt_tos"] = tuple(json.loads(data["rcpt_tos"]))
    return OutboxEmail(**data)
