"""Benchmark peb-mail on loopback: SMTP ingest, pipeline latency, grading, memory.

Run ``python scripts/bench.py`` for the full run (about 10 minutes on 2 cores)
or ``--quick`` for a short one. Every server listens on 127.0.0.1 with port 0
(the startup test picks a free port first), every database lives in a
temporary folder under ``/tmp`` (see BENCHMARKS.md for its filesystem), and the
model is the loopback
stub from tests/model_server.py. The figures are printed as ``FIGURE name value
unit`` lines and, unless ``--no-write`` is given, written to BENCHMARKS.md.

What is measured:

1. SMTP ingest (messages/s): a bare aiosmtpd server whose handler only replies
   250, and peb-mail's real listener with durable storage (WAL,
   synchronous=FULL), alone and with one listener-only helper process on the
   same port. The load client runs in its own process, so client and server
   never share an event loop or a core's time slice.
2. Pipeline latency from the end of DATA to the feedback email reaching an
   SMTP sink, at fixed offered rates, with the offline grader and with the
   LLM grader against a zero-latency stub, with one or two serve processes.
3. Grading throughput with a stub model of fixed latency L and C requests in
   flight over two serve processes, as a fraction of the ideal C/L.
4. Peak RSS (VmHWM) of ``serve``.
5. Time from process start to the first SMTP greeting, and the first grading's
   latency after a restart against later ones.

Targets are printed next to the figures as PASS or FAIL. They are goals for
this machine class, not test assertions: timings on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOMAIN = "peb-mail.test"
SERVICE = f"practice@{DOMAIN}"
INSTRUCTOR = "instructor@school.test"
STUDENT_DOMAIN = "student.test"
LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024
# Scenario 1 is about correcting a figure in a report. This submission passes the
# pre-checks (English, more than a greeting).
SUBMISSION_SUBJECT = "Correction to the Q1 sales report"
SUBMISSION_BODY = (
    "Dear Daniel,\r\n\r\nThe March revenue for the North region is $14,200, not "
    "$12,400. I attached the corrected file and checked the other regions.\r\n\r\n"
    "Best regards,\r\nAna\r\n"
)
SERVE_ENV = {
    # litellm must not fetch its price list from the internet.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "PEB_MAIL_LLM_API_KEY": "bench-key",
}


@dataclass(frozen=True)
class Settings:
    """Sizes of one run. ``--quick`` shrinks every count and duration."""

    ingest_messages: int
    ingest_repetitions: int
    pipeline_rate: float
    pipeline_seconds: float
    # (grader, offered submissions/s, service.processes) per pipeline run.
    pipeline_runs: tuple[tuple[str, float, int], ...]
    grading_latency_s: float
    grading_concurrency: int
    grading_jobs: int
    # service.processes for the grading run; C is split evenly between them.
    grading_processes: int
    queued_jobs: int
    startup_repetitions: int


FULL = Settings(
    ingest_messages=2000,
    ingest_repetitions=3,
    pipeline_rate=100.0,
    pipeline_seconds=20.0,
    pipeline_runs=(
        ("offline", 100.0, 1),
        ("offline", 100.0, 2),
        ("llm", 100.0, 1),
        ("offline", 30.0, 1),
        ("offline", 60.0, 1),
        ("offline", 60.0, 2),
    ),
    grading_latency_s=0.2,
    grading_concurrency=8,
    grading_jobs=160,
    grading_processes=2,
    queued_jobs=10_000,
    startup_repetitions=3,
)
QUICK = Settings(
    ingest_messages=40,
    ingest_repetitions=1,
    pipeline_rate=20.0,
    pipeline_seconds=1.5,
    pipeline_runs=(("offline", 20.0, 1), ("llm", 20.0, 2)),
    grading_latency_s=0.2,
    grading_concurrency=4,
    grading_jobs=16,
    grading_processes=1,
    queued_jobs=1000,
    startup_repetitions=1,
)
SIZES = {"2KB": 2 * 1024, "50KB": 50 * 1024}
SESSIONS = (1, 10, 50)
MODES = ("new", "reused")
# A reused connection carries at most this many messages, below the listener's
# default per-session limit of 1000 calls of one command.
REUSE_LIMIT = 500


# -- a raw asyncio SMTP client ---------------------------------------------------------


class SmtpError(Exception):
    """An SMTP reply with an unexpected code."""


class RawSmtp:
    """A minimal SMTP client that sends one command and reads one reply at a time.

    The benchmark needs a client that costs less CPU than the server it loads,
    so it sends prebuilt bytes and parses only the reply codes.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawSmtp:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        client = cls(reader, writer)
        await client.expect(220)
        await client.command(b"EHLO bench.test\r\n", 250)
        return client

    async def reply(self) -> int:
        while True:
            line = await self.reader.readline()
            if not line:
                raise SmtpError("connection closed by the server")
            if line[3:4] != b"-":
                return int(line[:3])

    async def expect(self, code: int) -> None:
        got = await self.reply()
        if got != code:
            raise SmtpError(f"expected {code}, got {got}")

    async def command(self, line: bytes, code: int) -> None:
        self.writer.write(line)
        await self.expect(code)

    async def send(self, mail_from: str, rcpt: str, data: bytes) -> float:
        """Send one message and return time.time() when the end of DATA was written.

        ``data`` must already use CRLF line ends and dot-stuffing.
        """
        await self.command(f"MAIL FROM:<{mail_from}>\r\n".encode(), 250)
        await self.command(f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
        await self.command(b"DATA\r\n", 354)
        self.writer.write(data)
        self.writer.write(b".\r\n")
        ended = time.time()
        await self.expect(250)
        return ended

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT\r\n", 221)
        finally:
            self.writer.close()


def build_message(
    mail_from: str, rcpt: str, subject: str, body: str, message_id: str
) -> bytes:
    """Return CRLF message bytes ending in CRLF, dot-stuffed for DATA."""
    head = (
        f"From: {mail_from}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 01 Jun 2026 09:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    lines = (head + body).split("\r\n")
    stuffed = "\r\n".join(
        "." + line if line.startswith(".") else line for line in lines
    )
    if not stuffed.endswith("\r\n"):
        stuffed += "\r\n"
    return stuffed.encode()


def padded_body(size: int) -> str:
    """Return plain text of about ``size`` bytes in 76-column lines."""
    line = "The quarterly figures were checked again against the ledger today. "
    lines = []
    total = 0
    while total < size:
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


# -- load client process ---------------------------------------------------------------


async def _closed_loop_load(job: dict[str, Any]) -> dict[str, Any]:
    """Send ``count`` messages over ``sessions`` concurrent sessions, closed loop."""
    port = job["port"]
    body = padded_body(job["size"])
    run = job["run"]
    counter = iter(range(job["count"]))
    errors = 0
    first_error: list[str] = []

    async def session() -> None:
        nonlocal errors
        client: RawSmtp | None = None
        sent_on_connection = 0
        for index in counter:
            message_id = f"<bench-{run}-{index}@{STUDENT_DOMAIN}>"
            data = build_message(
                "load@student.test", SERVICE, "Ingest load", body, message_id
            )
            try:
                if client is None:
                    client = await RawSmtp.connect(port)
                await client.send("load@student.test", SERVICE, data)
                sent_on_connection += 1
                if job["mode"] == "new" or sent_on_connection >= REUSE_LIMIT:
                    await client.quit()
                    client = None
                    sent_on_connection = 0
            except (OSError, SmtpError) as exc:
                errors += 1
                first_error.append(f"message {index}: {type(exc).__name__}: {exc}")
                if client is not None:
                    client.writer.close()
                client = None
        if client is not None:
            await client.quit()

    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(job["sessions"])))
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "errors": errors,
        "first_error": first_error[0] if first_error else "",
        "client_cpu": (time.process_time() - cpu_before) / elapsed,
    }


