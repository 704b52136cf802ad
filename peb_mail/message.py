"""Parse a stored raw message into the facts intake needs.

mail-parser decodes bodies and attachments; the standard ``email`` package reads
the few headers whose exact form matters (addresses and Message-IDs), because
mail-parser normalises them in ways that lose detail.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import logging
import re
from dataclasses import dataclass

import mailparser

from .extract import extract_reply, html_to_text
from .models import AttachmentInfo

logger = logging.getLogger(__name__)

_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_REPLY_PREFIX_RE = re.compile(
    r"^\s*((re|aw|sv|antw|r|ref|tr|fwd?|wg)\s*(\[\d+\])?\s*:\s*)+", re.I
)
# Auto-reply and out-of-office subjects, as Outlook, Gmail and common mail
# servers write them in English, German, French, Spanish, Dutch, Portuguese and
# Italian, and the subjects of bounces without a report part.
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response)|out of (the )?office|"
    r"automatische antwort|abwesenheit|"
    r"r[ée]ponse automatique|absent du bureau|"
    r"respuesta autom[áa]tica|fuera de la oficina|"
    r"automatisch antwoord|afwezig|"
    r"resposta autom[áa]tica|ausente do escrit[óo]rio|"
    r"risposta automatica|fuori sede|"
    r"undeliver|delivery status|mail delivery failed|returned mail)",
    re.I,
)


@dataclass(frozen=True)
class ParsedEmail:
    """The facts intake needs from one received message."""

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_address: str
    from_name: str
    subject: str
    # Plain text of the body: the text part, or the HTML part converted.
    body_text: str
    # The new text only, without quoted history or signature.
    new_text: str
    had_quote: bool
    attachments: tuple[AttachmentInfo, ...]
    # Why this message must not be answered (auto-reply, bounce, list), or None.
    automatic: str | None


def parse_message_ids(value: str | None) -> tuple[str, ...]:
    """Return the ``<id>`` tokens of a Message-ID style header, without brackets.

    Comments and junk between ids are ignored. A bare id without brackets is
    accepted as one id, because some clients send that.
    """
    if not value:
        return ()
    found = _MSGID_RE.findall(value)
    if found:
        return tuple(found)
    bare = value.strip()
    return (bare,) if bare and " " not in bare else ()


def thread_of(raw: bytes) -> tuple[str | None, tuple[str, ...]]:
    """Return the Message-ID and References of a stored message, to reply under it."""
    if not raw:
        return None, ()
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        raw
    )
    ids = parse_message_ids(str(headers.get("Message-ID", "")))
    references = parse_message_ids(str(headers.get("References", "")))
    if not references:
        references = parse_message_ids(str(headers.get("In-Reply-To", "")))
    return (ids[0] if ids else None), references


def strip_reply_prefix(subject: str) -> str:
    return _REPLY_PREFIX_RE.sub("", subject).strip()


# A line that the email package still reads as part of the header block: a
# field, a folded continuation, or an mbox "From " line.
_HEADER_LINE_RE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")


def header_message_id(raw: bytes) -> str | None:
    """Read only the Message-ID of a raw message, for duplicate detection.

    The listener calls this for every message before its 250, so it walks the
    header lines itself instead of running the email parser (about eight times
    slower on a 2 KB message). Like the parser, it stops at the first line
    that is not a header line.
    """
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    value: bytes | None = None
    for line in head.splitlines():
        if not _HEADER_LINE_RE.match(line):
            break
        if value is not None:
            if line[:1] not in (b" ", b"\t"):
                break
            value += b" " + line.strip()
        elif line[:11].lower() == b"message-id:":
            value = line.partition(b":")[2].strip()
    if value is None:
        return None
    ids = parse_message_ids(value.decode("ascii", errors="surrogateescape"))
    return ids[0] if ids else None


def parse(raw: bytes) -> ParsedEmail:
    """Parse raw bytes. Raises ValueError when the message has no usable sender."""
    headers = email.message_from_bytes(raw, policy=email.policy.compat32)
    from_name, from_address = _single_from(headers.get_all("From") or [])
    # mail-parser reads the message the email package has already built, as
    # its parse_from_bytes would build the same one again.
    parsed = mailparser.MailParser(headers)

    body_text = "\n".join(part for part in parsed.text_plain if part.strip())
    if not body_text.strip() and parsed.text_html:
        body_text = html_to_text("\n".join(parsed.text_html))
    reply = extract_reply(body_text)

    attachments = _attachments(headers)
    if not reply.text.strip() and any(_is_tnef(item) for item in attachments):
        # Outlook sometimes sends the whole body as TNEF. Grading it as empty
        # would be wrong, so a person has to look at it.
        raise UnreadableBodyError(
            "Outlook TNEF (winmail.dat) body with no readable text; needs manual review"
        )
    if not body_text.strip() and not attachments and _has_unread_text(raw):
        # A broken MIME structure (parts under another boundary than the one
        # declared) yields no text part. Telling the student the email was
        # empty would be wrong, so a person must look at it.
        raise UnreadableBodyError("no readable text part in a non-empty message")
    subject = _decoded_header(headers, "Subject")
    return ParsedEmail(
        message_id=_first(parse_message_ids(_decoded_header(headers, "Message-ID"))),
        in_reply_to=parse_message_ids(_decoded_header(headers, "In-Reply-To")),
        references=parse_message_ids(_decoded_header(headers, "References")),
        from_address=from_address,
        from_name=from_name,
        subject=subject,
        body_text=body_text,
        new_text=reply.text,
        had_quote=reply.had_quote,
        attachments=attachments,
        automatic=classify_automatic(headers, subject),
    )


def classify_raw(raw: bytes) -> str | None:
    """Classify from the headers alone, before a full parse that may fail."""
    try:
        # Only the header block is parsed; the body may be large.
        headers = email.parser.BytesHeaderParser(
            policy=email.policy.compat32
        ).parsebytes(raw)
        return classify_automatic(headers, _decoded_header(headers, "Subject"))
    except Exception:  # a header block this broken is handled by parse()
        return None


def classify_automatic(headers: email.message.Message, subject: str) -> str | None:
    """Return why a message is machine-sent and must not be answered, or None."""
    auto = str(headers.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Reply"):
        if headers.get(name):
            return f"{name} header"
    precedence = str(headers.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    if headers.get("List-Id"):
        return "mailing list (List-Id)"
    content_type = str(headers.get("Content-Type", "")).lower()
    if "multipart/report" in content_type or "message/delivery-status" in content_type:
        return "delivery report"
    if _AUTO_SUBJECT_RE.search(subject):
        return "auto-reply subject"
    return None


class UnreadableBodyError(ValueError):
    """The message has a body we cannot read as text."""


def _has_unread_text(raw: bytes) -> bool:
    """True when the body has letters beyond MIME boundary and header lines."""
    body = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[-1]
    lines = [
        line
        for line in body.split(b"\n")
        if line.strip() and not line.startswith(b"--") and b":" not in line[:40]
    ]
    letters = sum(chr(byte).isalpha() for line in lines for byte in line)
    return letters >= 40


def _is_tnef(item: AttachmentInfo) -> bool:
    return (
        item.content_type == "application/ms-tnef"
        or item.filename.lower() == "winmail.dat"
    )


@dataclass(frozen=True)
class DeliveryReport:
    """The parts of a bounce that matter: how final it is and why."""

    status: str
    action: str
    diagnostic: str

    @property
    def hard(self) -> bool:
        return self.status.startswith("5") or (
            not self.status and self.action == "failed"
        )


def delivery_report(raw: bytes) -> DeliveryReport | None:
    """Read the RFC 3464 status of a bounce, or None when it has no report part."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        # The first block is per message; the rest are per recipient.
        for block in blocks[1:] or blocks:
            status = str(block.get("Status", "")).strip().split(" ")[0]
            action = str(block.get("Action", "")).strip().lower()
            if status or action:
                return DeliveryReport(
                    status=status,
                    action=action,
                    diagnostic=" ".join(str(block.get("Diagnostic-Code", "")).split())[
                        :300
                    ],
                )
    return None


