"""Extra listener processes that share the main listener's port.

One Python process serves SMTP on one core. With ``listener.processes`` above
1, ``serve`` starts that many processes in all: its own listener and helpers
that run only a listener and the store. Every socket is bound with
SO_REUSEPORT, so the kernel spreads new connections over the processes. Each
helper commits mail to the same SQLite file before its 250, exactly as the
main listener does, and wakes the main process's intake through a datagram
socket; intake also polls, so a lost wake-up only delays a message.

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
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from multiprocessing.process import BaseProcess

from .config import Config
from .store import Store

logger = logging.getLogger(__name__)

# How often a helper checks that the process that started it is still alive.
PARENT_CHECK_S = 1.0
# Datagrams from a helper: it has bound its socket, or it has stored a message.
READY = b"ready"
STORED = b"stored"


class ListenerPool:
    """The helper listener processes of one ``serve``, and their wake-up socket."""

    def __init__(
        self, config: Config, port: int, count: int, on_stored: Callable[[], None]
    ) -> None:
        self.config = config
        self.port = port
        self.count = count
        self.on_stored = on_stored
        self.processes: list[BaseProcess] = []
        self._wake_socket: socket.socket | None = None
        self._ready_count = 0
        self._all_ready = asyncio.Event()

    def start(self) -> None:
        """Start the helpers; the main listener must already be bound."""
        if self.count <= 0:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        self._wake_socket = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._drain)
        # "spawn" starts a fresh interpreter: forking a process with a running
        # event loop and SQLite connections is unsafe.
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLogger().level
        for index in range(self.count):
            process = context.Process(
                target=run_helper,
                args=(self.config, self.port, theirs, os.getpid(), log_level),
                name=f"peb-mail-listener-{index + 1}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)
        theirs.close()
        logger.info(
            "started %d more listener processes on port %d", self.count, self.port
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every helper accepts connections; False on timeout."""
        try:
            await asyncio.wait_for(self._all_ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _drain(self) -> None:
        assert self._wake_socket is not None
        woken = False
        while True:
            try:
                datagram = self._wake_socket.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            if datagram == READY:
                self._ready_count += 1
                if self._ready_count >= self.count:
                    self._all_ready.set()
            else:
                woken = True
        if woken:
            self.on_stored()

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
                    "listener process %s did not stop in time; killing it", process.pid
                )
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        if self._wake_socket is not None:
            asyncio.get_running_loop().remove_reader(self._wake_socket.fileno())
            self._wake_socket.close()
            self._wake_socket = None


def run_helper(
    config: Config,
    port: int,
    wake_socket: socket.socket,
    parent_pid: int,
    log_level: int,
) -> None:
    """Run one helper listener until SIGTERM or until the parent is gone."""
    from .logs import setup_logging

    setup_logging(
        log_level,
        redact_addresses=config.service.redact_addresses,
        fmt=config.service.log_format,
    )
    # Ctrl-C in a terminal reaches the whole process group; the parent stops
    # the helpers itself, in order, so they ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve_helper(config, port, wake_socket, parent_pid))


async def _serve_helper(
    config: Config, port: int, wake_socket: socket.socket, parent_pid: int
) -> None:
    from .listener import start_listener

    wake_socket.setblocking(False)

    def tell(datagram: bytes) -> None:
        try:
            wake_socket.send(datagram)
        except OSError:
            pass  # a full or closed socket: intake's poll finds the message

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    helper_config = replace(
        config, listener=replace(config.listener, port=port, port_file=None)
    )
    async with await Store.open(
        config.service.database, busy_timeout_s=config.service.busy_timeout_s
    ) as store:
        listener = await start_listener(
            helper_config, store, lambda: tell(STORED), reuse_port=True
        )
        tell(READY)
        logger.debug("listener process %d accepting on port %d", os.getpid(), port)
        while not stop.is_set() and os.getppid() == parent_pid:
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
        if not stop.is_set():
            logger.warning(
                "listener process %d: serve (pid %d) is gone; stopping",
                os.getpid(),
                parent_pid,
            )
        await listener.close(config.service.stop_timeout_s / 2)