async def _open_loop_load(job: dict[str, Any]) -> dict[str, Any]:
    """Send one message per item at ``rate`` per second, each on a new connection."""
    port = job["port"]
    rate = job["rate"]
    results: list[tuple[str, float, str]] = []
    start = time.monotonic() + 0.05

    async def one(index: int, mail_from: str, rcpt: str) -> None:
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        message_id = f"<sub-{index}-{job['run']}@{STUDENT_DOMAIN}>"
        data = build_message(
            mail_from, rcpt, SUBMISSION_SUBJECT, SUBMISSION_BODY, message_id
        )
        try:
            client = await RawSmtp.connect(port)
            ended = await client.send(mail_from, rcpt, data)
            await client.quit()
        except (OSError, SmtpError) as exc:
            results.append((message_id, 0.0, f"{type(exc).__name__}: {exc}"))
            return
        results.append((message_id, ended, ""))

    await asyncio.gather(
        *(one(i, sender, rcpt) for i, (sender, rcpt) in enumerate(job["items"]))
    )
    # The last message is due at start + (n - 1) / rate.
    late = time.monotonic() - (start + (len(job["items"]) - 1) / rate)
    return {"results": results, "finished_late_s": late}


def client_process(conn: Any) -> None:
    """Run load jobs sent over ``conn`` until it receives None."""
    while True:
        job = conn.recv()
        if job is None:
            return
        runner = _open_loop_load if job["kind"] == "open" else _closed_loop_load
        conn.send(asyncio.run(runner(job)))


class LoadClient:
    """The load client in its own process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=client_process, args=(child,))
        self.process.start()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(job)
        return self.conn.recv()

    async def run_async(self, job: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, job)

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(10)


# -- ingest servers --------------------------------------------------------------------


class CountingHandler:
    """aiosmtpd handler that accepts every message and stores nothing."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


