"""Compare reply extractors on the public corpora in shared/corpus.

Each candidate library runs alone, beside peb-mail's ``extract_reply``, over
every corpus case whose upstream tests pin the reply text. Three rates are
printed per suite and overall:

kept
    Every line the writer wrote is in the output, in order, and no other line
    is, except signature lines. A signature line is one in the expected text
    from a signature opener ("--", "Sent from ...") on, or one in the short
    run of lines (at most 8, each under 73 characters) that follows the last
    expected line in the input and stops at anything that looks like quoted
    history. Lines without a letter or digit (rules, bullets) are ignored,
    and so are expected lines starting with ">" (the trimmer keeps some).
exact
    The whole output equals the expected text after collapsing whitespace.
    Discourse expectations are Markdown: emphasis, heading and list markers
    are removed on both sides first.
facts
    Over the cases where upstream pins only parts of the reply: each
    "starts with", "contains", "does not contain" and "parses in under a
    second" assertion holds.

Messages (.eml) give their text/plain part, or their HTML through
``peb_mail.extract.html_to_text``; HTML files go through it too. Every
extractor gets the same text. talon, quotequail and email-reply-extractor
are measured too when installed. Usage: ``python scripts/compare_extractors.py
[--corpus PATH] [--cases]``; ``--cases`` lists each miss.
"""

from __future__ import annotations

import argparse
import email
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from email_reply_parser import EmailReplyParser as GithubPort  # noqa: E402
from mailparser_reply import EmailReplyParser as MultilingualParser  # noqa: E402
from mailparser_reply.constants import MAIL_LANGUAGES  # noqa: E402

from peb_mail.extract import extract_reply, html_to_text  # noqa: E402

SLOW_S = 1.0
MIN_LACKS = 10
# Talon compares these HTML results ignoring whitespace; its returned HTML for
# the reply is '<div>Hi<div>there</div></div>', two blocks, hence two lines.
TALON_LINES = {"reply-separated-by-hr.html": "Hi\nthere"}


@dataclass
class Case:
    """One body to extract from, with what upstream says about its reply."""

    suite: str
    name: str
    body: str
    expected: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    markdown: bool = False  # expected text is Markdown (Discourse posts)


# --- Reading the corpora ----------------------------------------------------------


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def read_eml(path: Path) -> str:
    """Return the text/plain body of a message, or its HTML as text."""
    raw = path.read_bytes().lstrip()
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    for kind in ("plain", "html"):
        for part in message.walk():
            if part.get_content_type() == f"text/{kind}":
                text = decode_part(part)
                return text if kind == "plain" else html_to_text(text)
    payload = message.get_payload()
    return payload if isinstance(payload, str) else ""


def decode_part(part: EmailMessage) -> str:
    """Decode a part, trusting UTF-8 over a wrong charset label."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return str(part.get_payload())
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(part.get_content_charset() or "latin-1", errors="replace")
    except LookupError:
        return data.decode("latin-1")


def load_json(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "expected.json").read_text("utf-8"))
    return data


def github_cases(folder: Path, suite: str) -> Iterator[Case]:
    """github/email_reply_parser and its ports: expected.json per file."""
    for name, spec in load_json(folder)["cases"].items():
        if spec.get("template"):
            continue
        path = folder / name
        body = read_text(path)
        case = Case(suite, name, body, expected=spec.get("expected_reply"))
        fragments = spec.get("fragments", {})
        if case.expected is None and "0" in fragments.get("exact", {}):
            count = fragments.get("count")
            hidden = fragments.get("hidden", [])
            whole = fragments["exact"]["0"].strip() == body.strip()
            if count == 1 or whole or (hidden and all(hidden[1:])):
                case.expected = fragments["exact"]["0"]
            else:
                case.facts.append(("starts", fragments["exact"]["0"].strip()))
        if case.expected is None and fragments.get("count") == 1:
            if fragments.get("quoted", [False]) == [False]:
                case.expected = body  # nothing is quoted or hidden
        case.facts += github_facts(spec)
        yield case


def github_facts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    facts = (
        [("starts", spec["reply_starts_with"])] if "reply_starts_with" in spec else []
    )
    facts += [("contains", text) for text in spec.get("reply_contains", [])]
    facts += [("lacks", text) for text in spec.get("quoted_text_contains", [])]
    facts += [("lacks", text) for text in spec.get("reply_not_contains", [])]
    if spec.get("reply_not_empty"):
        facts.append(("nonempty", ""))
    if "performance" in spec:
        facts.append(("fast", ""))
    fragments = spec.get("fragments", {})
    hidden = fragments.get("hidden", [])
    starts = fragments.get("starts_with_regex", {})
    for index, texts in fragments.get("contains", {}).items():
        position = int(index)
        is_hidden = position < len(hidden) and hidden[position]
        if position > 0 and (is_hidden or starts.get(index, "").startswith("^On")):
            facts += [("lacks", text) for text in texts]
        elif position == 0:
            facts += [("contains", text) for text in texts]
    facts += [
        ("lacks", text) for text in fragments.get("not_contains", {}).get("0", [])
    ]
    return facts


def willdurand_templates(folder: Path) -> Iterator[Case]:
    """Quote-header variants substituted into the PHP port's two templates."""
    cases = load_json(folder)["cases"]
    dates = cases["fixtures/email_with_date_headers.txt"]
    template = read_text(folder / "fixtures/email_with_date_headers.txt")
    for number, header in enumerate(dates["substitutions"], 1):
        body = template.replace(dates["placeholder"], header)
        yield Case(
            "willdurand",
            f"date_header_{number:02}",
            body,
            dates["expected_visible_text_for_each_substitution"],
        )
    froms = cases["fixtures/email_with_from_headers.txt"]
    template = read_text(folder / "fixtures/email_with_from_headers.txt")
    for number, header in enumerate(froms["substitutions"], 1):
        body = template.replace(froms["placeholder"], header)
        # The From: line starts the quoted part, so nothing is visible.
        yield Case("willdurand", f"from_header_{number}", body, "")


