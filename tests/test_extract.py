"""Tests for peb_mail.extract: the student's new text in a reply email."""

from __future__ import annotations

import email
import json
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from peb_mail.extract import ExtractedReply, extract_reply, html_to_text

FIXTURES = Path(__file__).parent / "fixtures"

REPLY = "Hi Maria,\n\nI will send the report on Friday.\n\nBest regards,\nAna"


def test_quoted_lines_are_dropped() -> None:
    body = f"{REPLY}\n\n> Hi Ana,\n> Can you send the report?\n> Maria\n"

    result = extract_reply(body)

    assert result == ExtractedReply(text=REPLY, had_quote=True, signature=None)


def test_on_wrote_header_is_dropped() -> None:
    body = (
        f"{REPLY}\n\n"
        "On Tue, 3 Jun 2025 at 10:15, Maria Lopez <maria@example.com> wrote:\n\n"
        "> Can you send the report?\n"
    )

    assert extract_reply(body).text == REPLY


def test_gmail_header_split_over_lines() -> None:
    body = (
        f"{REPLY}\n\n"
        "On Tue, Jun 3, 2025 at 10:15 AM Maria Lopez from Procurement <\n"
        "maria.lopez+3f9a@practice.example.org> wrote:\n\n"
        "> Can you send the report?\n"
    )

    assert extract_reply(body).text == REPLY


@pytest.mark.parametrize(
    "header",
    [
        "Am 03.06.2025 um 10:15 schrieb Maria Lopez <maria@example.com>:",
        "Le mar. 3 juin 2025 à 10:15, Maria Lopez <maria@example.com> a écrit :",
        "El mar, 3 jun 2025 a las 10:15, Maria Lopez (<maria@example.com>)\nescribió:",
    ],
    ids=["german", "french", "spanish"],
)
def test_translated_header_is_dropped(header: str) -> None:
    body = f"{REPLY}\n\n{header}\n\n> Können Sie den Bericht schicken?\n"

    result = extract_reply(body)

    assert result.text == REPLY
    assert result.had_quote


@pytest.mark.parametrize(
    "header",
    [
        'On 03/06/2025, 10:15, "Maria Lopez" <maria@example.com> wrote:',
        "On Tuesday, 3 June 2025 at 10:15:32 BST, Maria Lopez <maria@example.com> "
        "wrote:",
        "On 03/06/2025 10:15, Maria Lopez wrote:",
        "------- Original Message -------\n"
        "On Tuesday, June 3rd, 2025 at 10:15 AM, Maria <maria@example.com> wrote:",
        "Il giorno mar 3 giu 2025 alle ore 10:15 Maria Lopez <maria@example.com> "
        "ha scritto:",
        "Op di 3 jun 2025 om 10:15 schreef Maria Lopez <maria@example.com>:",
        "Den tis 3 juni 2025 kl 10:15 skrev Maria Lopez <maria@example.com>:",
        "Em ter., 3 de jun. de 2025 às 10:15, Maria Lopez <maria@example.com> "
        "escreveu:",
        "3 июня 2025 г., в 10:15, Maria Lopez <maria@example.com> написал(а):",
        "Maria Lopez <maria@example.com> 於 2025年6月3日 週二 上午10:15寫道：",
    ],
    ids=[
        "outlook-mac",
        "yahoo",
        "thunderbird",
        "proton",
        "italian",
        "dutch",
        "swedish",
        "portuguese",
        "russian",
        "chinese",
    ],
)
@pytest.mark.parametrize("quoted", [True, False], ids=["quoted", "unquoted"])
def test_client_header_ends_reply(header: str, quoted: bool) -> None:
    prefix = "> " if quoted else ""
    body = f"{REPLY}\n\n{header}\n\n{prefix}Hi Ana,\n{prefix}Can you confirm?\n"

    assert extract_reply(body).text == REPLY


def test_original_message_block_is_dropped() -> None:
    body = (
        f"{REPLY}\n\n"
        "-----Original Message-----\n"
        "From: Maria Lopez\n"
        "Sent: Tuesday, June 3, 2025 10:15 AM\n"
        "To: Ana Silva\n"
        "Subject: Quarterly report\n\n"
        "Hi Ana,\nCan you send the report?\n"
    )

    result = extract_reply(body)

    assert result.text == REPLY
    assert result.had_quote