class SenderError(ValueError):
    """The From header does not name exactly one clear sender."""


def _single_from(values: list[str]) -> tuple[str, str]:
    """Return (display name, address) of the one sender, or raise SenderError.

    Two parsers must agree: the standard library's lenient ``getaddresses``
    and its strict header registry. Mail is never attributed to an address
    when they disagree, when the header has defects, or when the display name
    carries an address of its own (a common way to pose as someone else).
    """
    if len(values) != 1:
        raise SenderError(f"expected one From header, found {len(values)}")
    raw = str(values[0])
    lenient = [(name, addr) for name, addr in email.utils.getaddresses([raw]) if addr]
    if len(lenient) != 1:
        raise SenderError(f"expected one From address, found {len(lenient)}")
    try:
        header = email.policy.default.header_factory("From", raw)
        strict = list(header.addresses)  # type: ignore[attr-defined]
        # Real clients put encoded words inside quotes ("=?utf-8?b?...?="),
        # which RFC 2047 forbids but every reader accepts; the address is
        # still clear, so that defect alone does not make the header unclear.
        defects = [
            d
            for d in header.defects  # type: ignore[attr-defined]
            if isinstance(d, email.errors.InvalidHeaderDefect)
            and "encoded word inside quoted string" not in str(d)
        ]
    except (IndexError, ValueError, TypeError) as exc:
        raise SenderError(f"unreadable From header: {exc}") from exc
    if defects or len(strict) != 1:
        raise SenderError("malformed From header")
    address = strict[0].addr_spec.strip().lower()
    if address != lenient[0][1].strip().lower() or "@" not in address:
        raise SenderError("From header parsers disagree on the address")
    name = strict[0].display_name.strip()
    if "@" in name:
        raise SenderError("display name contains an address")
    return name, address


def _decoded_header(headers: email.message.Message, name: str) -> str:
    value = headers.get(name)
    if value is None:
        return ""
    try:
        parts = email.header.decode_header(str(value))
        text = "".join(
            chunk.decode(charset or "utf-8", errors="replace")
            if isinstance(chunk, bytes)
            else chunk
            for chunk, charset in parts
        )
    except (LookupError, ValueError):
        text = str(value)
    return " ".join(text.split())


def _attachments(message: email.message.Message) -> tuple[AttachmentInfo, ...]:
    """List attachments with their decoded sizes.

    The standard library is used here because it decodes RFC 2231 file names
    and reports the payload size after transfer decoding.
    """
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if part.get_content_disposition() != "attachment" and not filename:
            continue
        payload = part.get_payload(decode=True)
        found.append(
            AttachmentInfo(
                filename=_decode_words(filename) if filename else "unnamed",
                content_type=part.get_content_type(),
                size_bytes=len(payload) if isinstance(payload, bytes) else 0,
            )
        )
    return tuple(found)


def _decode_words(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeDecodeError):
        return value


def _first(values: tuple[str, ...]) -> str | None:
    return values[0] if values else None