def mail_parser_reply_cases(folder: Path) -> Iterator[Case]:
    """alfonsrv/mail-parser-reply: reply 0 is the new text."""
    for name, spec in load_json(folder)["cases"].items():
        case = Case("mail_parser_reply", name, read_text(folder / name))
        for reply in spec.get("replies", []):
            signatures = reply.get("signatures_contains", [])
            if reply["index"] == 0:
                if "body_equals" in reply:
                    case.expected = reply["body_equals"]
                case.facts += [("contains", t) for t in reply.get("body_contains", [])]
                case.facts += [
                    ("lacks", t)
                    for t in reply.get("body_not_contains", [])
                    if t not in signatures  # we keep sign-offs on purpose
                ]
            else:
                # Text of an older message must not leak into the reply. Short
                # strings ("Hej") also occur in the new text, so they are skipped.
                for key in ("body_contains", "headers_contains", "content_contains"):
                    case.facts += [
                        ("lacks", t) for t in reply.get(key, []) if len(t) >= MIN_LACKS
                    ]
        if case.expected is not None or case.facts:
            yield case


def trimmer_cases(folder: Path) -> Iterator[Case]:
    """discourse/email_reply_trimmer: trimmed/<name> is the new text."""
    for path in sorted((folder / "emails").glob("*.txt")):
        trimmed = folder / "trimmed" / path.name
        if trimmed.exists():
            yield Case(
                "email_reply_trimmer", path.name, read_text(path), read_text(trimmed)
            )


def talon_cases(folder: Path) -> Iterator[Case]:
    """mailgun/talon: standard replies (.eml) and HTML replies."""
    for name, spec in load_json(folder)["cases"].items():
        path = folder / name
        if name.endswith(".html"):
            body = html_to_text(read_text(path))
        else:
            body = read_eml(path)
        expected = TALON_LINES.get(name, spec.get("expected_reply"))
        case = Case("talon", name, body, expected=expected)
        case.facts = github_facts(spec)
        yield case


def discourse_cases(folder: Path) -> Iterator[Case]:
    """discourse/discourse receiver specs: accepted replies only."""
    for name, spec in load_json(folder)["cases"].items():
        if spec.get("outcome") == "post_created" and spec.get("expected_reply"):
            body = read_eml(folder / name)
            yield Case("discourse", name, body, spec["expected_reply"], markdown=True)


SUITES: dict[str, Callable[[Path], Iterable[Case]]] = {
    "email_reply_parser": lambda f: github_cases(f, "email_reply_parser"),
    "email_reply_parser_zapier": lambda f: github_cases(f, "email_reply_parser_zapier"),
    "crisp_email_reply_parser": lambda f: github_cases(f, "crisp_email_reply_parser"),
    "willdurand_email_reply_parser": lambda f: (
        *github_cases(f, "willdurand"),
        *willdurand_templates(f),
    ),
    "mail_parser_reply": mail_parser_reply_cases,
    "email_reply_trimmer": trimmer_cases,
    "talon": talon_cases,
    "discourse": discourse_cases,
}