def test_outlook_block_without_separator_is_dropped() -> None:
    body = (
        f"{REPLY}\n\n"
        "From: Maria Lopez <maria@example.com>\n"
        "Sent: Tuesday, June 3, 2025 10:15 AM\n"
        "To: Ana Silva <ana@example.com>\n"
        "Subject: Quarterly report\n\n"
        "Hi Ana,\nCan you send the report?\n"
    )

    assert extract_reply(body).text == REPLY


def test_underscore_rule_before_outlook_block() -> None:
    body = (
        f"{REPLY}\n"
        "________________________________\n"
        "From: Maria Lopez <maria@example.com>\n"
        "Sent: Tuesday, June 3, 2025 10:15 AM\n"
        "Subject: Quarterly report\n\n"
        "Can you send the report?\n"
    )

    assert extract_reply(body).text == REPLY


def test_dash_dash_signature_is_removed() -> None:
    body = f"{REPLY}\n\n-- \nAna Silva\nJunior Analyst | +44 20 7946 0000\n"

    result = extract_reply(body)

    assert result.text == REPLY
    assert result.signature == "Ana Silva\nJunior Analyst | +44 20 7946 0000"
    assert not result.had_quote


@pytest.mark.parametrize(
    "device_line",
    [
        "Sent from my iPhone",
        "Sent from my Samsung Galaxy smartphone.",
        "Sent from Mail for Windows",
        "Get Outlook for iOS",
        "Get Outlook for Android<https://aka.ms/AAb9ysg>",
        "Von meinem iPhone gesendet",
        "Envoyé de mon iPhone",
        "Enviado desde mi iPhone",
    ],
)
def test_device_line_is_removed(device_line: str) -> None:
    body = f"{REPLY}\n\n{device_line}\n\nOn 3 Jun 2025, at 10:15, Maria wrote:\n> Hi\n"

    result = extract_reply(body)

    assert result.text == REPLY
    assert result.signature == device_line


def test_sign_off_block_is_kept() -> None:
    body = "Thanks for the update.\n\nBest regards,\nAna\n\nKind regards,\nAna Silva"

    assert extract_reply(body).text == body


def test_inline_answers_are_joined() -> None:
    body = (
        "On Tue, 3 Jun 2025 at 10:15, Maria Lopez <maria@example.com> wrote:\n"
        "> Can you send the report by Friday?\n"
        "\n"
        "Yes, it will be ready on Thursday.\n"
        "\n"
        "> Will Tom review it?\n"
        ">\n"
        "\n"
        "No, Priya will review it.\n"
        "\n"
        "> Thanks,\n"
        "> Maria\n"
    )

    result = extract_reply(body)

    assert (
        result.text == "Yes, it will be ready on Thursday.\n\nNo, Priya will review it."
    )
    assert result.had_quote


def test_lines_starting_with_on_are_kept() -> None:
    body = (
        "On Monday I will send the file.\n"
        "On 12 June we meet the client at 10:30:\n"
        "- agenda\n"
        "- budget\n\n"
        "On behalf of the team, thank you."
    )

    result = extract_reply(body)

    assert result.text == body
    assert not result.had_quote


@pytest.mark.parametrize(
    "body",
    [
        "Something wrote:\nthe numbers in the report do not add up.",
        "Dear Tom,\n\nOn 3 May 2024, I wrote:\n\nThe delivery is late.",
        "Agenda for the 10:30 call with John <john@example.com>:\n1. Budget",
        "Sent from my desk, which is much easier than my phone.\n\nAna",
        "The file was sent from my iPhone app to the team.",
    ],
    ids=["someone-wrote", "i-wrote", "address-colon", "sent-from-prose", "iphone"],
)
def test_header_like_prose_is_kept(body: str) -> None:
    result = extract_reply(body)

    assert result.text == body
    assert not result.had_quote


def test_only_quoted_text_gives_empty() -> None:
    body = (
        "\n\nOn Tue, 3 Jun 2025 at 10:15, Maria Lopez <maria@example.com> wrote:\n"
        "> Can you send the report?\n>\n> Maria\n\n"
    )

    result = extract_reply(body)

    assert result == ExtractedReply(text="", had_quote=True, signature=None)


def test_empty_outlook_reply_gives_empty() -> None:
    body = (
        "\n\nFrom: Maria Lopez <maria@example.com>\n"
        "Sent: Tuesday, June 3, 2025 10:15 AM\n"
        "To: Ana Silva\nSubject: Quarterly report\n\nCan you send the report?\n"
    )

    assert extract_reply(body).text == ""


