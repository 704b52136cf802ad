"""Build outbound emails from the jinja2 templates in ``peb_mail/templates``.

Headers are set only through the ``email`` package's header classes, so a name
or subject that contains CR, LF or encoded words cannot add a header. HTML
templates autoescape everything they insert.
"""

from __future__ import annotations

import email.utils
import hashlib
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape

from .config import Config
from .models import CRITERIA, MAX_TOTAL, Artefact, Scenario, Verdict
from .scenarios import render_starter
from .store import NewEmail
from .textdiff import changed_share, diff_html, diff_text, word_diff

if TYPE_CHECKING:
    from .store import Attempt, Student

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Mailbox:
    """A display name and an address."""

    name: str
    address: str

    def header(self) -> Address:
        local, _, domain = self.address.rpartition("@")
        # Header-folding characters in a display name would otherwise reach the
        # wire; the email package rejects them, so they are replaced first.
        clean_name = " ".join(self.name.replace("\r", " ").replace("\n", " ").split())
        return Address(display_name=clean_name, username=local, domain=domain)


def _paragraphs(text: str) -> Markup:
    """Escape plain text and turn blank-line separated blocks into <p> elements."""
    blocks = [
        block.strip("\n") for block in str(text).replace("\r\n", "\n").split("\n\n")
    ]
    html = "".join(
        f"<p>{Markup('<br>').join(escape(line) for line in block.split(chr(10)))}</p>"
        for block in blocks
        if block.strip()
    )
    return Markup(html)


def reply_subject(subject: str) -> str:
    """Return ``Re: subject`` without doubling an existing prefix."""
    subject = " ".join(subject.split())
    if not subject:
        return "Re: your email"
    if subject[:3].lower() == "re:":
        return "Re:" + subject[3:]
    return f"Re: {subject}"