async def _serve_bare(conn: Any) -> None:
    from aiosmtpd.smtp import SMTP

    handler = CountingHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=DOMAIN,
            data_size_limit=10 * MIB,
            enable_SMTPUTF8=True,
            decode_data=False,
        ),
        host=LOOPBACK,
        port=0,
    )
    conn.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def _serve_listener(conn: Any, folder: str, processes: int) -> None:
    from peb_mail.listener import start_listener
    from peb_mail.listener_pool import ListenerPool
    from peb_mail.store import Store

    config = service_config(Path(folder), service={"processes": processes})
    store = await Store.open(config.service.database)
    listener = await start_listener(
        config, store, lambda: None, reuse_port=processes > 1
    )
    pool = ListenerPool(config, listener.port, processes - 1, listener_only=True)
    pool.start()
    # The first cell must not be served by this process alone.
    if processes > 1 and not await pool.wait_ready(30.0):
        raise RuntimeError("the helper listener processes did not start in 30 s")
    conn.send(listener.port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    # Stopped like serve stops its helpers, so none reports a vanished parent.
    await pool.stop(10.0)


def server_process(kind: str, conn: Any, folder: str) -> None:
    if kind == "bare":
        asyncio.run(_serve_bare(conn))
    else:
        asyncio.run(_serve_listener(conn, folder, INGEST_PROCESSES[kind]))


# peb-mail's ingest servers: serve's listener alone, and with a helper process
# sharing its port as with service.processes = 2, both without intake.
INGEST_PROCESSES = {"peb": 1, "peb2": 2}


class IngestServer:
    """One ingest server in its own process."""

    def __init__(self, kind: str, folder: Path) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        # Not a daemon: multiprocessing forbids children of daemons, and the
        # peb-mail server starts helper listener processes.
        self.process = context.Process(
            target=server_process, args=(kind, child, str(folder))
        )
        self.process.start()
        if not parent.poll(30):
            self.stop()
            raise RuntimeError(f"the {kind} ingest server did not start in 30 s")
        self.port: int = parent.recv()

    def cpu_seconds(self) -> float:
        """CPU of the server and of the processes it started (helper listeners)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return process_cpu_seconds(pid) + sum(
            process_cpu_seconds(int(child)) for child in children
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


def process_cpu_seconds(pid: int | None) -> float:
    """Return user plus system CPU seconds of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields_after_name = stat.rsplit(")", 1)[1].split()
    ticks = int(fields_after_name[11]) + int(fields_after_name[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- config and serve ------------------------------------------------------------------


def service_data(folder: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "service": {
            "domain": DOMAIN,
            "data_dir": str(folder / "data"),
            "database": str(folder / "data" / "peb.sqlite3"),
            "secret_file": str(folder / "data" / "secret.key"),
            "scenarios_dir": str(REPO / "scenarios"),
            "prompts_dir": str(REPO / "prompts"),
        },
        "listener": {
            "host": LOOPBACK,
            "port": 0,
            "port_file": str(folder / "data" / "port"),
        },
        "outbox": {"transport": "maildir", "maildir": str(folder / "sent")},
        "cohorts": {"demo": {"instructors": [INSTRUCTOR]}},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def service_config(folder: Path, **sections: dict[str, Any]) -> Any:
    from peb_mail.config import config_from_dict

    return config_from_dict(service_data(folder, **sections), base_dir=folder)


def toml_text(data: dict[str, Any]) -> str:
    """Write the nested dict of a peb-mail config as TOML (strings, numbers, lists)."""
    lines: list[str] = []

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(part) for part in item) + "]"
        return json.dumps(str(item))

    for section, table in data.items():
        if section == "cohorts":
            for cohort, values in table.items():
                lines.append(f"[cohorts.{cohort}]")
                lines.extend(f"{key} = {value(item)}" for key, item in values.items())
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(item)}" for key, item in table.items())
    return "\n".join(lines) + "\n"


def smtp_outbox(port: int) -> dict[str, Any]:
    return {
        "transport": "smtp",
        "smarthost_host": LOOPBACK,
        "smarthost_port": port,
        "timeout_s": 10,
        "backoff_base_s": 0.2,
    }


def llm_grader(api_base: str, concurrency: int = 4) -> dict[str, Any]:
    return {
        "kind": "llm",
        "model": "openai/bench-model",
        "api_base": api_base,
        "timeout_s": 30,
        "concurrency": concurrency,
    }


async def add_students(folder: Path, count: int) -> list[str]:
    """Enrol ``count`` students in the database that serve will use."""
    from peb_mail.store import Store

    config = service_config(folder)
    store = await Store.open(config.service.database)
    addresses = [f"student{i:04d}@{STUDENT_DOMAIN}" for i in range(count)]
    await store.upsert_students(
        [(address, f"Student {i:04d}", "demo") for i, address in enumerate(addresses)],
        {"demo": [INSTRUCTOR]},
    )
    await store.close()
    return addresses


class Serve:
    """A ``python -m peb_mail serve`` process on a config written to ``folder``."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.config_path = folder / "config.toml"
        self.config_path.write_text(toml_text(data), encoding="utf-8")
        self.port_file = Path(data["listener"]["port_file"])
        self.port_file.unlink(missing_ok=True)
        self.log_path = folder / f"serve-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peb_mail",
                "serve",
                "--config",
                str(self.config_path),
            ],
            cwd=REPO,
            env={**os.environ, **SERVE_ENV},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    async def wait_port(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.port_file.read_text().strip() if self.port_file.exists() else ""
            if text:
                return int(text)
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not listen within {timeout_s} s")
            await asyncio.sleep(0.01)

    def peak_rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        assert match, "VmHWM missing from /proc/PID/status"
        return int(match.group(1)) * 1024

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    async def wait_log(
        self, pattern: str, timeout_s: float = 60.0, count: int = 1
    ) -> None:
        """Wait until the serve log (helpers included) has ``count`` matches."""
        deadline = time.monotonic() + timeout_s
        while len(re.findall(pattern, self.log_text())) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve log never matched {pattern!r}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Send SIGTERM and wait without blocking the loop (the sink runs in it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# -- an SMTP sink that timestamps arrivals ---------------------------------------------


@dataclass
class TimedSink:
    """aiosmtpd sink that records when each reply to a submission arrived."""

    port: int = 0
    count: int = 0
    # In-Reply-To of feedback emails (to a student) -> arrival time.time().
    feedback: dict[str, float] = field(default_factory=dict)
    server: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        arrived = time.time()
        self.count += 1
        raw = envelope.original_content or b""
        if INSTRUCTOR not in envelope.rcpt_tos:
            match = re.search(rb"^In-Reply-To:\s*(<[^>\r\n]+>)", raw, re.MULTILINE)
            if match:
                self.feedback.setdefault(match.group(1).decode(), arrived)
        return "250 OK"

    async def start(self) -> None:
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test"), host=LOOPBACK, port=0
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def db_scalar(database: Path, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(sql, params).fetchone()[0]


async def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(step_s)


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (fraction in 0..1)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


# -- 1. ingest -------------------------------------------------------------------------


async def bench_ingest(settings: Settings, client: LoadClient, out: Report) -> None:
    folder = Path(work_folder("ingest"))
    out.note(f"ingest database folder: {folder} ({filesystem_of(folder)})")
    servers: dict[str, IngestServer] = {}
    rates: dict[tuple[str, str, int, str], list[float]] = {}
    cpu: dict[tuple[str, str, int, str], list[float]] = {}
    client_cpu: dict[tuple[str, str, int, str], list[float]] = {}
    errors: dict[tuple[str, str, int, str], int] = {}
    run = 0
    try:
        for kind in ("bare", *INGEST_PROCESSES):
            servers[kind] = IngestServer(kind, folder / kind)
        for _ in range(settings.ingest_repetitions):
            for size_name, size in SIZES.items():
                for sessions in SESSIONS:
                    for mode in MODES:
                        # The servers take turns, so drift hits all alike.
                        for kind, server in servers.items():
                            run += 1
                            before = server.cpu_seconds()
                            result = await client.run_async(
                                {
                                    "kind": "closed",
                                    "port": server.port,
                                    "size": size,
                                    "sessions": sessions,
                                    "mode": mode,
                                    "count": settings.ingest_messages,
                                    "run": run,
                                }
                            )
                            key = (kind, size_name, sessions, mode)
                            if result["errors"]:
                                errors[key] = errors.get(key, 0) + result["errors"]
                                out.note(
                                    f"ingest {kind} {size_name} {sessions} sessions "
                                    f"{mode}: {result['errors']} failed sends, first "
                                    f"{result['first_error']}"
                                )
                            rates.setdefault(key, []).append(
                                (settings.ingest_messages - result["errors"])
                                / result["elapsed_s"]
                            )
                            cpu.setdefault(key, []).append(
                                (server.cpu_seconds() - before) / result["elapsed_s"]
                            )
                            client_cpu.setdefault(key, []).append(result["client_cpu"])
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for size_name in SIZES:
        for sessions in SESSIONS:
            for mode in MODES:
                cell = (size_name, sessions, mode)
                bare = statistics.median(rates[("bare", *cell)])
                name = f"ingest_{size_name}_{sessions}sessions_{mode}"
                out.figure(f"{name}_bare", bare, "msg/s")
                ratios = {}
                for kind, processes in INGEST_PROCESSES.items():
                    rate = statistics.median(rates[(kind, *cell)])
                    ratios[kind] = rate / bare
                    out.figure(f"{name}_durable_{processes}p", rate, "msg/s")
                    out.figure(f"{name}_ratio_{processes}p", ratios[kind], "x")
                best = max(ratios.values())
                goal = None
                if sessions >= 10:
                    goal = 0.9 if size_name == "2KB" else 0.85
                out.figure(f"{name}_ratio_best", best, "x", goal=goal)
                row = [size_name, str(sessions), mode, f"{bare:.0f}"]
                for kind in INGEST_PROCESSES:
                    row += [
                        f"{statistics.median(rates[(kind, *cell)]):.0f}",
                        f"{ratios[kind]:.2f}",
                    ]
                row.append(verdict(best >= goal) if goal else "-")
                row += [
                    f"{statistics.median(cpu[(kind, *cell)]):.0%}"
                    for kind in ("bare", *INGEST_PROCESSES)
                ]
                row.append(f"{statistics.median(client_cpu[('peb', *cell)]):.0%}")
                row.append(
                    str(
                        sum(
                            errors.get((kind, *cell), 0)
                            for kind in ("bare", *INGEST_PROCESSES)
                        )
                    )
                )
                rows.append(row)
    out.table(
        "SMTP ingest (messages/s, median of "
        f"{settings.ingest_repetitions}, {settings.ingest_messages} messages per "
        "cell; the target is checked on the better of the two peb-mail ratios)",
        [
            "size",
            "sessions",
            "connection",
            "bare aiosmtpd",
            "peb-mail, 1 process",
            "ratio",
            "peb-mail, 2 processes",
            "ratio",
            "target",
            "bare CPU",
            "peb CPU",
            "peb 2p CPU",
            "client CPU",
            "failed sends",
        ],
        rows,
    )
    smtp_sink = shutil.which("smtp-sink")
    out.note(
        f"Postfix smtp-sink found at {smtp_sink}, but not run by this script"
        if smtp_sink
        else "Postfix smtp-sink and smtp-source are not installed, so there is no "
        "protocol ceiling from a C server."
    )


# All temporary folders of one run live under this folder, removed at the end.
WORK_ROOT: list[Path] = []


def work_folder(name: str) -> str:
    """Create a fresh folder for one section under the run's work folder."""
    if not WORK_ROOT:
        WORK_ROOT.append(Path(tempfile.mkdtemp(prefix="mailbench-")))
    return tempfile.mkdtemp(prefix=f"{name}-", dir=WORK_ROOT[0])


def filesystem_of(path: Path) -> str:
    """Return the filesystem type and device of the mount that contains ``path``."""
    best = ("", "?", "?")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} on {best[2]}"


# -- 2. pipeline latency ---------------------------------------------------------------


async def bench_pipeline(
    settings: Settings,
    client: LoadClient,
    out: Report,
    grader: str,
    rate: float,
    processes: int,
) -> int:
    """Measure end-of-DATA to feedback latency and return serve's peak RSS.

    ``rate`` is the offered load in submissions per second, and ``processes``
    is service.processes.
    """
    from tests.model_server import ModelServer

    count = max(1, round(rate * settings.pipeline_seconds))
    folder = Path(work_folder(f"pipeline-{grader}-{processes}p-{rate:.0f}"))
    sink = TimedSink()
    await sink.start()
    model = ModelServer() if grader == "llm" else None
    if model is not None:
        await model.start()
    # One student per submission: START of a scenario the student already has
    # open returns that attempt instead of creating another.
    students = await add_students(folder, count)
    sections: dict[str, dict[str, Any]] = {"outbox": smtp_outbox(sink.port)}
    if model is not None:
        sections["grader"] = llm_grader(model.api_base)
    sections["service"] = {"processes": processes}
    serve = Serve(folder, service_data(folder, **sections))
    database = folder / "data" / "peb.sqlite3"
    try:
        port = await serve.wait_port()
        if grader == "llm":
            await serve.wait_log(r"LLM grader ready")
        # Untimed phase: one START per submission creates its attempt.
        starts = [
            (students[i % len(students)], f"<start-{i}@{STUDENT_DOMAIN}>")
            for i in range(count)
        ]
        await send_starts(port, starts)
        await wait_until(
            lambda: db_scalar(database, "select count(*) from attempts") >= count,
            600,
            "START commands to create attempts",
        )
        await wait_until(
            lambda: (
                db_scalar(database, "select count(*) from outbox where state != 'sent'")
                == 0
            ),
            600,
            "briefs to reach the sink",
        )
        with sqlite3.connect(database) as db:
            rows = db.execute(
                "select s.email, a.token from attempts a join students s "
                "on s.id = a.student_id order by a.id"
            ).fetchall()
        items = [(email_, f"reply+{token}@{DOMAIN}") for email_, token in rows]
        result = await client.run_async(
            {
                "kind": "open",
                "port": port,
                "rate": rate,
                "items": items,
                "run": grader,
            }
        )
        sent = [(mid, ended) for mid, ended, error in result["results"] if not error]
        failed = [error for _, _, error in result["results"] if error]
        try:
            await wait_until(
                lambda: all(mid in sink.feedback for mid, _ in sent),
                300,
                "feedback emails",
                step_s=0.05,
            )
        except RuntimeError as exc:
            out.note(f"pipeline {grader}: {exc}")
        peak = serve.peak_rss_bytes()
        stages = stage_times(database)
    finally:
        await serve.stop()
        await sink.stop()
        if model is not None:
            await model.stop()

    latencies = [
        (sink.feedback[mid] - ended) * 1000
        for mid, ended in sent
        if mid in sink.feedback
    ]
    missing = len(sent) - len(latencies)
    name = f"pipeline_{grader}_{processes}p_{rate:.0f}"
    out.figure(f"{name}_submissions", len(sent), "count")
    out.figure(f"{name}_missing", missing + len(failed), "count")
    out.figure(f"{name}_client_late", result["finished_late_s"] * 1000, "ms")
    if not latencies:
        raise RuntimeError(f"no feedback email arrived in the {grader} pipeline run")
    p50, p95, p99 = (percentile(latencies, f) for f in (0.5, 0.95, 0.99))
    out.figure(f"{name}_p50", p50, "ms")
    out.figure(f"{name}_p95", p95, "ms")
    out.figure(f"{name}_p99", p99, "ms", goal=100.0, lower_is_better=True)
    breakdown = stage_breakdown(stages, dict(sent), sink.feedback)
    # The target is set for 100/s; slower runs only show where it holds.
    if rate >= 100:
        within_target = verdict(p99 <= 100.0)
    else:
        within_target = "yes" if p99 <= 100.0 else "no"
    out.pipeline_rows.append(
        [
            grader,
            str(processes),
            f"{rate:.0f}/s x {settings.pipeline_seconds:g} s",
            str(len(sent)),
            str(missing + len(failed)),
            f"{p50:.0f}",
            f"{p95:.0f}",
            f"{p99:.0f}",
            within_target,
            breakdown,
        ]
    )
    if failed:
        out.note(f"pipeline {grader}: {len(failed)} sends failed, first: {failed[0]}")
    return peak


async def send_starts(port: int, starts: list[tuple[str, str]]) -> None:
    """Send START 1 for each (student, Message-ID) over 10 reused connections."""
    queue = iter(starts)

    async def session() -> None:
        client = await RawSmtp.connect(port)
        for student, message_id in queue:
            data = build_message(student, SERVICE, "START 1", "START 1\r\n", message_id)
            await client.send(student, SERVICE, data)
        await client.quit()

    await asyncio.gather(*(session() for _ in range(min(10, len(starts)))))


def stage_times(database: Path) -> dict[str, tuple[float, ...]]:
    """Map each submission's Message-ID to its stored stage timestamps."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "select i.message_id, i.received_at, i.processed_at, a.graded_at, "
            "o.sent_at from inbound i join attempts a on a.inbound_id = i.id "
            "join outbox o on o.attempt_id = a.id and o.kind = 'feedback'"
        ).fetchall()
    return {f"<{row[0].strip('<>')}>": tuple(row[1:]) for row in rows}


def stage_breakdown(
    stages: dict[str, tuple[float, ...]],
    ended: dict[str, float],
    arrived: dict[str, float],
) -> str:
    """Summarise p50/p99 per stage in ms: stored, intake, graded, delivered."""
    parts: dict[str, list[float]] = {
        "stored": [],
        "intake": [],
        "graded": [],
        "sent": [],
    }
    for mid, times in stages.items():
        if mid not in ended or mid not in arrived or None in times:
            continue
        received, processed, graded, _ = times
        parts["stored"].append((received - ended[mid]) * 1000)
        parts["intake"].append((processed - received) * 1000)
        parts["graded"].append((graded - processed) * 1000)
        parts["sent"].append((arrived[mid] - graded) * 1000)
    if not parts["stored"]:
        return "-"
    return ", ".join(
        f"{name} {percentile(values, 0.5):.0f}/{percentile(values, 0.99):.0f}"
        for name, values in parts.items()
    )


# -- 3. grading throughput -------------------------------------------------------------


async def insert_jobs(
    database: Path, count: int, *, due: bool, student: str = f"bench@{STUDENT_DOMAIN}"
) -> None:
    """Insert ``count`` submitted attempts with queued jobs through the store helpers.

    With ``due=False`` each job's not_before is a day ahead, so serve keeps
    them queued and idle.
    """
    from peb_mail import store as sql
    from peb_mail.store import Store

    store = await Store.open(database)
    await store.upsert_students([(student, "Bench Student", "demo")], {})
    now = time.time()
    async with store.transaction() as db:
        async with db.execute(
            "select id from students where email = ?", (student,)
        ) as cur:
            student_id = (await cur.fetchone())["id"]
        for index in range(count):
            attempt_id = await sql.create_attempt(
                db, student_id, "correct-error-in-report", f"benchtoken{index}", now
            )
            await sql.submit_attempt(
                db,
                attempt_id,
                inbound_id=0,
                subject=SUBMISSION_SUBJECT,
                body=SUBMISSION_BODY.replace("\r\n", "\n"),
                attachments="[]",
                max_tries=5,
                now=now,
            )
        if not due:
            await db.execute("update jobs set not_before = ?", (now + 86400,))
    await store.close()


async def bench_grading(settings: Settings, out: Report) -> None:
    from tests.model_server import ModelServer, ScriptedReply

    concurrency = settings.grading_concurrency
    latency = settings.grading_latency_s
    count = settings.grading_jobs
    processes = settings.grading_processes
    folder = Path(work_folder("grading"))
    database = folder / "data" / "peb.sqlite3"
    # Queued but not due until every process reports its grader ready, so
    # no process starts while another one is still importing litellm.
    await insert_jobs(database, count, due=False)
    async with ModelServer() as model:
        model.push(*(ScriptedReply(delay_s=latency) for _ in range(count)))
        data = service_data(
            folder,
            grader=llm_grader(model.api_base, concurrency // processes),
            # The jobs become due by a database update that no process is
            # woken for, so each process must poll for them promptly.
            queue={"workers": concurrency // processes, "poll_interval_s": 0.05},
            service={"processes": processes},
        )
        serve = Serve(folder, data)
        try:
            await serve.wait_port()
            await serve.wait_log(r"LLM grader ready", count=processes)
            with sqlite3.connect(database) as db:
                db.execute("update jobs set not_before = 0")
            # The model stub shares this event loop, so the wait polls the
            # database only every 0.1 s. The times come from the stub's arrival
            # log and the jobs' own finishing times instead.
            await wait_until(
                lambda: (
                    db_scalar(
                        database, "select count(*) from jobs where state = 'done'"
                    )
                    >= count
                ),
                120,
                "every grading job",
                step_s=0.1,
            )
            last_done = db_scalar(database, "select max(updated_at) from jobs")
            elapsed = last_done - model.arrived_at[0]
            in_flight = model.max_in_flight
        finally:
            await serve.stop()
    rate = count / elapsed
    ideal = concurrency / latency
    out.figure("grading_rate", rate, "jobs/s")
    out.figure("grading_ideal", ideal, "jobs/s")
    out.figure("grading_max_in_flight", in_flight, "count")
    out.figure("grading_fraction", rate / ideal, "x", goal=0.9)
    out.grading_row = [
        f"{latency * 1000:.0f} ms",
        str(concurrency),
        str(processes),
        str(count),
        f"{rate:.1f}",
        f"{ideal:.1f}",
        f"{rate / ideal:.2f}",
        str(in_flight),
        verdict(rate / ideal >= 0.9),
    ]


# -- 4 and 5. memory and startup -------------------------------------------------------


async def first_greeting_s(port: int, started: float, timeout_s: float = 30.0) -> float:
    """Connect in a tight loop until the server's 220 greeting arrives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            await asyncio.sleep(0.001)
            continue
        line = await reader.readline()
        elapsed = time.perf_counter() - started
        writer.close()
        if line.startswith(b"220"):
            return elapsed
    raise RuntimeError(f"no SMTP greeting on port {port} within {timeout_s} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def idle_serve(folder: Path, queued: int) -> tuple[float, int]:
    """Start serve (offline) on ``queued`` idle jobs.

    Returns the seconds to the first greeting and the peak RSS in bytes.
    """
    database = folder / "data" / "peb.sqlite3"
    if queued:
        await insert_jobs(database, queued, due=False)
    port = free_port()
    data = service_data(folder, listener={"port": port})
    serve = Serve(folder, data)
    try:
        startup = await first_greeting_s(port, serve.started)
        await serve.wait_log(r"grader \S+ ready")
        # Let the workers and the sender poll a few times.
        await asyncio.sleep(1.5)
        peak = serve.peak_rss_bytes()
    finally:
        await serve.stop()
    return startup, peak


async def bench_memory_startup(
    settings: Settings, out: Report, pipeline_peaks: dict[str, int]
) -> None:
    startups = []
    idle_peaks = []
    for _ in range(settings.startup_repetitions):
        folder = Path(work_folder("idle"))
        startup, peak = await idle_serve(folder, 0)
        startups.append(startup)
        idle_peaks.append(peak)
    folder = Path(work_folder("queued"))
    _, queued_peak = await idle_serve(folder, settings.queued_jobs)
    idle = statistics.median(idle_peaks)
    startup = statistics.median(startups)
    offline_peak = max(idle, pipeline_peaks.get("offline", 0))
    out.figure("rss_offline_idle", idle / MIB, "MiB")
    out.figure(
        "rss_offline_loaded", offline_peak / MIB, "MiB", goal=64, lower_is_better=True
    )
    out.figure(
        "rss_llm_loaded",
        pipeline_peaks.get("llm", 0) / MIB,
        "MiB",
        goal=256,
        lower_is_better=True,
    )
    growth = (queued_peak - idle) / MIB
    out.figure(f"rss_queued_{settings.queued_jobs}", queued_peak / MIB, "MiB")
    out.figure("rss_queued_growth", growth, "MiB", goal=8, lower_is_better=True)
    out.figure("startup_first_greeting", startup, "s", goal=0.5, lower_is_better=True)
    out.memory_rows = [
        ["offline, idle after start", f"{idle / MIB:.1f}", "-"],
        [
            "offline, after the pipeline run",
            f"{offline_peak / MIB:.1f}",
            f"<= 64: {verdict(offline_peak <= 64 * MIB)}",
        ],
        [
            "llm (litellm loaded), after the pipeline run",
            f"{pipeline_peaks.get('llm', 0) / MIB:.1f}",
            f"<= 256: {verdict(pipeline_peaks.get('llm', 0) <= 256 * MIB)}",
        ],
        [
            f"offline, idle with {settings.queued_jobs} queued jobs",
            f"{queued_peak / MIB:.1f} ({growth:+.1f} vs idle)",
            f"growth <= 8: {verdict(growth <= 8)}",
        ],
    ]
    out.startup_rows.append(
        [
            "process start to first SMTP greeting (offline)",
            f"{startup * 1000:.0f} ms",
            f"<= 500 ms: {verdict(startup <= 0.5)}",
        ]
    )


async def ten_submissions(
    folder: Path, data: dict[str, Any], sink: TimedSink, wait_ready: bool
) -> tuple[float, list[float], list[float]]:
    """Start serve on ``data`` and send the next ten open attempts, one at a time.

    Returns the time to the first greeting, each submission's latency from the
    end of DATA to its feedback (ms), and the worker log's job times (ms).
    """
    database = folder / "data" / "peb.sqlite3"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "select s.email, a.token from attempts a join students s "
            "on s.id = a.student_id where a.state = 'open' order by a.id limit 10"
        ).fetchall()
    port = free_port()
    data["listener"]["port"] = port
    serve = Serve(folder, data)
    latencies = []
    try:
        startup = await first_greeting_s(port, serve.started)
        if wait_ready:
            await serve.wait_log(r"grader llm ready")
        for index, (student, token) in enumerate(rows):
            message_id = f"<first-{wait_ready}-{index}@{STUDENT_DOMAIN}>"
            rcpt = f"reply+{token}@{DOMAIN}"
            client = await RawSmtp.connect(port)
            raw = build_message(
                student, rcpt, SUBMISSION_SUBJECT, SUBMISSION_BODY, message_id
            )
            ended = await client.send(student, rcpt, raw)
            await client.quit()
            await wait_until(
                lambda mid=message_id: mid in sink.feedback, 60, "feedback"
            )
            latencies.append((sink.feedback[message_id] - ended) * 1000)
        log = serve.log_text()
    finally:
        await serve.stop()
    job_lines = [line for line in log.splitlines() if "peb_mail.worker: job" in line]
    job_times = [
        float(match.group(1)) * 1000
        for line in job_lines
        if (match := re.search(r" in ([\d.]+)s$", line))
    ]
    return startup, latencies, job_times


async def bench_first_grading(out: Report) -> None:
    """Restart serve (llm, zero-latency stub) and time ten submissions in a row.

    A first serve creates 20 attempts with START commands and stops. The next
    serve gets a submission as soon as it greets (cold), and a third one only
    after it logs that the grader is ready (warm-up done).
    """
    from tests.model_server import ModelServer

    folder = Path(work_folder("first"))
    database = folder / "data" / "peb.sqlite3"
    students = await add_students(folder, 20)
    sink = TimedSink()
    await sink.start()
    try:
        async with ModelServer() as model:
            data = service_data(
                folder, outbox=smtp_outbox(sink.port), grader=llm_grader(model.api_base)
            )
            serve = Serve(folder, data)
            try:
                port = await serve.wait_port()
                await send_starts(
                    port,
                    [
                        (student, f"<first-start-{i}@{STUDENT_DOMAIN}>")
                        for i, student in enumerate(students)
                    ],
                )
                await wait_until(
                    lambda: db_scalar(database, "select count(*) from attempts") >= 20,
                    60,
                    "twenty attempts",
                )
                await wait_until(
                    lambda: (
                        db_scalar(
                            database,
                            "select count(*) from outbox where state != 'sent'",
                        )
                        == 0
                    ),
                    60,
                    "briefs to reach the sink",
                )
            finally:
                await serve.stop()
            startup, cold, cold_jobs = await ten_submissions(folder, data, sink, False)
            _, warm, warm_jobs = await ten_submissions(folder, data, sink, True)
    finally:
        await sink.stop()

    out.figure(
        "startup_first_greeting_llm", startup, "s", goal=0.5, lower_is_better=True
    )
    out.figure("first_grading_latency", cold[0], "ms")
    out.figure("tenth_grading_latency", cold[-1], "ms")
    out.figure("first_vs_tenth", cold[0] / cold[-1], "x")
    out.figure("first_grading_latency_after_warm_up", warm[0], "ms")
    out.figure("tenth_grading_latency_after_warm_up", warm[-1], "ms")
    out.figure(
        "first_vs_tenth_after_warm_up",
        warm[0] / warm[-1],
        "x",
        goal=2.0,
        lower_is_better=True,
    )
    out.startup_rows.extend(
        [
            [
                "process start to first SMTP greeting (llm)",
                f"{startup * 1000:.0f} ms",
                f"<= 500 ms: {verdict(startup <= 0.5)}",
            ],
            [
                "submitted at the first greeting: 1st / 10th / median of 2nd-10th, "
                "end of DATA to feedback (llm, 0 ms stub)",
                f"{cold[0]:.0f} / {cold[-1]:.0f} / {statistics.median(cold[1:]):.0f} ms",
                "- (the 1st waits for the warm-up, which imports litellm)",
            ],
            [
                "submitted after the log says the grader is ready: 1st / 10th / "
                "median of 2nd-10th",
                f"{warm[0]:.0f} / {warm[-1]:.0f} / {statistics.median(warm[1:]):.0f} ms",
                f"1st <= 2x 10th: {verdict(warm[0] <= 2 * warm[-1])}",
            ],
        ]
    )
    out.note(
        "worker log, grading job time (ms) for the ten submissions sent at the "
        "first greeting: " + ", ".join(f"{value:.0f}" for value in cold_jobs)
    )
    out.note(
        "worker log, grading job time (ms) for the ten submissions sent after "
        "warm-up: " + ", ".join(f"{value:.0f}" for value in warm_jobs)
    )


# -- report ----------------------------------------------------------------------------


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


@dataclass
class Report:
    """Collected figures and the markdown tables built from them."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pipeline_rows: list[list[str]] = field(default_factory=list)
    grading_row: list[str] = field(default_factory=list)
    memory_rows: list[list[str]] = field(default_factory=list)
    startup_rows: list[list[str]] = field(default_factory=list)

    def figure(
        self,
        name: str,
        value: float,
        unit: str,
        goal: float | None = None,
        lower_is_better: bool = False,
    ) -> None:
        text = f"FIGURE {name} {value:.3f} {unit}"
        if goal is not None:
            passed = value <= goal if lower_is_better else value >= goal
            sign = "<=" if lower_is_better else ">="
            text += f"  target {sign} {goal:g}: {verdict(passed)}"
        print(text, flush=True)

    def note(self, text: str) -> None:
        print(f"NOTE {text}", flush=True)
        self.notes.append(text)

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        self.lines.append(f"### {title}\n")
        self.lines.append(markdown_table(header, rows))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(out) + "\n"


def machine_text() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(
        r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M
    )
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("aiosmtpd", "aiosmtplib", "aiosqlite", "litellm", "aiohttp")
    )
    return "\n".join(
        [
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} cores, "
            f"{model.group(1).strip() if model else 'unknown CPU'}, "
            f"{int(memory.group(1)) / 1024 / 1024:.1f} GiB memory"
            if memory
            else "- machine: unknown memory",
            f"- kernel: {platform.release()}",
            f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
            f"- libraries: {versions}",
            f"- databases: {filesystem_of(Path(tempfile.gettempdir()))} "
            "(WAL; received mail committed with synchronous=FULL, later steps NORMAL)",
        ]
    )


def markdown(report: Report, settings: Settings, quick: bool, took_s: float) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Measured by `python scripts/bench.py"
        + (" --quick" if quick else "")
        + f"` (took {took_s:.0f} s). Everything runs on 127.0.0.1; each load "
        "client runs in its own process. Timings on shared machines are noisy: "
        "compare runs on one machine, not across machines.",
        "",
        machine_text(),
        "",
        *report.lines,
        "### Pipeline latency, end of DATA to the feedback email at the sink (ms)",
        "",
        "Stages (p50/p99 ms): stored = DATA end to inbound.received_at; intake = "
        "to inbound.processed_at; graded = to attempts.graded_at; sent = to the "
        "sink's arrival time. serve runs with the shipped queue settings (2 "
        "workers and grader concurrency 4 per process, outbox concurrency 4) and "
        "instructor summaries on; processes is service.processes. The target "
        "is for 100/s; the slower runs of the full benchmark show up to which "
        "rate it holds here.",
        "",
        markdown_table(
            [
                "grader",
                "processes",
                "offered load",
                "submissions",
                "missing",
                "p50",
                "p95",
                "p99",
                "p99 <= 100 ms",
                "stages p50/p99",
            ],
            report.pipeline_rows,
        ),
        "### Grading throughput (stub model with fixed latency)",
        "",
        "grader.concurrency and queue.workers are both C / processes in each of "
        "the serve processes. Rate = jobs / (time from the first model request "
        "to the last job done).",
        "",
        markdown_table(
            [
                "latency L",
                "C",
                "processes",
                "jobs",
                "jobs/s",
                "ideal C/L",
                "fraction",
                "max in flight",
                ">= 0.9",
            ],
            [report.grading_row],
        ),
        "### Peak RSS of serve (VmHWM, MiB)",
        "",
        "Queued jobs are inserted with the store helpers (create_attempt, "
        "submit_attempt) before serve starts, with not_before a day ahead so "
        "they stay queued; serve then idles for 1.5 s after the grader is ready.",
        "",
        markdown_table(["case", "MiB", "target"], report.memory_rows),
        "### Startup and the first grading",
        "",
        markdown_table(["figure", "value", "target"], report.startup_rows),
        "### Notes",
        "",
        *[f"- {note}" for note in report.notes],
        "",
    ]
    return "\n".join(parts)


async def timed(report: Report, section: str, work: Any) -> Any:
    started = time.perf_counter()
    result = await work
    report.note(f"section {section} took {time.perf_counter() - started:.1f} s")
    return result


async def main_async(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else FULL
    report = Report()
    started = time.perf_counter()
    try:
        await run_sections(settings, report, tuple(args.only or SECTIONS))
    finally:
        if WORK_ROOT and not args.keep:
            shutil.rmtree(WORK_ROOT[0], ignore_errors=True)
        elif WORK_ROOT:
            print(f"kept the temporary files in {WORK_ROOT[0]}")
    took = time.perf_counter() - started
    text = markdown(report, settings, args.quick, took)
    print(text)
    if not args.no_write and not args.only:
        (REPO / "BENCHMARKS.md").write_text(text, encoding="utf-8")
        print(f"wrote {REPO / 'BENCHMARKS.md'}")
    return 0


SECTIONS = ("ingest", "pipeline", "grading", "memory", "first")


async def run_sections(
    settings: Settings, report: Report, only: tuple[str, ...] = SECTIONS
) -> None:
    client = LoadClient()
    peaks: dict[str, int] = {}
    try:
        if "ingest" in only:
            await timed(report, "ingest", bench_ingest(settings, client, report))
        if "pipeline" in only:
            for grader, rate, processes in settings.pipeline_runs:
                peak = await timed(
                    report,
                    f"pipeline {grader} {processes}p {rate:.0f}/s",
                    bench_pipeline(settings, client, report, grader, rate, processes),
                )
                if rate >= settings.pipeline_rate:
                    peaks[grader] = max(peaks.get(grader, 0), peak)
    finally:
        client.close()
    if "grading" in only:
        await timed(report, "grading", bench_grading(settings, report))
    if "memory" in only:
        await timed(report, "memory", bench_memory_startup(settings, report, peaks))
    if "first" in only:
        await timed(report, "first grading", bench_first_grading(report))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run a short benchmark: few messages, one repetition",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the results without writing BENCHMARKS.md",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (may be given more than once); "
        "BENCHMARKS.md is then left as it is",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary databases and serve logs (the path is printed)",
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
