"""Helper serve processes that share the main process's SMTP port.

One Python process serves on one core. With ``service.processes`` above 1,
``serve`` starts that many processes in all: itself and helpers. Each binds
the port with SO_REUSEPORT, so the kernel spreads new connections over the
processes. Each also runs the whole pipeline. Its listener commits mail
before the 250 and its intake takes the mail that process stored. Its
grading workers and sender take leased work from the shared SQLite file, as
they do with one process.

A helper stops on SIGTERM (closing its sessions as the main listener does)
and by itself once its parent has gone, so a killed ``serve`` leaves no
process holding the port.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
from contextlib import suppress
from dataclasses import replace
from multiprocessing.process import BaseProcess

from .config import Config
from .store import Store

logger = logging.getLogger(__name__)

# How often a helper checks that the process that started it is still alive.
PARENT_CHECK_S = 1.0
# The datagram a helper sends once it accepts connections.
READY = b"ready"


class ListenerPool:
    """The helper processes of one ``serve``, and the socket they report on.

    ``listener_only`` helpers run just the listener and the store (the
    benchmark uses them to measure ingest alone).
    """

    def __init__(
        self, config: Config, port: int, count: int, listener_only: bool = False
    ) -> None:
        self.config = config
        self.port = port
        self.count = count
        self.listener_only = listener_only
        self.processes: list[BaseProcess] = []
        self._report_socket: socket.socket | None = None
        self._ready_count = 0
        self._all_ready = asyncio.Event()

    def start(self) -> None:
        """Start the helpers; the main listener must already be bound."""
        if self.count <= 0:
            return

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        self._report_socket = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._drain)

        # "spawn" starts a fresh interpreter: forking a process with a running
        # event loop and SQLite connections is unsafe.
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLogger().level
        for index in range(self.count):
            process = context.Process(
                target=run_helper,
                args=(
                    self.config,
                    self.port,
                    theirs,
                    os.getpid(),
                    log_level,
                    self.listener_only,
                ),
                name=f"peb-mail-helper-{index + 1}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)
        theirs.close()

        logger.info(
            "helper processes started on port %d: %s",
            self.port,
            ", ".join(str(process.pid) for process in self.processes),
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every helper accepts connections; False on timeout."""
        try:
            await asyncio.wait_for(self._all_ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _drain(self) -> None:
        assert self._report_socket is not None
        while True:
            try:
                datagram = self._report_socket.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            if datagram == READY:
                self._ready_count += 1
                if self._ready_count >= self.count:
                    self._all_ready.set()

    async def stop(self, timeout_s: float) -> None:
        """Ask each helper to stop and wait up to ``timeout_s``; then kill it."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout_s
        for process in self.processes:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.to_thread(process.join, left)
            if process.is_alive():
                logger.warning(
                    "helper process %s did not stop in time; killing it", process.pid
                )
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        if self._report_socket is not None:
            asyncio.get_running_loop().remove_reader(self._report_socket.fileno())
            self._report_socket.close()
            self._report_socket = None


def run_helper(
    config: Config,
    port: int,
    report_socket: socket.socket,
    parent_pid: int,
    log_level: int,
    listener_only: bool = False,
) -> None:
    """Run one helper until SIGTERM or until the parent is gone."""
    from .logs import setup_logging

    setup_logging(
        log_level,
        redact_addresses=config.service.redact_addresses,
        fmt=config.service.log_format,
    )
    # Ctrl-C in a terminal reaches the whole process group; the parent stops
    # the helpers itself, in order, so they ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    helper_config = replace(
        config, listener=replace(config.listener, port=port, port_file=None)
    )
    asyncio.run(_run(helper_config, report_socket, parent_pid, listener_only))


async def _run(
    config: Config, report_socket: socket.socket, parent_pid: int, listener_only: bool
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if listener_only:
        from .listener import start_listener

        store = await Store.open(
            config.service.database, busy_timeout_s=config.service.busy_timeout_s
        )
        listener = await start_listener(config, store, lambda: None, reuse_port=True)
        _report_ready(report_socket)
        await _wait_for_stop(stop, parent_pid)
        await listener.close(config.service.stop_timeout_s / 2)
        await store.close()
        return

    from .service import Service

    service = Service(config, helper=True)
    await service.start()
    _report_ready(report_socket)
    await _wait_for_stop(stop, parent_pid)
    await service.stop()


def _report_ready(report_socket: socket.socket) -> None:
    try:
        report_socket.send(READY)
    except OSError as exc:
        logger.warning(
            "helper %d could not report that it is ready: %s", os.getpid(), exc
        )


async def _wait_for_stop(stop: asyncio.Event, parent_pid: int) -> None:
    """Return on SIGTERM, or once the parent process has gone."""
    while not stop.is_set() and os.getppid() == parent_pid:
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
    if not stop.is_set():
        logger.warning(
            "helper %d: serve (pid %d) is gone; stopping", os.getpid(), parent_pid
        )