class Composer:
    """Render templates and build messages with recorded Message-IDs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.domain = config.service.domain
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        self.env.filters["paragraphs"] = _paragraphs
        self._dkim_key: bytes | None = None

    @property
    def service(self) -> Mailbox:
        return Mailbox(
            self.config.service.display_name, self.config.service.service_address
        )

    def envelope_from(self, message_id: str) -> str:
        """Return a VERP-style envelope sender unique to one email.

        A bounce comes back to bounces+TAG@domain, and TAG finds the email it
        is about even when the bounce quotes none of it.
        """
        tag = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:16]
        return f"bounces+{tag}@{self.domain}"

    def reply_address(self, token: str) -> str:
        return f"reply+{token}@{self.domain}"

    def counterpart_address(self, scenario: Scenario, token: str) -> str:
        return f"{scenario.counterpart.local_part}+{token}@{self.domain}"

    def render(self, name: str, **context: Any) -> str:
        context.setdefault("service_address", self.config.service.service_address)
        return self.env.get_template(name).render(**context)

    def warm_up(self) -> None:
        """Compile every template once so the first email costs no more than later ones."""
        for name in self.env.list_templates(extensions=["j2"]):
            self.env.get_template(name)

    def build(
        self,
        *,
        kind: str,
        sender: Mailbox,
        to: list[Mailbox],
        subject: str,
        text: str,
        html: str | None = None,
        reply_to: str | None = None,
        cc: list[Mailbox] | None = None,
        in_reply_to: str | None = None,
        references: tuple[str, ...] = (),
        attachments: tuple[Artefact, ...] = (),
        attempt_id: int | None = None,
        auto_submitted: str = "auto-replied",
    ) -> NewEmail:
        """Build one outbound email; its Message-ID is on our domain."""
        message = EmailMessage(policy=SMTP)
        message_id = email.utils.make_msgid(domain=self.domain)
        message["Message-ID"] = message_id
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["From"] = sender.header()
        message["To"] = [box.header() for box in to]
        if cc:
            message["Cc"] = [box.header() for box in cc]
        if reply_to:
            message["Reply-To"] = Mailbox("", reply_to).header()
        message["Subject"] = " ".join(subject.split())
        if in_reply_to:
            message["In-Reply-To"] = f"<{in_reply_to}>"
            message["References"] = " ".join(
                f"<{item}>" for item in (*references, in_reply_to)
            )
        # RFC 3834: tells other robots not to answer us.
        message["Auto-Submitted"] = auto_submitted
        message["X-Auto-Response-Suppress"] = "All"
        message.set_content(text, cte="quoted-printable")
        if html is not None:
            message.add_alternative(html, subtype="html", cte="quoted-printable")
        for artefact in attachments:
            assert artefact.path is not None
            maintype, _, subtype = artefact.content_type.partition("/")
            message.add_attachment(
                artefact.path.read_bytes(),
                maintype=maintype,
                subtype=subtype or "octet-stream",
                filename=artefact.path.name,
            )
        raw = self._dkim_sign(message.as_bytes())
        recipients = tuple(box.address for box in [*to, *(cc or [])])
        return NewEmail(
            message_id=message_id.strip("<>"),
            kind=kind,
            envelope_from=self.envelope_from(message_id.strip("<>")),
            rcpt_tos=recipients,
            raw=raw,
            attempt_id=attempt_id,
        )

    def _dkim_sign(self, raw: bytes) -> bytes:
        outbox = self.config.outbox
        if not outbox.dkim_selector or outbox.dkim_key_file is None:
            return raw
        import dkim

        if self._dkim_key is None:
            self._dkim_key = outbox.dkim_key_file.read_bytes()
        signature = dkim.sign(
            raw,
            outbox.dkim_selector.encode("ascii"),
            (outbox.dkim_domain or self.domain).encode("ascii"),
            self._dkim_key,
            include_headers=[
                b"from",
                b"to",
                b"cc",
                b"subject",
                b"date",
                b"message-id",
                b"in-reply-to",
                b"references",
                b"reply-to",
                b"mime-version",
                b"content-type",
            ],
        )
        return signature + raw

    def feedback_emails(
        self,
        attempt: Attempt,
        student: Student,
        scenario: Scenario,
        verdict: Verdict,
        thread: tuple[str | None, tuple[str, ...]],
        instructors: list[str],
        previous: Verdict | None = None,
        review_address: str | None = None,
        updated_by: str | None = None,
    ) -> list[NewEmail]:
        """Build the student's feedback and, if configured, the instructors' summary.

        ``review_address`` becomes the summary's Reply-To, so instructors can
        answer with overrides. ``updated_by`` marks a feedback email sent again
        after an instructor changed the grade.
        """
        message_id, references = thread
        context = self.feedback_context(
            verdict, scenario, previous=previous, student_text=attempt.body or ""
        )
        context["updated_by"] = updated_by
        student_name = student.name.split()[0] if student.name.split() else ""
        delivery = self.config.instructors.delivery
        instructor_boxes = [Mailbox("", address) for address in instructors]
        feedback = self.build(
            kind="feedback",
            sender=self.service,
            to=[Mailbox(student.name, student.email)],
            cc=instructor_boxes if delivery == "cc" else None,
            subject=reply_subject(attempt.subject or scenario.title)
            + (" (updated by your teacher)" if updated_by else ""),
            text=self.render("feedback.txt.j2", student_name=student_name, **context),
            html=self.render("feedback.html.j2", student_name=student_name, **context),
            reply_to=self.reply_address(attempt.token),
            in_reply_to=message_id,
            references=references,
            attempt_id=attempt.id,
        )
        emails = [feedback]
        if delivery == "separate" and instructor_boxes:
            summary_context = {
                **context,
                "student": student,
                "attempt_id": attempt.id,
                "subject": attempt.subject or "",
                "body": attempt.body or "",
            }
            emails.append(
                self.build(
                    kind="summary",
                    sender=self.service,
                    to=instructor_boxes,
                    subject=f"[peb-mail] {student.name}: {scenario.title}: "
                    f"{verdict.total}/{context['max_total']}",
                    text=self.render("summary.txt.j2", **summary_context),
                    html=self.render("summary.html.j2", **summary_context),
                    reply_to=review_address,
                    attempt_id=attempt.id,
                    auto_submitted="auto-generated",
                )
            )
        return emails

    def start_emails(
        self,
        scenario: Scenario,
        student: Mailbox,
        token: str,
        *,
        attempt_id: int | None = None,
        in_reply_to: str | None = None,
        references: tuple[str, ...] = (),
    ) -> list[NewEmail]:
        """Build the brief and, for a reply scenario, the counterpart's starter.

        Intake sends these when a student starts a scenario, and
        ``peb-mail scenarios preview`` shows them, so both stay the same.
        """
        counterpart_address = self.counterpart_address(scenario, token)
        words = student.name.split()
        brief = self.build(
            kind="brief",
            sender=self.service,
            to=[student],
            subject=f"Scenario {scenario.number}: {scenario.title}",
            text=self.render(
                "brief.txt.j2",
                student_name=words[0] if words else "",
                scenario=scenario,
                counterpart_address=counterpart_address,
                text_artefacts=[a for a in scenario.artefacts if a.text],
                file_artefacts=[a for a in scenario.artefacts if a.path],
            ),
            # Replies to the brief are questions or commands, not the answer
            # to the task, so they go to the service address.
            reply_to=self.config.service.service_address,
            in_reply_to=in_reply_to,
            references=references,
            attachments=tuple(a for a in scenario.artefacts if a.path),
            attempt_id=attempt_id,
        )
        if scenario.type != "reply":
            return [brief]
        assert scenario.starter_subject is not None
        starter = self.build(
            kind="starter",
            sender=Mailbox(scenario.counterpart.name, counterpart_address),
            to=[student],
            subject=scenario.starter_subject,
            text=render_starter(scenario, student.name),
            attempt_id=attempt_id,
            auto_submitted="auto-generated",
        )
        return [brief, starter]

    def score_rows(
        self, verdict: Verdict, previous: Verdict | None = None
    ) -> list[dict[str, Any]]:
        """One row per criterion; with ``previous``, also the earlier score."""
        by_key = {item.criterion: item for item in verdict.scores}
        before = (
            {item.criterion: item.score for item in previous.scores} if previous else {}
        )
        return [
            {
                "label": label,
                "score": by_key[key].score,
                "previous": before.get(key),
                "justification": by_key[key].justification,
            }
            for key, label in CRITERIA
        ]

    def feedback_context(
        self,
        verdict: Verdict,
        scenario: Scenario,
        previous: Verdict | None = None,
        student_text: str = "",
    ) -> dict[str, Any]:
        """Template values for feedback and summaries.

        ``previous`` is the verdict of the attempt this one revises, shown as
        "3 -> 5" per criterion. ``student_text`` gives the word-level changes
        from the student's email to the example answer.
        """
        segments = word_diff(student_text, verdict.revision) if student_text else []
        if not changed_share(segments):
            # Nothing changed: no section that repeats the email unmarked.
            segments = []
        return {
            "verdict": verdict,
            "scenario": scenario,
            "rows": self.score_rows(verdict, previous),
            "previous_total": previous.total if previous else None,
            "max_total": MAX_TOTAL,
            "diff_text": diff_text(segments) if segments else "",
            "diff_html": diff_html(segments) if segments else "",
            "updated_by": None,
        }
