"""Build outbound emails from the jinja2 templates in ``peb_mail/templates``.

The bytes are the ones ``EmailMessage(policy=SMTP).as_bytes()`` writes for the
same content, apart from the random MIME boundaries. Writing them here is
cheaper because the email package parses every header value when it is set
and folds it again on output: with Python 3.11.7 on a 2-core machine,
``feedback_emails`` fell from about 3.9 ms to 1.0 ms of CPU time and
``start_emails`` from about 1.6 ms to 0.1 ms. A header value is written directly
only when it is short printable ASCII that the email package would write
unchanged. Any other value (non-ASCII, long, or with CR, LF, special
characters or encoded words) goes through the email package's header classes,
so it cannot add a header and is RFC 2047 encoded and folded as before. HTML
templates autoescape everything they insert.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import hashlib
import random
import re
import sys
from dataclasses import dataclass
from email import quoprimime
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

# Values that the email package, under policy SMTP, writes back exactly as
# given when the whole header line fits in MAX_LINE characters. Encoded-word
# openers ("=?") are excluded separately, because the parser decodes them.
MAX_LINE = SMTP.max_line_length
CRLF = "\r\n"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
PLAIN_PHRASE = re.compile(rf"{_ATOM}(?: {_ATOM})*")
PLAIN_ADDR_SPEC = re.compile(
    rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
PLAIN_MSGID = re.compile(r"<[0-9.]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")

MIME_VERSION = b"MIME-Version: 1.0\r\n"
TEXT_PART_HEADERS = {
    subtype: (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n"
    ).encode("ascii")
    for subtype in ("plain", "html")
}


@dataclass(frozen=True)
class Mailbox:
    """A display name and an address."""

    name: str
    address: str

    def clean_name(self) -> str:
        # Header-folding characters in a display name would otherwise reach the
        # wire; the email package rejects them, so they are replaced first.
        return " ".join(self.name.replace("\r", " ").replace("\n", " ").split())

    def header(self) -> Address:
        local, _, domain = self.address.rpartition("@")
        return Address(display_name=self.clean_name(), username=local, domain=domain)


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


def folded_header(name: str, value: Any) -> bytes:
    """Return one header line as ``EmailMessage`` with policy SMTP writes it.

    This is the slow path: the header class parses the value, rejects CR and
    LF, encodes non-ASCII text (RFC 2047) and folds long lines.
    """
    _, header = SMTP.header_store_parse(name, value)
    return SMTP.fold_binary(name, header)


def text_header(name: str, value: str) -> bytes:
    """Return an unstructured header line, such as Subject or References."""
    if (
        len(name) + 2 + len(value) <= MAX_LINE
        and PLAIN_TEXT.fullmatch(value)
        and "=?" not in value
    ):
        return f"{name}: {value}{CRLF}".encode("ascii")
    return folded_header(name, value)


def address_header(name: str, boxes: list[Mailbox]) -> bytes:
    """Return an address header line, such as From, To or Reply-To."""
    items = []
    for box in boxes:
        display_name = box.clean_name()
        plain = (
            PLAIN_ADDR_SPEC.fullmatch(box.address)
            and "=?" not in box.address
            and (
                not display_name
                or (PLAIN_PHRASE.fullmatch(display_name) and "=?" not in display_name)
            )
        )
        if not plain:
            return folded_address_header(name, tuple(boxes))
        items.append(f"{display_name} <{box.address}>" if display_name else box.address)
    value = ", ".join(items)
    if len(name) + 2 + len(value) > MAX_LINE:
        return folded_address_header(name, tuple(boxes))
    return f"{name}: {value}{CRLF}".encode("ascii")


# A student's brief, starter and feedback share one To header, and the slow
# path costs about 0.25 ms per non-ASCII name, so recent results are kept.
@functools.lru_cache(maxsize=1024)
def folded_address_header(name: str, boxes: tuple[Mailbox, ...]) -> bytes:
    return folded_header(name, [box.header() for box in boxes])


def text_part_body(text: str) -> bytes:
    """Encode text as quoted-printable UTF-8 with CRLF line ends.

    These are the steps of ``EmailMessage.set_content(text,
    cte="quoted-printable")`` followed by the generator's line-end rewrite.
    """
    lines = text.encode("utf-8").splitlines()
    normal_body = b"\n".join(lines) + b"\n"
    encoded = quoprimime.body_encode(normal_body.decode("latin-1"), MAX_LINE)
    # Every line end in the encoded text is LF (splitlines removed CR above),
    # so replacing LF gives the generator's CRLF line ends.
    return encoded.replace("\n", CRLF).encode("ascii")


def multipart(subtype: str, parts: list[bytes]) -> tuple[bytes, bytes]:
    """Join MIME parts into one multipart body and return its Content-Type line and body.

    The boundary has the form the email package's generator uses, and a new
    one is drawn while any part contains it.
    """
    while True:
        boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="
        delimiter = b"--" + boundary.encode("ascii")
        if not any(delimiter in part for part in parts):
            break
    line = f'Content-Type: multipart/{subtype}; boundary="{boundary}"'
    if len(line) > MAX_LINE:
        line = f'Content-Type: multipart/{subtype};{CRLF} boundary="{boundary}"'
    body = (
        delimiter
        + b"\r\n"
        + (b"\r\n" + delimiter + b"\r\n").join(parts)
        + b"\r\n"
        + delimiter
        + b"--\r\n"
    )
    return (line + CRLF).encode("ascii"), body


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
        # Encoded attachment parts by (path, content type), with the file bytes
        # they were made from.
        self._attachment_parts: dict[tuple[Path, str], tuple[bytes, bytes]] = {}

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
        message_id = email.utils.make_msgid(domain=self.domain)
        head = [
            text_header("Message-ID", message_id)
            if PLAIN_MSGID.fullmatch(message_id)
            else folded_header("Message-ID", message_id),
            # Same text as the Date header class makes of formatdate(usegmt=True).
            text_header("Date", email.utils.format_datetime(dt.datetime.now(dt.UTC))),
            address_header("From", [sender]),
            address_header("To", to),
        ]
        if cc:
            head.append(address_header("Cc", cc))
        if reply_to:
            head.append(address_header("Reply-To", [Mailbox("", reply_to)]))
        head.append(text_header("Subject", " ".join(subject.split())))
        if in_reply_to:
            head.append(text_header("In-Reply-To", f"<{in_reply_to}>"))
            head.append(
                text_header(
                    "References",
                    " ".join(f"<{item}>" for item in (*references, in_reply_to)),
                )
            )
        # RFC 3834: tells other robots not to answer us.
        head.append(text_header("Auto-Submitted", auto_submitted))
        head.append(b"X-Auto-Response-Suppress: All\r\n")
        head.append(self._body(text, html, attachments))
        raw = self._dkim_sign(b"".join(head))
        recipients = tuple(box.address for box in [*to, *(cc or [])])
        return NewEmail(
            message_id=message_id.strip("<>"),
            kind=kind,
            envelope_from=self.envelope_from(message_id.strip("<>")),
            rcpt_tos=recipients,
            raw=raw,
            attempt_id=attempt_id,
        )

    def _body(
        self, text: str, html: str | None, attachments: tuple[Artefact, ...]
    ) -> bytes:
        """Return the MIME headers, the blank line and the body of one email.

        The layout is the one ``set_content``, ``add_alternative`` and
        ``add_attachment`` give: a plain text part, then an HTML alternative,
        then each attachment.
        """
        plain = TEXT_PART_HEADERS["plain"]
        if html is None and not attachments:
            return plain + MIME_VERSION + b"\r\n" + text_part_body(text)
        content = plain + b"\r\n" + text_part_body(text)
        if html is not None:
            html_part = (
                TEXT_PART_HEADERS["html"]
                + MIME_VERSION
                + b"\r\n"
                + text_part_body(html)
            )
            content_type, body = multipart("alternative", [content, html_part])
            content = content_type + b"\r\n" + body
        if attachments:
            parts = [content, *(self._attachment_part(item) for item in attachments)]
            content_type, body = multipart("mixed", parts)
            content = content_type + b"\r\n" + body
        # A multipart content moved its own Content-Type into the first part.
        return MIME_VERSION + content

    def _attachment_part(self, artefact: Artefact) -> bytes:
        """Return one attachment as a MIME part, reused while the file is unchanged."""
        assert artefact.path is not None
        data = artefact.path.read_bytes()
        key = (artefact.path, artefact.content_type)
        cached = self._attachment_parts.get(key)
        if cached is not None and cached[0] == data:
            return cached[1]
        maintype, _, subtype = artefact.content_type.partition("/")
        part = EmailMessage(policy=SMTP)
        part.set_content(
            data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=artefact.path.name,
        )
        encoded = part.as_bytes()
        self._attachment_parts[key] = (data, encoded)
        return encoded

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
