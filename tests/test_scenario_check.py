"""Tests for the scenario checker, the preview and the model review.

Planted gaps are written as scenario files into tmp_path; the model review
goes through litellm's real HTTP client to the loopback model server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from peb_mail.config import GraderConfig
from peb_mail.errors import GradingError, NotFoundError
from peb_mail.scenario_check import (
    Finding,
    check_scenarios,
    find_loaded,
    find_placeholders,
    render_preview,
    review_offline,
    review_with_model,
)
from tests.conftest import DOMAIN, SERVICE, make_config
from tests.model_server import (  # noqa: F401 (model_server_fixture registers the fixture)
    ModelServer,
    ScriptedReply,
    model_server_fixture,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS_DIR = PROJECT_ROOT / "scenarios"
SHIPPED_IDS = {
    "correct-error-in-report",
    "follow-up-late-invoice",
    "follow-up-missing-documents",
    "missed-remote-standup",
    "clarify-multistep-process",
    "clarify-vague-task",
    "request-deadline-adjustment",
    "reschedule-client-call",
    "reschedule-internal-meeting",
    "respond-to-customer-complaint",
    "respond-to-feedback-slow-responses",
}

BASE: dict[str, Any] = {
    "id": "planted",
    "title": "Send the weekly update",
    "type": "initiate",
    "environment": "You are an assistant at Harbor Logistics.",
    "task": "Write to Leo Park about the delivery schedule for next week.",
    "grading_focus": "A clear update.",
    "subject_keywords": ["delivery"],
    "counterpart": {
        "name": "Leo Park",
        "role": "Team Lead, your manager",
        "local_part": "leo.park",
        "style": "Calm.",
        "knows": "The schedule moved to Tuesday.",
    },
    "key_facts": [
        {
            "text": "Deliveries start on Tuesday.",
            "keywords": ["tuesday"],
            "example": "The first deliveries go out on Tuesday.",
        },
    ],
    "key_points": [
        {
            "text": "Give the delivery schedule.",
            "keywords": ["schedule"],
            "example": "Here is the delivery schedule for next week.",
            "question": "What is the schedule for next week?",
        },
    ],
}


def toml_value(value: Any) -> str:
    if isinstance(value, str | int) and not isinstance(value, bool):
        # A JSON string is also a valid TOML basic string.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML in these tests")


def to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    sections: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            sections.append(f"\n[{key}]")
            sections.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for table in value:
                sections.append(f"\n[[{key}]]")
                sections.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines + sections) + "\n"


def plant(tmp_path: Path, **changes: Any) -> list[Finding]:
    """Write BASE with ``changes`` as the only scenario and check the folder."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (tmp_path / "planted.toml").write_text(to_toml(data), encoding="utf-8")
    return check_scenarios(tmp_path, DOMAIN)


def codes(findings: list[Finding]) -> list[str]:
    return [finding.code for finding in findings]


def reply_changes(task: str, starter_body: str) -> dict[str, Any]:
    return {
        "type": "reply",
        "task": task,
        "starter_subject": "Delivery schedule",
        "starter_body": starter_body,
    }


# -- shipped scenarios ------------------------------------------------------


def test_shipped_catalogue_has_eleven_ids() -> None:
    findings = review_offline(SCENARIOS_DIR, DOMAIN)
    ids = {path.stem for path in SCENARIOS_DIR.glob("*.toml")}

    assert ids == SHIPPED_IDS
    assert "load-failed" not in codes(findings)


def test_shipped_scenarios_have_no_errors() -> None:
    findings = check_scenarios(SCENARIOS_DIR, DOMAIN)

    errors = [
        f"{f.scenario_id}: {f.message}" for f in findings if f.severity == "error"
    ]
    assert errors == []


def test_shipped_scenarios_have_no_warnings() -> None:
    findings = check_scenarios(SCENARIOS_DIR, DOMAIN)

    assert [f"{f.scenario_id}: {f.message}" for f in findings] == []


@pytest.mark.parametrize("scenario_id", sorted(SHIPPED_IDS))
def test_shipped_scenario_sizes(scenario_id: str) -> None:
    scenario = find_loaded(SCENARIOS_DIR, scenario_id)

    assert 2 <= len(scenario.key_facts) <= 4
    assert 3 <= len(scenario.key_points) <= 5
    assert scenario.subject_keywords
    assert scenario.artefacts or scenario.type == "reply"


