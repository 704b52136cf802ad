"""Helper serve processes: they share the port, store mail and process it."""

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

from peb_mail.errors import ConfigError
from peb_mail.service import Service

from .conftest import DOMAIN, SERVICE, STUDENT, make_config


def message(index: int) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"Ana Silva <{STUDENT}>"
    mail["To"] = SERVICE
    mail["Subject"] = f"Question {index}"
    mail["Message-ID"] = make_msgid(domain="student.test")
    mail.set_content("Hello, is this the right address?\n\nAna")
    return mail


def inbound_states(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [row[0] for row in db.execute("select state from inbound order by id")]


async def wait_for(check, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_pool_helpers_store_and_process(tmp_path: Path) -> None:
    # Intake polls only every 60 s here, and a message counts as stale only
    # minutes after it arrived, so a prompt intake shows that each helper
    # processes the mail it stored itself.
    config = make_config(
        tmp_path, service={"processes": 3}, queue={"poll_interval_s": 60.0}
    )
    service = Service(config)
    await service.start()
    assert service.listener is not None and service.listener_pool is not None
    try:
        assert await service.listener_pool.wait_ready(20.0)
        # With serve's own socket closed, only the helpers can take connections.
        service.listener.server.close()
        for index in range(6):
            await aiosmtplib.send(
                message(index), hostname="127.0.0.1", port=service.port, timeout=10
            )
        database = config.service.database
        assert len(inbound_states(database)) == 6
        processed = await wait_for(
            lambda: "received" not in inbound_states(database), timeout_s=10.0
        )
        assert processed, inbound_states(database)
        processes = service.listener_pool.processes
        assert len(processes) == 2
        assert all(process.is_alive() for process in processes)
    finally:
        await service.stop()
    assert not any(process.is_alive() for process in processes)


def test_pool_processes_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failed:
        make_config(tmp_path, service={"processes": 0})
    assert "service.processes" in str(failed.value)


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="needs Linux /proc for child pids"
)
async def test_pool_helpers_exit_after_kill(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[service]
domain = "{DOMAIN}"
data_dir = "{tmp_path / "data"}"

processes = 2

[listener]
host = "127.0.0.1"
port = 0
port_file = "{port_file}"
""",
        encoding="utf-8",
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "peb_mail", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = await wait_for(
            lambda: port_file.exists() and port_file.read_text().strip() != "",
            timeout_s=20.0,
        )
        assert started
        # multiprocessing also starts its resource tracker; the helper is the
        # child that accepts SMTP, so find it by its command line.
        helpers: list[int] = []

        def helper_started() -> bool:
            helpers[:] = [
                pid
                for pid in child_pids(serve.pid)
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            return len(helpers) == 1

        assert await wait_for(helper_started)
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        gone = await wait_for(lambda: not alive(helpers[0]), timeout_s=10.0)
        assert gone
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)