def test_line_endings_and_trailing_blanks_normalised() -> None:
    body = "Hi Maria,\r\n\r\nDone.\r\nAna\r\n\r\n\r\n> old\r\n\r\n"

    assert extract_reply(body).text == "Hi Maria,\n\nDone.\nAna"


def test_memo_and_timetable_fields_are_kept() -> None:
    body = (
        "Please find the notice below.\n\n"
        "Date: 3 June 2025\nTo: All staff\nSubject: Office move\n\n"
        "Opening hours next week:\nFrom: 9:00\nTo: 17:00\n"
    )

    assert extract_reply(body).text == body.rstrip()


def test_wrapped_quote_tail_is_not_answer() -> None:
    body = (
        f"{REPLY}\n\n"
        "On 3 Jun 2025, at 10:15, Maria Lopez <maria@example.com> wrote:\n"
        "> The supplier says the delivery of the new chairs will be late,\n"
        "probably until the end of the month.\n"
        "> Maria\n"
    )

    assert extract_reply(body).text == REPLY


def test_long_bodies_parse_quickly() -> None:
    quote = "> " + "ACGT" * 5000 + "\n"
    body = REPLY + "\n\n" + quote * 200 + "*" * 20000 + "\n" + "-" * 20000 + "\n"

    started = time.perf_counter()
    extract_reply(body)

    assert time.perf_counter() - started < 1.0


# --- HTML ----------------------------------------------------------------------


def test_html_paragraphs_and_breaks_kept() -> None:
    html = "<p>Hi Maria,</p><p>The report is ready.<br>See you Friday.</p><p>Ana</p>"

    assert html_to_text(html) == (
        "Hi Maria,\n\nThe report is ready.\nSee you Friday.\n\nAna"
    )


def test_html_blockquote_becomes_quoted_lines() -> None:
    html = (
        "<div>Thanks!</div>"
        "<blockquote><p>First line</p><blockquote>Older mail</blockquote></blockquote>"
        "<div>Inline answer.</div>"
    )

    text = html_to_text(html)

    assert text == "Thanks!\n\n> First line\n>\n> > Older mail\n\nInline answer."
    assert extract_reply(text).text == "Thanks!\n\nInline answer."


def test_html_gmail_reply_extracts_new_text() -> None:
    html = (
        '<div dir="ltr">Sounds good.<div><br></div><div>Ana</div></div>'
        '<div class="gmail_signature">Ana Silva | Analyst</div>'
        '<div class="gmail_quote"><div class="gmail_attr">On Tue, Jun 3, 2025 at '
        "10:15 AM Maria &lt;maria@example.com&gt; wrote:<br></div>"
        "<blockquote>Shall we meet at 10?</blockquote></div>"
    )

    result = extract_reply(html_to_text(html))

    assert result == ExtractedReply("Sounds good.\n\nAna", True, "Ana Silva | Analyst")


def test_html_without_content_gives_empty() -> None:
    assert html_to_text("  ") == ""
    assert (
        html_to_text("<html><head><style>p {}</style></head><body></body></html>") == ""
    )


# --- Corpus fixtures ----------------------------------------------------------------


def _fixture_cases() -> list[tuple[Path, str]]:
    cases = []
    for expected_file in sorted(FIXTURES.glob("*/expected.json")):
        expected = json.loads(expected_file.read_text(encoding="utf-8"))
        cases += [
            (expected_file.parent / name, reply) for name, reply in expected.items()
        ]
    return cases


def _read_body(path: Path) -> str:
    if path.suffix == ".html":
        return html_to_text(path.read_text(encoding="utf-8"))
    if path.suffix == ".eml":
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        part = message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())
    return path.read_bytes().decode("utf-8")


def _content_lines(text: str) -> list[str]:
    """Non-empty lines with letters or digits, whitespace collapsed.

    Lines the upstream expectation keeps with a ">" prefix are left out: they
    are quoted history, which we drop.
    """
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return [
        line
        for line in lines
        if any(char.isalnum() for char in line) and not line.startswith(">")
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    _fixture_cases(),
    ids=lambda value: (
        f"{value.parent.name}/{value.name}" if isinstance(value, Path) else ""
    ),
)
def test_corpus_reply_lines_are_kept(path: Path, expected: str) -> None:
    text = extract_reply(_read_body(path)).text

    assert _content_lines(text) == _content_lines(expected)


def test_corpus_fixtures_are_present() -> None:
    assert len(_fixture_cases()) >= 30
    for folder in {path.parent for path, _ in _fixture_cases()}:
        assert (folder / "LICENSE").is_file()
        assert (folder / "SOURCE.md").is_file()