def test_clean_planted_file_passes(tmp_path: Path) -> None:
    assert plant(tmp_path) == []


# -- planted gaps -------------------------------------------------------------


def test_unloadable_file_is_one_finding(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('id = "broken"\ntitle = ', encoding="utf-8")

    findings = check_scenarios(tmp_path, DOMAIN)

    assert codes(findings) == ["load-failed"]
    assert findings[0].scenario_id == "broken"
    assert findings[0].severity == "error"
    assert "invalid TOML" in findings[0].message


def test_missing_key_is_load_failed(tmp_path: Path) -> None:
    findings = plant(tmp_path, grading_focus=None)

    assert codes(findings) == ["load-failed"]
    assert '"grading_focus"' in findings[0].message


def test_report_you_sent_is_missing(tmp_path: Path) -> None:
    task = "Yesterday you sent Leo the weekly report. Tell him about a mistake in it."
    findings = plant(tmp_path, task=task)

    assert codes(findings) == ["missing-material"]
    assert "report" in findings[0].message
    assert findings[0].severity == "error"


@pytest.mark.parametrize(
    "task",
    [
        "Check the report you sent to Leo on Monday and correct it.",
        "Remind Leo about the invoice that Maria sent last week.",
        "Read the notes from yesterday's meeting and write to Leo.",
        "Use the following list to write to Leo about the schedule.",
        "Answer the questions in your previous email to Leo again.",
        "Leo needs the schedule. Your notes are below.",
    ],
)
def test_reference_without_material(tmp_path: Path, task: str) -> None:
    assert codes(plant(tmp_path, task=task)) == ["missing-material"]


def test_report_you_sent_given_passes(tmp_path: Path) -> None:
    task = "Yesterday you sent Leo the weekly report. Tell him about a mistake in it."
    artefact = {"name": "The weekly report you sent", "text": "Tuesday: 40 boxes"}

    assert plant(tmp_path, task=task, artefacts=[artefact]) == []


def test_attached_file_needs_file_artefact(tmp_path: Path) -> None:
    task = "Send Leo the delivery schedule. The attached spreadsheet has the dates."
    artefact = {"name": "Delivery spreadsheet", "text": "Tuesday: 40 boxes"}

    findings = plant(tmp_path, task=task, artefacts=[artefact])

    assert codes(findings) == ["missing-material"]
    assert "file artefact" in findings[0].message


def test_attached_csv_file_passes(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "deliveries.csv").write_text("day,boxes\nTuesday,40\n")
    task = "Send Leo the delivery schedule. The attached spreadsheet has the dates."
    artefact = {"name": "Deliveries", "file": "files/deliveries.csv"}

    assert plant(tmp_path, task=task, artefacts=[artefact]) == []


def test_named_persons_email_is_missing(tmp_path: Path) -> None:
    task = "Answer the questions in Maria's email about the delivery schedule."

    assert codes(plant(tmp_path, task=task)) == ["missing-material"]


def test_starter_email_provides_email(tmp_path: Path) -> None:
    changes = reply_changes(
        "Leo has sent you an email about the delivery schedule. Answer Leo's email.",
        "Hi {student_name},\n\nWhat is the delivery schedule for next week?\n\nLeo",
    )

    assert plant(tmp_path, **changes) == []


def test_starter_refers_to_missing_list(tmp_path: Path) -> None:
    changes = reply_changes(
        "Leo has sent you an email about the delivery schedule.",
        "Hi {student_name},\n\nThe delivery schedule is in the list below. "
        "Can you check it?\n\nLeo",
    )

    findings = plant(tmp_path, **changes)

    assert codes(findings) == ["missing-material"]
    assert findings[0].message.startswith("starter_body refers to")


def test_unrelated_key_point_is_warning(tmp_path: Path) -> None:
    points = [
        BASE["key_points"][0],
        {
            "text": "Praise the new logo colours.",
            "keywords": ["logo", "colour"],
            "example": "I like the new logo colours.",
            "question": "Do you like the new logo colours?",
        },
    ]

    findings = plant(tmp_path, key_points=points)

    assert codes(findings) == ["unrelated-key-point"]
    assert findings[0].severity == "warning"
    assert "key_points[2]" in findings[0].message


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("task", "Write to {manager_name} about the delivery schedule."),
        ("task", "Write to {{ manager }} about the delivery schedule."),
        ("task", "Hi {student_name}, write about the delivery schedule."),
        ("environment", "You are an assistant at [COMPANY NAME]."),
        ("grading_focus", "A clear update signed with (your name)."),
        ("title", "TODO: title"),
    ],
)
def test_placeholder_in_text_field(tmp_path: Path, field: str, text: str) -> None:
    findings = plant(tmp_path, **{field: text})

    assert codes(findings) == ["placeholder"]
    assert findings[0].message.startswith(f"{field}:")