# --- Extractors ---------------------------------------------------------------------


def run_github_port(body: str) -> str:
    return str(GithubPort.parse_reply(body))


_MULTILINGUAL = MultilingualParser(languages=list(MAIL_LANGUAGES))


def run_multilingual(body: str) -> str:
    replies = _MULTILINGUAL.read(body).replies
    return replies[0].body if replies else ""


def run_peb_mail(body: str) -> str:
    return extract_reply(body).text


def optional_extractors() -> dict[str, Callable[[str], str]]:
    """Candidates that are not project dependencies, when installed.

    ``pip install talon quotequail email-reply-extractor`` (talon pulls in
    scikit-learn, so use a scratch virtualenv).
    """
    found: dict[str, Callable[[str], str]] = {}
    try:
        from talon import quotations

        found["talon"] = quotations.extract_from_plain
    except ImportError:
        print("note: talon not installed, skipped")
    try:
        import quotequail

        found["quotequail"] = lambda body: quotequail.quote(
            body, quote_intro_line=True
        )[0][1]
    except ImportError:
        print("note: quotequail not installed, skipped")
    try:
        from email_reply_extractor import extract_new_text

        found["email-reply-extractor"] = lambda body: extract_new_text(body).text
    except ImportError:
        print("note: email-reply-extractor not installed, skipped")
    return found


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "email-reply-parser": run_github_port,
    "mail-parser-reply": run_multilingual,
}


# --- Scoring -------------------------------------------------------------------------

_SIGNATURE_OPENER = re.compile(
    r"^\s*(?:--\s*$|__+\s*$|—\s*$|sent (?:from|via|with)\b|get outlook\b"
    r"|von meinem\b|gesendet von\b|envoyé de\b|enviado desde\b)",
    re.IGNORECASE,
)
_HISTORY_FIELDS = (
    "from|sent|to|subject|date|cc|reply-to|von|gesendet|an|betreff|datum|de|envoyé"
    "|envoyé le|à|objet|van|verzonden|aan|onderwerp|da|inviato|a|oggetto|data|fra"
    "|sendt|til|emne|från|skickat|till|ämne|od|wysłano|do|temat|para|asunto|enviado"
    "|fecha|от|отправлено|кому|тема|risposta"
)
_HISTORY_LINE = re.compile(
    r"^\s*(?:[A-Z]{0,3}>"
    r"|.*\b(?:wrote|schrieb|écrit|escribió|napisał|skrev|schreef|написал|пише"
    r"|kirjoitti|escreveu|scritto|írta|pisze)\b"
    r"|.*[:：]\s*$"
    rf"|[*_]*(?:{_HISTORY_FIELDS})\s*[*_]*\s*:"
    r"|\W*-{2,}.*-{2,}\W*$"
    r"|[_-]{5,}"
    r"|\W*(?:On|Am|Le|El|Op|Il|Em|Den|Dnia|W dniu)\s.*\d)",
    re.IGNORECASE,
)
_DEVICE_LINE = re.compile(r"^\s*(?:sent (?:from|via|with)|gesendet von)\b", re.I)
_MAX_ZONE_LINES = 8
_MAX_ZONE_CHARS = 72


def normalise_line(line: str, markdown: bool = False) -> str:
    text = line.strip()
    if markdown:
        text = re.sub(r"^#{1,6}\s+", "", text)
        text = re.sub(r"^(?:[-*+•]|\d+[.)])\s+", "", text)
        text = text.replace("**", "").replace("__", "")
        text = re.sub(r"(?<!\w)\*(\S[^*]*?)\*(?!\w)", r"\1", text)
    return " ".join(text.split())


def content_lines(text: str, markdown: bool = False) -> list[str]:
    lines = (normalise_line(line, markdown) for line in text.split("\n"))
    return [line for line in lines if any(char.isalnum() for char in line)]


def signature_zone(case: Case, required: list[str]) -> set[str]:
    """Lines after the writer's last line that may be a signature."""
    lines = case.body.replace("\r\n", "\n").split("\n")
    normalised = [normalise_line(line, case.markdown) for line in lines]
    last = -1
    for wanted in required:
        try:
            last = normalised.index(wanted, last + 1)
        except ValueError:
            continue
    if last < 0:
        return set()

    zone: set[str] = set()
    for raw, line in zip(lines[last + 1 :], normalised[last + 1 :], strict=True):
        if not line:
            continue
        if _HISTORY_LINE.match(raw) or len(line) >= _MAX_ZONE_CHARS:
            break
        zone.add(line)
        if len(zone) >= _MAX_ZONE_LINES or _DEVICE_LINE.match(raw):
            break
    return zone


