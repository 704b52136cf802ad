"""Run peb-mail end to end on real SMTP with the embedded defaults.

The demo starts ``peb-mail serve`` on loopback with ``config.toml`` (offline
grader, sent mail stored in a local Maildir), enrols a demo student, sends START
commands and submissions written the way real mail clients write them, and
prints what happened to each submission. It exits with status 1 unless every
submission got exactly one feedback email.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import mailbox
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STUDENT = "ana.silva@student.test"
STUDENT_NAME = "Ana Silva"
WAIT_S = 60.0


# -- helpers ------------------------------------------------------------------


def write_toml(data: dict[str, Any], path: Path) -> None:
    """Write a config dict of tables with plain values; enough for config.toml."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(entry) for entry in item) + "]"
        return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {key: item for key, item in body.items() if isinstance(item, dict)}
        for key, item in body.items():
            if key not in nested:
                lines.append(f"{key} = {value(item)}")
        lines.append("")
        for key, item in nested.items():
            table(f"{name}.{key}", item)

    for name, body in data.items():
        table(name, body)
    path.write_text("\n".join(lines), encoding="utf-8")


@dataclass
class Demo:
    workdir: Path
    config_path: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def database(self) -> Path:
        return self.workdir / "peb-mail.sqlite3"

    @property
    def maildir(self) -> Path:
        return self.workdir / "sent"

    def peb(self, *args: str) -> None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "peb_mail",
                *args,
                "--config",
                str(self.config_path),
            ],
            check=True,
        )

    def start(self) -> None:
        port_file = self.workdir / "port"
        log = (self.workdir / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peb_mail",
                "serve",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"peb-mail serve did not start; see {self.workdir / 'serve.log'}"
                )
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def send(self, message: Message, to: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.sendmail(STUDENT, [to], message.as_bytes())

    def sent_mail(self) -> list[Message]:
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(self.maildir, create=False)
        return [
            email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
            for key in box.keys()
        ]

    def wait_for(
        self, predicate: Callable[[Message], bool], count: int = 1
    ) -> list[Message]:
        deadline = time.monotonic() + WAIT_S
        while True:
            found = [item for item in self.sent_mail() if predicate(item)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"timed out waiting for mail; see {self.workdir / 'serve.log'}"
                )
            time.sleep(0.1)


def new_message(subject: str, *, to: str, in_reply_to: str | None = None) -> Message:
    message = email.message.EmailMessage()
    message["From"] = f"{STUDENT_NAME} <{STUDENT}>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(email.utils.localtime())
    message["Message-ID"] = make_msgid(domain="student.test")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    return message


def quoted(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


# -- the submissions ------------------------------------------------------------


@dataclass
class Started:
    scenario_id: str
    # Address the student writes to: the counterpart (initiate) or the starter's From.
    address: str
    # Message the student answers: the starter (reply) or None.
    starter: Message | None
    brief: Message


def start_scenario(demo: Demo, scenario_id: str) -> Started:
    command = new_message(f"START {scenario_id}", to=f"practice@{DOMAIN}")
    command.set_content("")
    demo.send(command, f"practice@{DOMAIN}")
    command_id = command["Message-ID"]
    [brief] = demo.wait_for(lambda item: item["In-Reply-To"] == command_id)
    # The brief is recorded in the outbox with the attempt it belongs to.
    brief_id = str(brief["Message-ID"]).strip("<>")
    with sqlite3.connect(f"file:{demo.database}?mode=ro", uri=True) as db:
        [(token, kind)] = db.execute(
            "select a.token, a.scenario_id from outbox o join attempts a "
            "on a.id = o.attempt_id where o.message_id = ?",
            (brief_id,),
        ).fetchall()
    assert kind == scenario_id, (kind, scenario_id)
    brief_text = brief.get_body(preferencelist=("plain",)).get_content()
    match = re.search(r"\S+\+" + token + "@" + re.escape(DOMAIN), brief_text)
    if match:
        return Started(scenario_id, match.group(0), None, brief)
    # A START for a scenario that is still open sends the starter again with
    # the same token, so any of them gives the same address.
    starter = demo.wait_for(lambda item: f"+{token}@" in str(item["From"]))[-1]
    address = starter["From"].addresses[0].addr_spec
    return Started(scenario_id, address, starter, brief)


def starter_text(started: Started) -> str:
    assert started.starter is not None
    part = started.starter.get_body(preferencelist=("plain",))
    return part.get_content() if part else ""


def reply_message(started: Started) -> Message:
    """Start the student's reply to the counterpart's starter email, in its thread."""
    assert started.starter is not None
    return new_message(
        "Re: " + str(started.starter["Subject"]),
        to=started.address,
        in_reply_to=started.starter["Message-ID"],
    )


def reply_to_starter(demo: Demo, scenario_id: str) -> tuple[Started, Message]:
    started = start_scenario(demo, scenario_id)
    return started, reply_message(started)


def gmail_reply(demo: Demo) -> tuple[str, Message, str]:
    started, message = reply_to_starter(demo, "clarify-vague-task")
    starter = started.starter
    assert starter is not None
    name = starter["From"].addresses[0].display_name
    body = (
        "Hi,\n\nThank you for asking me to clean up the notes from yesterday's meeting. "
        "I am happy to do it.\n\nBefore I start, I have three short questions:\n"
        "1. Who will read the notes? Only our team, or the client too?\n"
        "2. Do you want a short summary with action items, or the full notes?\n"
        "3. When do you need them? I can send them by Thursday at noon.\n\n"
        "Best regards,\nAna\n\n"
        # Gmail splits a long attribution line in two.
        f"On Thu, Dec 3, 2026 at 9:02 AM {name} <{started.address}>\nwrote:\n\n"
        + quoted(starter_text(started))
        + "\n"
    )
    message.set_content(body)
    return "Gmail reply, attribution split over two lines", message, started.address


def apple_mail_reply_qp(demo: Demo) -> tuple[str, Message, str]:
    started, message = reply_to_starter(demo, "reschedule-client-call")
    starter = started.starter
    assert starter is not None
    name = starter["From"].addresses[0].display_name
    body = (
        "Dear Hannah,\n\nI am very sorry, but I cannot join our video call at 3:00 pm today. "
        "My home internet keeps failing, and a technician will only fix it tomorrow morning.\n\n"
        "Could we move the call to tomorrow at 2:30 pm, or Friday at 10:00 am? Today I will "
        "send you a written update on the launch plan by 5:00 pm, so you can read it before "
        "we talk.\n\nThank you for your understanding.\n\nKind regards,\nAna Silva\n\n"
        "Sent from my iPhone\n\n"
        f"> On 3 Dec 2026, at 09:15, {name} <{started.address}> wrote:\n>\n"
        + quoted(starter_text(started))
        + "\n"
    )
    # Apple Mail sends quoted-printable.
    message.set_content(body, cte="quoted-printable")
    return (
        "Apple Mail reply, quoted-printable, iPhone signature",
        message,
        started.address,
    )


def outlook_new_email_base64(demo: Demo) -> tuple[str, Message, str]:
    started = start_scenario(demo, "correct-error-in-report")
    message = new_message(
        "Correction: North region March revenue in the Q1 sales report",
        to=started.address,
    )
    body = (
        "Dear Daniel,\n\nI am writing about the Q1 regional sales report I sent you yesterday. "
        "I made a mistake in it: the March revenue for the North region should be $14,200, not "
        "$12,400. Because of this, the North region's total for the quarter is also wrong. It "
        "should be $45,300, not $43,500.\n\nI am sorry for the error. I have attached "
        "the corrected file. Please use it instead of the old one.\n\nPlease let me know if you "
        "have any questions.\n\nBest regards,\nAna Silva\n\n"
        "________________________________\n"
        "From: peb-mail <practice@peb-mail.test>\nSent: Thursday, December 3, 2026 9:00 AM\n"
        "To: Ana Silva <ana.silva@student.test>\nSubject: Scenario 1\n\n"
        "This is the brief you were sent. It is the original message, not quoted.\n"
    )
    message.set_content(body, cte="base64")
    message.add_attachment(
        b"Region,January,February,March,Q1 total\nNorth,13100,12900,14200,40200\n",
        maintype="text",
        subtype="csv",
        filename="q1_regional_sales_corrected.csv",
    )
    return (
        "Outlook new email with header block below, base64, CSV attached",
        message,
        started.address,
    )


def html_only_reply(demo: Demo) -> tuple[str, Message, str]:
    started, message = reply_to_starter(demo, "reschedule-client-call")
    starter = started.starter
    assert starter is not None
    quoted_html = "<br>".join(starter_text(started).splitlines())
    message.set_content(
        "<html><body><p>Hi Hannah,</p><p>I am sorry, my internet connection is not working "
        "today, so I cannot do our call at 3 pm. Can we talk <b>tomorrow at 3:00 pm</b> "
        "instead? I will email you the launch plan update today by 5 pm.</p>"
        "<p>Best wishes,<br>Ana</p>"
        f'<div class="gmail_quote">On Thu, Dec 3, 2026, Hannah wrote:<blockquote>{quoted_html}'
        "</blockquote></div></body></html>",
        subtype="html",
    )
    return "HTML-only reply with blockquote", message, started.address


def scenario_submission(demo: Demo, scenario_id: str) -> tuple[str, Message, str]:
    """Answer any scenario with an email built from its example sentences."""
    from peb_mail.scenarios import find_scenario, load_scenarios

    scenario = find_scenario(load_scenarios(REPO / "scenarios"), scenario_id)
    started = start_scenario(demo, scenario.id)
    examples: list[str] = []
    for point in (*scenario.key_facts, *scenario.key_points):
        if point.example and point.example not in examples:
            examples.append(point.example)
    first = scenario.counterpart.name.split()[0]
    body = (
        f"Dear {first},\n\n"
        + "\n\n".join(examples)
        + f"\n\nBest regards,\n{STUDENT_NAME}\n"
    )
    if started.starter is not None:
        message = reply_message(started)
    else:
        message = new_message(scenario.title, to=started.address)
    message.set_content(body)
    return (
        f"scenario {scenario.id}, written from its examples",
        message,
        started.address,
    )


def corpus_submissions(demo: Demo, corpus: Path) -> Iterator[tuple[str, Message, str]]:
    """Yield real client messages from the shared corpus, each for a new attempt.

    The caller sends each one before the next is started.
    """
    picks = [
        ("talon", "standard_replies/apple_mail.eml", "clarify-vague-task"),
        ("talon", "standard_replies/android.eml", "reschedule-client-call"),
        ("discourse", "emails/gmail_web.eml", "clarify-vague-task"),
        ("discourse", "emails/iphone_signature.eml", "reschedule-client-call"),
        ("talon", "standard_replies/hotmail.eml", "correct-error-in-report"),
        ("discourse", "emails/windows_8_metro.eml", "clarify-vague-task"),
    ]
    for suite, name, scenario_id in picks:
        path = corpus / suite / name
        if not path.exists():
            continue
        started = start_scenario(demo, scenario_id)
        message = email.message_from_bytes(
            path.read_bytes(), policy=email.policy.compat32
        )
        for header in (
            "From",
            "To",
            "Cc",
            "Message-ID",
            "In-Reply-To",
            "References",
            "Return-Path",
            "Delivered-To",
        ):
            del message[header]
        message["From"] = f"{STUDENT_NAME} <{STUDENT}>"
        message["To"] = started.address
        message["Message-ID"] = make_msgid(domain="student.test")
        if started.starter is not None:
            message["In-Reply-To"] = started.starter["Message-ID"]
        yield f"corpus {suite}/{name}", message, started.address


# -- main ------------------------------------------------------------------------

DOMAIN = "peb-mail.test"


def report(demo: Demo, label: str, message: Message, must_grade: bool) -> bool:
    """Print what happened to one submission; True when it went as expected.

    Every submission must get exactly one reply. The emails written for the
    demo must be graded; a real client message from the corpus may instead
    get a notice saying why it was not graded (for example, it only says
    "Hello").
    """
    message_id = str(message["Message-ID"]).strip("<>")
    feedback = demo.wait_for(
        lambda item: str(item["In-Reply-To"]).strip("<>") == message_id
    )
    with sqlite3.connect(f"file:{demo.database}?mode=ro", uri=True) as db:
        row = db.execute(
            "select a.id, a.scenario_id, a.score, a.body from inbound i "
            "join attempts a on a.id = i.attempt_id where i.message_id = ?",
            (message_id,),
        ).fetchone()
    print("=" * 78)
    print(f"Submission: {label}")
    if row is None:
        print("  matched attempt: NONE")
        return False
    attempt_id, scenario_id, score, body = row
    print(f"  matched attempt: {attempt_id} ({scenario_id})")
    print("  extracted text:")
    for line in (body or "").splitlines():
        print(f"    | {line}")
    # The reply itself says whether this email was graded: the attempt may
    # have been graded later for another email (after a "not graded" notice).
    reply = feedback[0].get_body(preferencelist=("plain",))
    reply_text = reply.get_content() if reply else ""
    graded = re.search(r"YOUR SCORE: (\d+) / 35", reply_text)
    score = int(graded.group(1)) if graded else None
    if score is not None:
        print(f"  score: {score} / 35")
    else:
        lines = [line for line in reply_text.splitlines() if line.strip()]
        # The first line is the greeting; the second says why.
        reason = lines[1] if len(lines) > 1 else "?"
        print(f"  not graded; the student was told: {reason}")
    box = mailbox.Maildir(demo.maildir, create=False)
    files = [
        str(demo.maildir / box._toc[key])  # noqa: SLF001 - the file name is what users look for
        for key in box.keys()
        if str(email.message_from_bytes(box.get_bytes(key))["In-Reply-To"]).strip("<>")
        == message_id
    ]
    print(f"  feedback emails: {len(feedback)}; stored at {', '.join(files)}")
    return len(feedback) == 1 and (score is not None or not must_grade)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        default=str(REPO / "demo-data"),
        help="folder for the demo's database and mail (emptied first)",
    )
    parser.add_argument(
        "--corpus",
        default=str(REPO.parent / "shared" / "corpus"),
        help="shared corpus folder, used when present",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="ID",
        help="also answer this scenario (id or number; repeat, or 'all')",
    )
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    # Only the locations change: everything else is the embedded default.
    config["service"].update(
        data_dir=str(workdir),
        database=str(workdir / "peb-mail.sqlite3"),
        scenarios_dir=str(REPO / "scenarios"),
        prompts_dir=str(REPO / "prompts"),
    )
    config["listener"].update(port=0, port_file=str(workdir / "port"))
    config["outbox"].update(maildir=str(workdir / "sent"))
    config_path = workdir / "config.toml"
    write_toml(config, config_path)
    roster = workdir / "roster.csv"
    roster.write_text(
        f"email,name,cohort\n{STUDENT},{STUDENT_NAME},demo\n", encoding="utf-8"
    )

    demo = Demo(workdir, config_path)
    demo.peb("init")
    demo.peb("roster", "import", str(roster))
    demo.start()
    results = []
    try:
        builders: list[Callable[[], tuple[str, Message, str]]] = [
            lambda: gmail_reply(demo),
            lambda: apple_mail_reply_qp(demo),
            lambda: outlook_new_email_base64(demo),
            lambda: html_only_reply(demo),
        ]
        if "all" in args.scenario:
            from peb_mail.scenarios import load_scenarios

            args.scenario = [s.id for s in load_scenarios(REPO / "scenarios")]
        builders += [
            lambda ref=ref: scenario_submission(demo, ref) for ref in args.scenario
        ]
        submissions = []
        # Each answer is sent right after its START, so a later START of the
        # same scenario opens a new attempt instead of finding this one open.
        for build in builders:
            label, message, address = build()
            demo.send(message, address)
            submissions.append((label, message, address))
        corpus = Path(args.corpus)
        if corpus.exists():
            for label, message, address in corpus_submissions(demo, corpus):
                demo.send(message, address)
                submissions.append((label, message, address))
        else:
            print(f"(corpus not found at {corpus}; skipping real client messages)")
        for label, message, _ in submissions:
            must_grade = not label.startswith("corpus ")
            results.append(report(demo, label, message, must_grade))
        # A duplicate would arrive shortly after the first; look once more.
        time.sleep(1.0)
        duplicates = 0
        for _, message, _ in submissions:
            message_id = str(message["Message-ID"]).strip("<>")
            count = sum(
                1
                for item in demo.sent_mail()
                if str(item["In-Reply-To"]).strip("<>") == message_id
            )
            duplicates += count - 1
    finally:
        demo.stop()
    ok = all(results) and duplicates == 0
    print("=" * 78)
    print(
        f"{sum(results)} of {len(results)} submissions got exactly one feedback email; duplicates: {duplicates}"
    )
    print(
        f"All mail peb-mail sent is in {demo.maildir}; the database is {demo.database}"
    )
    print(
        "Look around with: .venv/bin/peb-mail attempts list --config "
        + str(config_path)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