def test_placeholder_in_artefact_text(tmp_path: Path) -> None:
    artefact = {"name": "Schedule", "text": "Tuesday: 40 boxes, driver <name>"}

    findings = plant(tmp_path, artefacts=[artefact])

    assert codes(findings) == ["placeholder"]
    assert findings[0].message.startswith("artefacts[1].text:")


def test_placeholder_in_starter_body(tmp_path: Path) -> None:
    changes = reply_changes(
        "Leo has sent you an email about the delivery schedule.",
        "Hi {first_name},\n\nWhat is the delivery schedule?\n\nLeo",
    )

    findings = plant(tmp_path, **changes)

    # The loader rejects the file for the same key, so no load-failed finding.
    assert codes(findings) == ["placeholder"]
    assert "{first_name}" in findings[0].message


def test_escaped_braces_in_starter_shown(tmp_path: Path) -> None:
    changes = reply_changes(
        "Leo has sent you an email about the delivery schedule.",
        "Hi {{ name }},\n\nWhat is the delivery schedule?\n\nLeo",
    )

    assert codes(plant(tmp_path, **changes)) == ["placeholder"]


def test_student_name_in_starter_passes() -> None:
    assert find_placeholders("Hi {student_name},", formatted=True) == []


def test_missing_file_artefact(tmp_path: Path) -> None:
    artefact = {"name": "Delivery schedule", "file": "files/nowhere.csv"}

    findings = plant(tmp_path, artefacts=[artefact])

    assert codes(findings) == ["missing-file"]
    assert "files/nowhere.csv" in findings[0].message


def test_local_part_with_domain(tmp_path: Path) -> None:
    counterpart = {**BASE["counterpart"], "local_part": "leo.park@gmail.com"}

    findings = plant(tmp_path, counterpart=counterpart)

    assert codes(findings) == ["foreign-address"]
    assert '"leo.park"' in findings[0].message
    assert DOMAIN in findings[0].message


def test_outside_address_in_task(tmp_path: Path) -> None:
    task = "Write to leo@harbor-logistics.com about the delivery schedule."

    findings = plant(tmp_path, task=task)

    assert codes(findings) == ["foreign-address"]


def test_own_domain_address_passes(tmp_path: Path) -> None:
    task = f"Write to leo.park@{DOMAIN} about the delivery schedule."

    assert plant(tmp_path, task=task) == []


def test_starter_missing_task_content(tmp_path: Path) -> None:
    changes = reply_changes(
        "Leo has sent you a list of the delivery schedule changes for the "
        "warehouse in Rotterdam. Reply to him.",
        "Hi {student_name},\n\nCan we talk tomorrow?\n\nLeo",
    )

    findings = plant(tmp_path, **changes)

    assert codes(findings) == ["starter-mismatch"]
    assert "rotterdam" in findings[0].message


def test_starter_missing_quoted_words(tmp_path: Path) -> None:
    changes = reply_changes(
        'Leo asks you to "move the Tuesday deliveries" in the schedule.',
        "Hi {student_name},\n\nCan you check the delivery schedule?\n\nLeo",
    )

    findings = plant(tmp_path, **changes)

    assert codes(findings) == ["starter-mismatch"]
    assert "move the Tuesday deliveries" in findings[0].message


