"""Run every message of a mail corpus through the whole intake pipeline.

Usage: python scripts/corpus_pipeline.py [--corpus PATH]

Each file is stored, processed and, when intake queues a submission, graded by
the offline grader, three times: sent to the service address, to a
counterpart address without a token, and to the counterpart address with the
attempt's reply token. Each delivery gets a fresh SQLite database, and the
file's From address is enrolled as a student with one open attempt, so
commands, matching and grading all run. The script prints a table
per suite, then every crash with its traceback and every quarantine reason.

A crash is an exception that escapes ``Intake.process``, the grading worker,
or ``peb_mail.message.parse``. ``SenderError`` (no single clear sender) and
``UnreadableBodyError`` (a TNEF-only body) are not crashes: ``parse`` raises
them on purpose and intake quarantines the message with the reason. Exit status 1 means at
least one crash or one file that was not stored.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import email.utils
import logging
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from peb_mail.compose import Composer  # noqa: E402
from peb_mail.config import Config, config_from_dict  # noqa: E402
from peb_mail.intake import Intake  # noqa: E402
from peb_mail.message import (  # noqa: E402
    SenderError,
    UnreadableBodyError,
    header_message_id,
    parse,
)
from peb_mail.models import Scenario  # noqa: E402
from peb_mail.scenarios import find_scenario, load_scenarios  # noqa: E402
from peb_mail.service import make_grader  # noqa: E402
from peb_mail.store import Store  # noqa: E402
from peb_mail.tokens import TokenSigner, load_signer  # noqa: E402
from peb_mail.worker import GradingWorker  # noqa: E402

DOMAIN = "peb-mail.test"
# An initiate scenario: its counterpart address without a token matches the
# sender's only open attempt.
SCENARIO_ID = "correct-error-in-report"
FALLBACK_SENDER = "corpus-sender@example.invalid"
SLOW_PARSE_S = 2.0
SKIPPED_NAMES = {"readme.md", "license", "license.txt", "expected.json", "source.md"}
STATES = ("processed", "ignored", "rejected", "quarantined")
TARGETS = ("service", "counterpart", "token")


@dataclass
class Delivery:
    """Outcome of one copy of a file sent to one recipient."""

    target: str
    stored: bool = False
    state: str = ""
    reason: str = ""
    attempt_id: int | None = None
    job_state: str | None = None
    # The attempt row after intake and grading, when the delivery matched one.
    attempt_body: str | None = None
    attempt_attachments: str | None = None
    outbox_kinds: tuple[str, ...] = ()
    crash: str | None = None
    seconds: float = 0.0
    grade_s: float = 0.0


@dataclass
class FileResult:
    """Outcome of one corpus file: the direct parse and each delivery."""

    path: str
    parse_s: float = 0.0
    parse_error: str | None = None
    parse_crash: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def crashes(self) -> list[str]:
        found = [f"parse: {self.parse_crash}"] if self.parse_crash else []
        found += [f"{d.target}: {d.crash}" for d in self.deliveries if d.crash]
        return found

    @property
    def seconds(self) -> float:
        return self.parse_s + sum(d.seconds for d in self.deliveries)


def pipeline_config(workdir: Path) -> Config:
    """Build a config whose files live under ``workdir`` and that opens no socket."""
    return config_from_dict(
        {
            "service": {
                "domain": DOMAIN,
                "data_dir": str(workdir),
                "database": str(workdir / "unused.sqlite3"),
                "scenarios_dir": str(REPO / "scenarios"),
                "prompts_dir": str(REPO / "prompts"),
            },
            "listener": {"host": "127.0.0.1", "port": 0},
            "outbox": {"transport": "maildir", "maildir": str(workdir / "sent")},
            "grader": {"kind": "offline"},
        },
        base_dir=workdir,
    )


def sender_of(raw: bytes) -> str | None:
    """Return the first From address of a raw message, read leniently, or None."""
    try:
        headers = email.message_from_bytes(raw, policy=email.policy.compat32)
        values = [str(value) for value in headers.get_all("From") or []]
        addresses = [addr for _, addr in email.utils.getaddresses(values) if addr]
    except Exception:  # a file this broken simply has no sender to enrol
        return None
    address = addresses[0].strip().lower() if addresses else ""
    return address if "@" in address and " " not in address else None


def envelope_sender_of(raw: bytes, from_address: str | None) -> str:
    """Return the envelope sender: Return-Path when present, else the From address.

    ``Return-Path: <>`` gives the null sender, as a real bounce has.
    """
    try:
        headers = email.message_from_bytes(raw, policy=email.policy.compat32)
        return_path = headers.get("Return-Path")
    except Exception:  # fall back to From below
        return_path = None
    if return_path is not None:
        text = str(return_path).strip()
        if text in ("<>", ""):
            return ""
        address = email.utils.parseaddr(text)[1]
        if "@" in address:
            return address.lower()
    return from_address or FALLBACK_SENDER


class Pipeline:
    """Fresh databases, one per delivery, sharing one config, signer and grader."""

    def __init__(self, workdir: Path, targets: tuple[str, ...] = TARGETS) -> None:
        self.workdir = workdir
        self.targets = targets
        self.config = pipeline_config(workdir)
        self.composer = Composer(self.config)
        self.scenarios: list[Scenario] = load_scenarios(
            self.config.service.scenarios_dir
        )
        self.scenario = find_scenario(self.scenarios, SCENARIO_ID)
        self.signer: TokenSigner = load_signer(self.config.service.secret_file)
        self.grader = make_grader(self.config)
        self.counter = 0
        self.clock_now = 1_800_000_000.0

    def clock(self) -> float:
        return self.clock_now

    @property
    def counterpart_address(self) -> str:
        with_token = self.composer.counterpart_address(self.scenario, "x")
        local, _, domain = with_token.rpartition("@")
        return f"{local.rsplit('+', 1)[0]}@{domain}"

    async def run_file(self, path: Path, label: str | None = None) -> FileResult:
        raw = path.read_bytes()
        return await self.run_raw(raw, label or str(path))

    async def run_raw(self, raw: bytes, label: str) -> FileResult:
        result = FileResult(label)
        started = time.monotonic()
        try:
            parse(raw)
        except (SenderError, UnreadableBodyError) as exc:
            result.parse_error = f"{type(exc).__name__}: {exc}"
        except Exception:  # every other escape from parse is a crash to report
            result.parse_crash = traceback.format_exc()
        result.parse_s = time.monotonic() - started
        for target in self.targets:
            result.deliveries.append(await self.deliver(raw, target))
        return result

    def recipient(self, target: str, token: str | None) -> str:
        if target == "service":
            return self.config.service.service_address
        if target == "token" and token:
            return self.composer.counterpart_address(self.scenario, token)
        return self.counterpart_address

    async def deliver(self, raw: bytes, target: str) -> Delivery:
        """Store ``raw`` in a fresh database, process it and grade what it queues."""
        self.counter += 1
        delivery = Delivery(target)
        store = await Store.open(
            self.workdir / f"db{self.counter}.sqlite3", clock=self.clock
        )
        started = time.monotonic()
        try:
            await self._deliver(store, raw, delivery)
        except Exception:  # reported as a crash with its traceback
            delivery.crash = traceback.format_exc()
        finally:
            delivery.seconds = time.monotonic() - started
            await store.close()
        return delivery

    async def _deliver(self, store: Store, raw: bytes, delivery: Delivery) -> None:
        intake = Intake(
            store, self.composer, self.scenarios, self.config, signer=self.signer
        )
        from_address = sender_of(raw)
        token = None
        if from_address and not from_address.endswith("@" + DOMAIN):
            await store.upsert_students([(from_address, "Corpus Student", "demo")], {})
            token = await self._open_attempt(store, intake, from_address)
        rcpt = self.recipient(delivery.target, token)
        skip = {item.id for item in await store.list_outbox(limit=100)}
        inbound_id = await store.ingest(
            peer="127.0.0.1:0",
            mail_from=envelope_sender_of(raw, from_address),
            rcpt_tos=[rcpt],
            message_id=header_message_id(raw),
            raw=raw,
        )
        if inbound_id is None:
            return
        delivery.stored = True
        await intake.process(inbound_id)
        row = await store.inbound_row(inbound_id)
        assert row is not None
        delivery.state = row["state"]
        delivery.reason = row["reason"] or ""
        delivery.attempt_id = row["attempt_id"]
        if delivery.state == "processed" and delivery.attempt_id is not None:
            worker = GradingWorker(
                store=store,
                composer=self.composer,
                grader=self.grader,
                scenarios=self.scenarios,
                config=self.config,
                name="corpus",
            )
            graded = time.monotonic()
            await worker.drain()
            delivery.grade_s = time.monotonic() - graded
            jobs = await store.list_jobs()
            delivery.job_state = jobs[0].state if jobs else None
            attempt = await store.attempt(delivery.attempt_id)
            if attempt is not None:
                delivery.attempt_body = attempt.body
                delivery.attempt_attachments = attempt.attachments
        outbox = await store.list_outbox(limit=100)
        delivery.outbox_kinds = tuple(
            item.kind for item in reversed(outbox) if item.id not in skip
        )

    async def _open_attempt(
        self, store: Store, intake: Intake, address: str
    ) -> str | None:
        """Start the scenario for ``address`` with a START command, as a student would.

        Returns the attempt's reply token, or None when no attempt was opened.
        """
        command = EmailMessage()
        command["From"] = address
        command["To"] = self.config.service.service_address
        command["Subject"] = f"START {SCENARIO_ID}"
        command["Message-ID"] = make_msgid(domain="pipeline.invalid")
        command.set_content("")
        inbound_id = await store.ingest(
            peer="127.0.0.1:0",
            mail_from=address,
            rcpt_tos=[self.config.service.service_address],
            message_id=str(command["Message-ID"]).strip("<>"),
            raw=command.as_bytes(),
        )
        assert inbound_id is not None
        outcome = await intake.process(inbound_id)
        if outcome is None or outcome.attempt_id is None:
            return None
        attempt = await store.attempt(outcome.attempt_id)
        return attempt.token if attempt else None


def is_message_file(path: Path) -> bool:
    """Tell whether a corpus file is an input message rather than notes or results."""
    if path.name.lower() in SKIPPED_NAMES or path.name.startswith("."):
        return False
    if path.suffix.lower() in (".json", ".md", ".py"):
        return False
    if path.suffix.lower() in (".html", ".htm"):
        return has_header_block(path.read_bytes())
    return True


def has_header_block(raw: bytes) -> bool:
    first = raw.lstrip(b"\r\n").split(b"\n", 1)[0]
    name, colon, _ = first.partition(b":")
    return bool(colon) and bool(name) and b" " not in name.strip(b"\t")


def suite_files(suite: Path) -> list[Path]:
    return sorted(p for p in suite.rglob("*") if p.is_file() and is_message_file(p))


@dataclass
class SuiteSummary:
    name: str
    results: list[FileResult]

    def row(self) -> list[str]:
        deliveries = [d for r in self.results for d in r.deliveries]
        states = Counter(d.state for d in deliveries if d.stored)
        crashes = sum(len(r.crashes) for r in self.results)
        slowest = max(self.results, key=lambda r: r.seconds, default=None)
        slow_text = (
            f"{Path(slowest.path).name} {slowest.seconds:.2f}s" if slowest else "-"
        )
        return [
            self.name,
            str(len(self.results)),
            str(sum(1 for r in self.results if not has_header(r))),
            str(len(deliveries)),
            str(sum(1 for d in deliveries if d.stored)),
            *(str(states.get(state, 0)) for state in STATES),
            str(crashes),
            str(sum(1 for r in self.results if r.parse_s > SLOW_PARSE_S)),
            slow_text,
        ]


HEADER_BLOCK: dict[str, bool] = {}


def has_header(result: FileResult) -> bool:
    return HEADER_BLOCK.get(result.path, True)


def print_report(summaries: list[SuiteSummary], corpus: Path) -> None:
    print(f"Corpus: {corpus}")
    print(
        "Each file is delivered three times (service address, counterpart "
        "without a token, counterpart with the reply token); the state columns "
        "count deliveries.\n"
    )
    header = [
        "suite",
        "files",
        "no headers",
        "deliveries",
        "stored",
        *STATES,
        "crashes",
        f"parse>{SLOW_PARSE_S:g}s",
        "slowest file (all steps)",
    ]
    rows = [summary.row() for summary in summaries]
    totals = ["total"]
    for column in range(1, len(header) - 1):
        totals.append(str(sum(int(row[column]) for row in rows)))
    all_results = [r for s in summaries for r in s.results]
    slowest = max(all_results, key=lambda r: r.seconds, default=None)
    totals.append(
        f"{Path(slowest.path).name} {slowest.seconds:.2f}s" if slowest else "-"
    )
    rows.append(totals)
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    if slowest is not None:
        grading = sum(d.grade_s for d in slowest.deliveries)
        print(
            f"\nSlowest file: {slowest.path}: {slowest.seconds:.2f}s in all, "
            f"parse() {slowest.parse_s:.2f}s, grading {grading:.2f}s"
        )
    slow = [r for r in all_results if r.parse_s > SLOW_PARSE_S]
    print(f"\nparse() over {SLOW_PARSE_S:g} s: {len(slow)}")
    for result in slow:
        print(f"  {result.path}: {result.parse_s:.2f}s")

    crashed = [r for r in all_results if r.crashes]
    print(f"\nCrashes: {sum(len(r.crashes) for r in crashed)}")
    for result in crashed:
        for crash in result.crashes:
            print(f"\n--- {result.path} ({crash.splitlines()[0].split(':')[0]})")
            print(crash.rstrip())

    reasons_count = Counter(
        d.reason for r in all_results for d in r.deliveries if d.state == "quarantined"
    )
    print("\nQuarantine reasons (deliveries):")
    for reason, count in reasons_count.most_common():
        print(f"  {count:5d}  {reason}")

    print("\nQuarantined (file: reason):")
    for result in all_results:
        reasons = sorted(
            {d.reason for d in result.deliveries if d.state == "quarantined"}
        )
        for reason in reasons:
            print(f"  {result.path}: {reason}")

    not_stored = [
        r.path for r in all_results if not all(d.stored for d in r.deliveries)
    ]
    print(f"\nNot stored: {len(not_stored)}")
    for path in not_stored:
        print(f"  {path}")


async def run(corpus: Path) -> int:
    summaries: list[SuiteSummary] = []
    with tempfile.TemporaryDirectory(prefix="peb-corpus-") as tmp:
        pipeline = Pipeline(Path(tmp))
        for suite in sorted(p for p in corpus.iterdir() if p.is_dir()):
            results = []
            for path in suite_files(suite):
                label = str(path.relative_to(corpus))
                HEADER_BLOCK[label] = has_header_block(path.read_bytes())
                results.append(await pipeline.run_file(path, label))
            summaries.append(SuiteSummary(suite.name, results))
    print_report(summaries, corpus)
    results = [r for s in summaries for r in s.results]
    failed = any(r.crashes for r in results) or any(
        not d.stored for r in results for d in r.deliveries
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=REPO.parent / "shared" / "corpus",
        help="corpus folder with one sub-folder per suite "
        "(default: ../shared/corpus beside the repository)",
    )
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"corpus folder not found: {args.corpus}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    return asyncio.run(run(args.corpus))


if __name__ == "__main__":
    sys.exit(main())
