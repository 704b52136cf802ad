"""Run the listener, intake, grading workers and sender in one asyncio process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import suppress

from . import __version__
from .compose import Composer
from .config import Config
from .errors import ListenError
from .intake import Intake
from .listener import Listener, start_listener
from .listener_pool import ListenerPool
from .models import Grader, Scenario
from .scenarios import load_scenarios
from .sender import Sender, make_transport
from .store import Store
from .worker import GradingWorker, _wait_any, worker_name

logger = logging.getLogger(__name__)


def make_grader(config: Config) -> Grader:
    """Build the configured grader. Both run the deterministic pre-checks."""
    grader = config.grader
    if grader.kind == "llm":
        from .llm_grader import LLMGrader

        # LLMGrader runs the pre-checks itself, so its prompt can say what
        # was removed.
        return LLMGrader(
            grader.model,
            api_base=grader.api_base or None,
            api_key=grader.api_key,
            timeout_s=grader.timeout_s,
            max_output_tries=grader.max_output_tries,
            prompts_dir=config.service.prompts_dir,
            fallback_models=grader.fallback_models,
            max_provider_retries=grader.max_provider_retries,
            backoff_base_s=grader.provider_backoff_base_s,
            backoff_max_s=grader.provider_backoff_max_s,
            max_retry_after_s=grader.max_retry_after_s,
            concurrency=grader.concurrency,
        )
    from .offline_grader import OfflineGrader
    from .precheck import PrecheckedGrader

    return PrecheckedGrader(OfflineGrader())


class Service:
    """The whole pipeline; ``start`` returns once the listener accepts mail."""

    def __init__(
        self,
        config: Config,
        scenarios: list[Scenario] | None = None,
        helper: bool = False,
    ) -> None:
        """``helper`` marks a process that a main serve process started.

        A helper listens on the main process's port and runs intake, workers
        and a sender, but starts no processes, writes no port file and leaves
        the daily digest and the retention purge to the main process.
        """
        self.config = config
        self.helper = helper
        self.scenarios = (
            scenarios
            if scenarios is not None
            else load_scenarios(config.service.scenarios_dir)
        )
        self.stop_event = asyncio.Event()
        self.intake_wake = asyncio.Event()
        self.grading_wake = asyncio.Event()
        self.sending_wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.store: Store | None = None
        self.listener: Listener | None = None
        self.listener_pool: ListenerPool | None = None
        self.port: int | None = None

    async def start(self) -> None:
        config = self.config
        self.store = await Store.open(
            config.service.database, busy_timeout_s=config.service.busy_timeout_s
        )
        # The listener starts first so mail is accepted before the slower parts
        # (templates, the model client) are ready.
        shared_port = config.service.processes > 1
        try:
            self.listener = await start_listener(
                config, self.store, self.intake_wake.set, reuse_port=shared_port
            )
        except OSError as exc:
            await self.store.close()
            self.store = None
            raise ListenError(
                f"cannot listen on {config.listener.host}:{config.listener.port}: "
                f"{exc.strerror or exc}; stop the other program on that port or "
                "change listener.port"
            ) from exc
        self.port = self.listener.port
        if shared_port and not self.helper:
            self.listener_pool = ListenerPool(
                config, self.port, config.service.processes - 1
            )
            self.listener_pool.start()
        if config.listener.port_file and not self.helper:
            config.listener.port_file.parent.mkdir(parents=True, exist_ok=True)
            config.listener.port_file.write_text(f"{self.port}\n")
        logger.info(
            "peb-mail %s (%s pid %d) listening on %s:%d for %s; database %s; "
            "grader %s; outbox %s; %d scenarios",
            __version__,
            "helper" if self.helper else "main",
            os.getpid(),
            config.listener.host,
            self.port,
            config.service.domain,
            config.service.database,
            config.grader.model if config.grader.kind == "llm" else "offline",
            config.outbox.transport,
            len(self.scenarios),
        )
        for job in await self.store.expired_leases():
            logger.warning(
                "job %d (attempt %d) has an expired lease from %s; it will be taken over",
                job.id,
                job.attempt_id,
                job.lease_owner,
            )

        composer = Composer(config)
        grader = make_grader(config)
        self.tasks.append(
            asyncio.create_task(self._warm_up(composer, grader), name="warm-up")
        )
        intake = Intake(self.store, composer, self.scenarios, config)
        self.tasks.append(asyncio.create_task(self._run_intake(intake), name="intake"))
        for index in range(config.queue.workers):
            worker = GradingWorker(
                store=self.store,
                composer=composer,
                grader=grader,
                scenarios=self.scenarios,
                config=config,
                name=worker_name(index),
                on_email=self.sending_wake.set,
            )
            self.tasks.append(
                asyncio.create_task(
                    worker.run(self.grading_wake, self.stop_event),
                    name=f"worker-{index}",
                )
            )
        if config.instructors.digest_hour_utc >= 0 and not self.helper:
            self.tasks.append(
                asyncio.create_task(self._digests(composer), name="digests")
            )
        if config.service.retention_days > 0 and not self.helper:
            self.tasks.append(asyncio.create_task(self._purge_hourly(), name="purge"))
        sender = Sender(
            self.store,
            make_transport(config.outbox, config.service.domain),
            config.outbox,
        )
        self.tasks.append(
            asyncio.create_task(
                sender.run(self.sending_wake, self.stop_event), name="sender"
            )
        )

    async def _warm_up(self, composer: Composer, grader: Grader) -> None:
        started = time.monotonic()
        composer.warm_up()
        warm_up = getattr(grader, "warm_up", None)
        if warm_up is not None:
            try:
                await warm_up()
            except Exception:
                logger.exception(
                    "warming up the grader failed; the first grading will retry"
                )
        logger.info("grader %s ready in %.2fs", grader.name, time.monotonic() - started)

    async def _digests(self, composer: Composer) -> None:
        """Check every few minutes whether today's digests are due."""
        from .digest import send_due_digests

        assert self.store is not None
        while not self.stop_event.is_set():
            try:
                if await send_due_digests(
                    self.store, composer, self.config, self.scenarios
                ):
                    self.sending_wake.set()
            except Exception:
                logger.exception("sending the daily digest failed; trying again later")
            await _wait_any(self.stop_event, self.stop_event, 300.0)

    async def _purge_hourly(self) -> None:
        """Delete raw messages past service.retention_days, once an hour."""
        assert self.store is not None
        days = self.config.service.retention_days
        while not self.stop_event.is_set():
            try:
                count = await self.store.purge_raw(self.store.clock() - days * 86400)
                if count:
                    logger.info(
                        "retention: deleted the raw bytes of %d messages", count
                    )
            except Exception:
                logger.exception("retention purge failed; trying again in an hour")
            await _wait_any(self.stop_event, self.stop_event, 3600.0)

    async def _run_intake(self, intake: Intake) -> None:
        assert self.store is not None
        while not self.stop_event.is_set():
            # Cleared before reading, so mail stored while intake runs sets it
            # again and is read at once instead of after the poll interval.
            self.intake_wake.clear()
            try:
                if self.config.service.processes > 1:
                    # Each process takes the mail its own listener stored;
                    # mail still waiting after a few poll intervals is taken
                    # by any process.
                    assert self.listener is not None
                    outcomes = await intake.process_pending(
                        self.listener.handler.stored_ids,
                        stale_after_s=3 * self.config.queue.poll_interval_s + 2.0,
                    )
                else:
                    outcomes = await intake.process_pending()
            except Exception:
                logger.exception(
                    "intake failed; retrying in %.1fs",
                    self.config.queue.poll_interval_s,
                )
                outcomes = []
            if any(outcome.reason == "submission queued" for outcome in outcomes):
                self.grading_wake.set()
            if outcomes:
                self.sending_wake.set()
            await _wait_any(
                self.intake_wake, self.stop_event, self.config.queue.poll_interval_s
            )

    async def stop(self) -> None:
        """Stop in order, within ``service.stop_timeout_s`` in all.

        First the listener stops accepting and open SMTP sessions get half the
        time to finish. Then intake, the workers and the sender finish their
        current step. A worker still grading at the deadline is cancelled and
        releases its lease, so the job is taken over at once on restart.
        """
        budget_s = self.config.service.stop_timeout_s
        started = time.monotonic()
        logger.info("stopping: no new SMTP sessions; waiting up to %.0fs", budget_s)
        # Helper processes go through the same steps at the same time, with the
        # same budget. A helper still running a second later is killed.
        helpers_stopped = None
        if self.listener_pool is not None:
            helpers_stopped = asyncio.create_task(
                self.listener_pool.stop(budget_s + 1.0)
            )
        if self.listener is not None:
            dropped = await self.listener.close(budget_s / 2)
            if dropped:
                logger.warning(
                    "closed %d SMTP sessions that did not finish in time", dropped
                )
        self.stop_event.set()
        if self.tasks:
            remaining_s = max(0.1, budget_s - (time.monotonic() - started))
            _, pending = await asyncio.wait(self.tasks, timeout=remaining_s)
            for task in pending:
                logger.warning(
                    "cancelling %s, still busy at the stop deadline", task.get_name()
                )
                task.cancel()
            for task in pending:
                with suppress(asyncio.CancelledError):
                    await task
        if helpers_stopped is not None:
            await helpers_stopped
        if self.store is not None:
            counts = await self.store.counts()
            logger.info(
                "stopped in %.1fs; jobs %s; outbox %s",
                time.monotonic() - started,
                counts["jobs"],
                counts["outbox"],
            )
            await self.store.close()


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM."""
    # The handlers come first: serve writes its port file during start, and
    # a SIGTERM sent as soon as the port is known must stop it cleanly, not
    # end it with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = Service(config)
    await service.start()
    await stop.wait()
    await service.stop()