def is_kept(case: Case, output: str) -> bool:
    assert case.expected is not None
    expected_lines = [
        line for line in case.expected.split("\n") if not line.lstrip().startswith(">")
    ]
    opener = next(
        (i for i, line in enumerate(expected_lines) if _SIGNATURE_OPENER.match(line)),
        len(expected_lines),
    )
    required = content_lines("\n".join(expected_lines[:opener]), case.markdown)
    optional = set(content_lines("\n".join(expected_lines[opener:]), case.markdown))
    allowed = optional | signature_zone(case, required)

    matched = 0
    for line in content_lines(output, case.markdown):
        if matched < len(required) and line == required[matched]:
            matched += 1
        elif line not in allowed:
            return False
    return matched == len(required)


def is_exact(case: Case, output: str) -> bool:
    assert case.expected is not None
    return squash(output, case.markdown) == squash(case.expected, case.markdown)


def squash(text: str, markdown: bool) -> str:
    lines = (normalise_line(line, markdown) for line in text.split("\n"))
    return " ".join(" ".join(lines).split())


def facts_hold(case: Case, output: str, elapsed_s: float) -> bool:
    text = squash(output, False)
    for kind, value in case.facts:
        wanted = squash(value, False)
        if kind == "starts" and not text.startswith(wanted):
            return False
        if kind == "contains" and wanted not in text:
            return False
        if kind == "lacks" and wanted and wanted in text:
            return False
        if kind == "nonempty" and not text:
            return False
        if kind == "fast" and elapsed_s >= SLOW_S:
            return False
    return True


# --- Report ---------------------------------------------------------------------------


@dataclass
class Tally:
    kept: int = 0
    exact: int = 0
    full: int = 0
    facts: int = 0
    partial: int = 0

    def add(self, other: Tally) -> None:
        for name in ("kept", "exact", "full", "facts", "partial"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def score(cases: list[Case], extract: Callable[[str], str], show: str | None) -> Tally:
    tally = Tally()
    for case in cases:
        started = time.perf_counter()
        try:
            output = extract(case.body) or ""
        except Exception as exc:  # a library crash counts as a miss
            output = f"<crashed: {exc!r}>"
        elapsed_s = time.perf_counter() - started
        misses = []
        if case.expected is not None:
            tally.full += 1
            kept, exact = is_kept(case, output), is_exact(case, output)
            tally.kept += kept
            tally.exact += exact
            misses += [] if kept else ["kept"]
            misses += [] if exact else ["exact"]
        if case.facts:
            tally.partial += 1
            holds = facts_hold(case, output, elapsed_s)
            tally.facts += holds
            misses += [] if holds else ["facts"]
        if show and misses:
            print(f"  {show:<22} {case.suite}/{case.name}: misses {', '.join(misses)}")
    return tally


def rate(hits: int, total: int) -> str:
    return (
        f"{hits:>3}/{total:<3} {100 * hits / total:5.1f}%"
        if total
        else "    -         "
    )


def print_table(title: str, tallies: dict[str, Tally]) -> None:
    print(f"\n{title}")
    print(f"  {'extractor':<22} {'kept':>15} {'exact':>15} {'facts':>15}")
    for name, tally in tallies.items():
        kept = rate(tally.kept, tally.full)
        exact = rate(tally.exact, tally.full)
        facts = rate(tally.facts, tally.partial)
        print(f"  {name:<22} {kept:>15} {exact:>15} {facts:>15}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=REPO.parent / "shared" / "corpus"
    )
    parser.add_argument("--cases", action="store_true", help="list every miss")
    args = parser.parse_args(argv)

    EXTRACTORS.update(optional_extractors())
    EXTRACTORS["peb-mail"] = run_peb_mail
    overall = {name: Tally() for name in EXTRACTORS}
    for suite, load in SUITES.items():
        folder = args.corpus / suite
        if (
            not (folder / "expected.json").exists()
            and not (folder / "trimmed").exists()
        ):
            print(f"\nnote: suite {suite} not found under {args.corpus}, skipped")
            continue
        cases = list(load(folder))
        tallies = {}
        for name, extract in EXTRACTORS.items():
            tallies[name] = score(cases, extract, name if args.cases else None)
            overall[name].add(tallies[name])
        print_table(f"{suite} ({len(cases)} cases)", tallies)
    print_table("overall", overall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