def test_duplicate_id_is_error(tmp_path: Path) -> None:
    plant(tmp_path)
    (tmp_path / "copy.toml").write_text(
        (tmp_path / "planted.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )

    findings = check_scenarios(tmp_path, DOMAIN)

    assert codes(findings) == ["duplicate-id"]


def test_empty_folder_is_error(tmp_path: Path) -> None:
    assert codes(check_scenarios(tmp_path, DOMAIN)) == ["no-scenarios"]


def test_review_offline_filters_by_id(tmp_path: Path) -> None:
    plant(tmp_path, title="TODO: title")
    (tmp_path / "other.toml").write_text(
        to_toml({**BASE, "id": "other", "environment": "At [COMPANY]."}),
        encoding="utf-8",
    )

    findings = review_offline(tmp_path, DOMAIN, "other")

    assert [f.scenario_id for f in findings] == ["other"]


def test_review_offline_unknown_id(tmp_path: Path) -> None:
    plant(tmp_path)

    with pytest.raises(NotFoundError, match="nothing-here"):
        review_offline(tmp_path, DOMAIN, "nothing-here")


# -- examples and questions ---------------------------------------------------


def with_changes(entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Return a copy of ``entry`` with ``changes``; a None value removes the key."""
    changed = dict(entry)
    for key, value in changes.items():
        if value is None:
            changed.pop(key, None)
        else:
            changed[key] = value
    return changed


def with_point(**changes: Any) -> dict[str, Any]:
    return with_changes(BASE["key_points"][0], **changes)


def with_fact(**changes: Any) -> dict[str, Any]:
    return with_changes(BASE["key_facts"][0], **changes)


def test_point_without_example_warns(tmp_path: Path) -> None:
    findings = plant(tmp_path, key_points=[with_point(example=None)])

    assert codes(findings) == ["missing-example"]
    assert findings[0].severity == "warning"
    assert findings[0].message.startswith("key_points[1]")


def test_point_without_question_warns(tmp_path: Path) -> None:
    findings = plant(tmp_path, key_points=[with_point(question=None)])

    assert codes(findings) == ["missing-question"]
    assert findings[0].severity == "warning"
    assert findings[0].message.startswith("key_points[1]")


def test_fact_without_example_warns(tmp_path: Path) -> None:
    findings = plant(tmp_path, key_facts=[with_fact(example=None)])

    assert codes(findings) == ["missing-example"]
    assert findings[0].severity == "warning"
    assert findings[0].message.startswith("key_facts[1]")


def test_fact_without_question_passes(tmp_path: Path) -> None:
    assert "question" not in BASE["key_facts"][0]
    assert plant(tmp_path) == []


@pytest.mark.parametrize(
    ("example", "mention"),
    [
        ("I know that Leo will share the schedule on Monday.", "Leo will"),
        ("I know that Leo Park needs the schedule today.", "Leo Park needs"),
        ("I will add the dates to Leo's plan.", "Leo's"),
        ("Leo has the old schedule, so here is the new one.", "Leo has"),
    ],
)
def test_example_third_person_name(tmp_path: Path, example: str, mention: str) -> None:
    findings = plant(tmp_path, key_points=[with_point(example=example)])

    assert codes(findings) == ["third-person-counterpart"]
    assert findings[0].severity == "error"
    assert f'"{mention}"' in findings[0].message
    assert findings[0].message.startswith("key_points[1].example:")


def test_fact_example_third_person(tmp_path: Path) -> None:
    fact = with_fact(example="Leo's team starts the deliveries on Tuesday.")

    findings = plant(tmp_path, key_facts=[fact])

    assert codes(findings) == ["third-person-counterpart"]
    assert findings[0].message.startswith("key_facts[1].example:")


@pytest.mark.parametrize(
    "example",
    [
        "Thank you, Leo.",
        "Leo, here is the delivery schedule for next week.",
        "Here is the schedule for this week and for next week.",
    ],
)
def test_example_addressing_name_passes(tmp_path: Path, example: str) -> None:
    assert plant(tmp_path, key_points=[with_point(example=example)]) == []


def test_given_name_of_two_words(tmp_path: Path) -> None:
    counterpart = {**BASE["counterpart"], "name": "Mei Lin Tan"}
    point = with_point(example="I know that Mei Lin needs the schedule today.")

    findings = plant(tmp_path, counterpart=counterpart, key_points=[point])

    assert codes(findings) == ["third-person-counterpart"]
    assert '"Mei Lin needs"' in findings[0].message


@pytest.mark.parametrize(
    ("example", "placeholder"),
    [
        ("The schedule starts on [day].", "[day]"),
        ("The first truck leaves at <time>.", "<time>"),
        ("The first truck leaves at ___ on Tuesday.", "___"),
        ("The first truck leaves at XX:00 on Tuesday.", "XX"),
        ("The first truck leaves on Tuesday at ...", "..."),
        ("Best regards, (your name)", "(your name)"),
        ("The schedule starts on {day}.", "{day}"),
    ],
)
def test_placeholder_in_example(tmp_path: Path, example: str, placeholder: str) -> None:
    findings = plant(tmp_path, key_points=[with_point(example=example)])

    assert codes(findings) == ["placeholder"]
    assert findings[0].severity == "error"
    assert findings[0].message.startswith("key_points[1].example:")
    assert f'"{placeholder}"' in findings[0].message


def test_placeholder_in_fact_example(tmp_path: Path) -> None:
    findings = plant(tmp_path, key_facts=[with_fact(example="Deliveries start [day].")])

    assert codes(findings) == ["placeholder"]
    assert findings[0].message.startswith("key_facts[1].example:")


def test_brackets_outside_example_allowed(tmp_path: Path) -> None:
    task = "Write to Leo Park about the delivery schedule (next week) ..."

    assert plant(tmp_path, task=task) == []


# -- preview ------------------------------------------------------------------


def test_preview_brief_has_attachment(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    scenario = find_loaded(SCENARIOS_DIR, "correct-error-in-report")

    messages = render_preview(scenario, config, "Ana Silva")
    brief = messages[0]
    body = brief.get_body(preferencelist=("plain",))
    attachments = list(brief.iter_attachments())

    assert len(messages) == 1
    assert brief["Subject"] == f"Scenario {scenario.number}: {scenario.title}"
    assert body is not None
    assert "Hello Ana," in body.get_content()
    assert "Lines from the report you sent yesterday" in body.get_content()
    assert f"daniel.okafor+preview@{DOMAIN}" in body.get_content()
    assert brief["Reply-To"] == SERVICE
    assert [part.get_filename() for part in attachments] == [
        "q1_regional_sales_corrected.csv"
    ]
    assert b"North,March,14200" in attachments[0].get_content().encode()


def test_preview_reply_adds_starter(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    scenario = find_loaded(SCENARIOS_DIR, "clarify-multistep-process")

    brief, starter = render_preview(scenario, config, "Ana Silva")
    starter_body = starter.get_body(preferencelist=("plain",))

    assert brief["Reply-To"] == SERVICE
    assert starter["Subject"] == scenario.starter_subject
    assert starter["From"] == f"Kwame Mensah <kwame.mensah+preview@{DOMAIN}>"
    assert starter_body is not None
    assert starter_body.get_content().startswith("Hi Ana,")


# -- model review -------------------------------------------------------------


def review_config(server: ModelServer, monkeypatch: pytest.MonkeyPatch) -> GraderConfig:
    monkeypatch.setenv("PEB_MAIL_REVIEW_TEST_KEY", "test-key")
    return GraderConfig(
        kind="llm",
        model="openai/test-model",
        api_base=server.api_base,
        api_key_env="PEB_MAIL_REVIEW_TEST_KEY",
        timeout_s=5.0,
    )


async def test_review_sends_scenario_text(
    model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_server.push(ScriptedReply(content="Verdict: ready\nNo problems found."))
    scenario = find_loaded(SCENARIOS_DIR, "follow-up-late-invoice")
    grader = review_config(model_server, monkeypatch)

    text = await review_with_model(scenario, grader)
    prompt = model_server.requests[0]["messages"][0]["content"]

    assert text == "Verdict: ready\nNo problems found."
    assert len(model_server.requests) == 1
    assert scenario.task in prompt
    assert "Invoice number:  147" in prompt
    assert scenario.counterpart.knows in prompt


async def test_review_server_error_raises(
    model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_server.push(ScriptedReply(status=400))
    scenario = find_loaded(SCENARIOS_DIR, "follow-up-late-invoice")
    grader = review_config(model_server, monkeypatch)

    with pytest.raises(GradingError, match="test-model"):
        await review_with_model(scenario, grader)
