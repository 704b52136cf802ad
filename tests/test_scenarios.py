"""Tests for the scenario loader, using the shipped scenarios and files in tmp_path."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from peb_mail.errors import ConfigError, NotFoundError
from peb_mail.models import Scenario
from peb_mail.scenarios import (
    DEFAULT_ORDER,
    find_scenario,
    load_scenario,
    load_scenarios,
    render_starter,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS_DIR = PROJECT_ROOT / "scenarios"
DOCS_PATH = PROJECT_ROOT / "docs" / "scenarios.md"
SHIPPED_IDS = [
    "correct-error-in-report",
    "clarify-vague-task",
    "reschedule-client-call",
    "missed-remote-standup",
    "reschedule-internal-meeting",
    "follow-up-late-invoice",
    "follow-up-missing-documents",
    "respond-to-feedback-slow-responses",
    "request-deadline-adjustment",
    "respond-to-customer-complaint",
    "clarify-multistep-process",
]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string is also a valid TOML basic string.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML in these tests")


def to_toml(data: dict[str, Any]) -> str:
    """Serialise the subset of TOML the scenario format uses."""
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


def initiate_data(scenario_id: str = "write-first") -> dict[str, Any]:
    return {
        "id": scenario_id,
        "title": "Write the first email",
        "type": "initiate",
        "environment": "You work in an office.",
        "task": "Write to your manager.",
        "grading_focus": "Clear purpose.",
        "subject_keywords": ["update"],
        "counterpart": {
            "name": "Maria Lopez",
            "role": "Manager",
            "local_part": "maria.lopez",
            "style": "Direct.",
            "knows": "The deadline is Friday.",
        },
        "key_facts": [{"text": "The deadline is Friday.", "keywords": ["friday"]}],
        "key_points": [{"text": "Say thank you.", "keywords": ["thank"]}],
    }


def reply_data(scenario_id: str = "answer-email") -> dict[str, Any]:
    data = initiate_data(scenario_id)
    data["type"] = "reply"
    data["starter_subject"] = "Quick question"
    data["starter_body"] = "Hi {student_name},\n\nAre you free today?\n\nMaria"
    return data


def write_scenario(folder: Path, data: dict[str, Any], name: str = "bad.toml") -> Path:
    path = folder / name
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return str(info.value)


def folder_error(folder: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenarios(folder)
    return str(info.value)


# Shipped scenarios and docs


def test_shipped_scenarios_load() -> None:
    scenarios = load_scenarios(SCENARIOS_DIR)
    assert [scenario.id for scenario in scenarios] == SHIPPED_IDS
    assert [scenario.number for scenario in scenarios] == list(range(1, 12))


def test_shipped_scenarios_types() -> None:
    types = {s.id: s.type for s in load_scenarios(SCENARIOS_DIR)}
    assert types["correct-error-in-report"] == "initiate"
    assert types["clarify-vague-task"] == "reply"
    assert types["reschedule-client-call"] == "reply"


@pytest.mark.parametrize("scenario_id", SHIPPED_IDS)
def test_shipped_scenario_counts(scenario_id: str) -> None:
    scenario = find_scenario(load_scenarios(SCENARIOS_DIR), scenario_id)
    assert 2 <= len(scenario.key_facts) <= 4
    assert 3 <= len(scenario.key_points) <= 5
    assert scenario.subject_keywords


def test_shipped_corrected_csv_attached() -> None:
    scenario = find_scenario(load_scenarios(SCENARIOS_DIR), "correct-error-in-report")
    files = [artefact for artefact in scenario.artefacts if artefact.path]
    assert len(files) == 1
    assert files[0].path is not None
    assert files[0].path.is_absolute()
    assert files[0].path.is_file()
    assert files[0].content_type == "text/csv"


def test_corrected_csv_totals_add_up() -> None:
    path = SCENARIOS_DIR / "files" / "q1_regional_sales_corrected.csv"
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    revenue = {(row["region"], row["period"]): int(row["revenue_usd"]) for row in rows}
    assert revenue[("North", "March")] == 14200
    assert revenue[("North", "Q1 total")] == 45300
    for region in ("North", "South", "East", "West"):
        months = sum(revenue[(region, m)] for m in ("January", "February", "March"))
        assert revenue[(region, "Q1 total")] == months, region


def test_shipped_keywords_find_figures() -> None:
    scenario = find_scenario(load_scenarios(SCENARIOS_DIR), "correct-error-in-report")
    keywords = [keyword for fact in scenario.key_facts for keyword in fact.keywords]
    assert "14,200" in keywords
    assert "14200" in keywords
    assert "45,300" in keywords


def test_docs_example_loads(tmp_path: Path) -> None:
    match = re.search(r"```toml\n(.*?)```", DOCS_PATH.read_text(encoding="utf-8"), re.S)
    assert match is not None
    path = tmp_path / "example.toml"
    path.write_text(match.group(1), encoding="utf-8")
    scenario = load_scenario(path)
    assert scenario.id == "ask-for-more-time"
    assert render_starter(scenario, "Ana Silva").startswith("Hi Ana,")


# Loading and ordering


def test_sorts_by_order_then_id(tmp_path: Path) -> None:
    late = initiate_data("aaa-late")
    late["order"] = 20
    early_b = initiate_data("bbb-early")
    early_b["order"] = 10
    early_a = initiate_data("ccc-early")
    early_a["order"] = 10
    write_scenario(tmp_path, late, "one.toml")
    write_scenario(tmp_path, early_b, "two.toml")
    write_scenario(tmp_path, early_a, "three.toml")
    scenarios = load_scenarios(tmp_path)
    assert [s.id for s in scenarios] == ["bbb-early", "ccc-early", "aaa-late"]
    assert [s.number for s in scenarios] == [1, 2, 3]


def test_order_defaults_to_1000(tmp_path: Path) -> None:
    first = initiate_data("zzz-first")
    first["order"] = DEFAULT_ORDER - 1
    write_scenario(tmp_path, first, "first.toml")
    write_scenario(tmp_path, initiate_data("aaa-default"), "default.toml")
    assert [s.id for s in load_scenarios(tmp_path)] == ["zzz-first", "aaa-default"]


def test_subfolders_are_not_read(tmp_path: Path) -> None:
    write_scenario(tmp_path, initiate_data(), "good.toml")
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "broken.toml").write_text("id = ", encoding="utf-8")
    assert [s.id for s in load_scenarios(tmp_path)] == ["write-first"]


def test_load_scenario_leaves_number_zero(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path, initiate_data(), "ok.toml"))
    assert scenario.number == 0
    assert scenario.source_path == (tmp_path / "ok.toml").resolve()


def test_text_values_are_stripped(tmp_path: Path) -> None:
    data = initiate_data()
    data["task"] = "\n  Write to your manager.\n"
    scenario = load_scenario(write_scenario(tmp_path, data))
    assert scenario.task == "Write to your manager."


def test_file_artefact_stored_absolute(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "data.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    data = initiate_data()
    data["artefacts"] = [{"name": "Data", "file": "files/data.csv"}]
    scenario = load_scenario(write_scenario(tmp_path, data))
    assert scenario.artefacts[0].path == (tmp_path / "files" / "data.csv").resolve()
    assert scenario.artefacts[0].content_type == "text/csv"


def test_file_artefact_keeps_content_type(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    data = initiate_data()
    data["artefacts"] = [
        {"name": "Data", "file": "data.bin", "content_type": "application/x-test"}
    ]
    scenario = load_scenario(write_scenario(tmp_path, data))
    assert scenario.artefacts[0].content_type == "application/x-test"


def test_text_artefact_is_quoted(tmp_path: Path) -> None:
    data = initiate_data()
    data["artefacts"] = [{"name": "Notes", "text": "line one\nline two"}]
    scenario = load_scenario(write_scenario(tmp_path, data))
    assert scenario.artefacts[0].text == "line one\nline two"
    assert scenario.artefacts[0].path is None


# Validation errors: each message names the file and the key


def test_invalid_toml_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('id = "x"\ntitle = \n', encoding="utf-8")
    message = load_error(path)
    assert "bad.toml" in message
    assert "invalid TOML" in message
    assert "line 2" in message


def test_non_utf8_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'title = "caf\xe9"\n')
    message = load_error(path)
    assert "bad.toml" in message
    assert "UTF-8" in message


def test_missing_required_key(tmp_path: Path) -> None:
    data = initiate_data()
    del data["title"]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'missing key "title"' in message


def test_missing_counterpart_key(tmp_path: Path) -> None:
    data = initiate_data()
    del data["counterpart"]["role"]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'missing key "counterpart.role"' in message


def test_unknown_key_suggests_fix(tmp_path: Path) -> None:
    data = initiate_data()
    data["titel"] = "Typo"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'unknown key "titel"' in message
    assert 'did you mean "title"' in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    data = initiate_data()
    data["key_points"][0]["keyword"] = ["typo"]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'unknown key "key_points[1].keyword"' in message


def test_wrong_type_string(tmp_path: Path) -> None:
    data = initiate_data()
    data["title"] = 5
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "title" must be a string' in message
    assert "an integer (5)" in message


def test_wrong_type_order(tmp_path: Path) -> None:
    data = initiate_data()
    data["order"] = "first"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "order" must be an integer' in message
    assert '"first"' in message


def test_boolean_order_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["order"] = True
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "order" must be an integer' in message


def test_wrong_type_keyword_list(tmp_path: Path) -> None:
    data = initiate_data()
    data["subject_keywords"] = "update"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "subject_keywords" must be a list of strings' in message


def test_wrong_type_keyword_item(tmp_path: Path) -> None:
    data = initiate_data()
    data["key_points"][0]["keywords"] = ["thank", 3]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "key_points[1].keywords"' in message
    assert "an integer (3)" in message


def test_wrong_type_counterpart(tmp_path: Path) -> None:
    data = initiate_data()
    data["counterpart"] = "Maria"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "counterpart" must be a table' in message


def test_empty_text_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["task"] = "   "
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "task" must not be empty' in message


def test_invalid_type_value(tmp_path: Path) -> None:
    data = initiate_data()
    data["type"] = "replied"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "type" must be "initiate" or "reply"' in message
    assert '"replied"' in message


@pytest.mark.parametrize("bad_id", ["Write-First", "write_first", "write--first", "42"])
def test_invalid_id_rejected(tmp_path: Path, bad_id: str) -> None:
    data = initiate_data(bad_id)
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "id"' in message
    assert f'"{bad_id}"' in message


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    write_scenario(tmp_path, initiate_data("same-id"), "a.toml")
    write_scenario(tmp_path, reply_data("same-id"), "b.toml")
    message = folder_error(tmp_path)
    assert "a.toml" in message
    assert "b.toml" in message
    assert 'key "id" value "same-id"' in message


def test_reply_without_starter_subject(tmp_path: Path) -> None:
    data = reply_data()
    del data["starter_subject"]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'missing key "starter_subject"' in message


def test_reply_without_starter_body(tmp_path: Path) -> None:
    data = reply_data()
    del data["starter_body"]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'missing key "starter_body"' in message


def test_initiate_with_starter_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["starter_body"] = "Hi {student_name},"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "starter_body" is only allowed when "type" is "reply"' in message


def test_initiate_with_subject_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["starter_subject"] = "Hello"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "starter_subject" is only allowed' in message


@pytest.mark.parametrize(
    "bad_local_part", ["Maria.Lopez", "maria lopez", "maria@lopez", ".maria", "a..b"]
)
def test_invalid_local_part(tmp_path: Path, bad_local_part: str) -> None:
    data = initiate_data()
    data["counterpart"]["local_part"] = bad_local_part
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "counterpart.local_part"' in message
    assert json.dumps(bad_local_part) in message


def test_local_part_plus_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["counterpart"]["local_part"] = "maria+sales"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "counterpart.local_part" must not contain "+"' in message


def test_local_part_too_long(tmp_path: Path) -> None:
    data = initiate_data()
    data["counterpart"]["local_part"] = "a" * 65
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "counterpart.local_part"' in message


def test_local_part_allows_hyphen_digit(tmp_path: Path) -> None:
    data = initiate_data()
    data["counterpart"]["local_part"] = "support-team.2"
    scenario = load_scenario(write_scenario(tmp_path, data))
    assert scenario.counterpart.local_part == "support-team.2"


def test_unknown_placeholder_rejected(tmp_path: Path) -> None:
    data = reply_data()
    data["starter_body"] = "Hi {name},"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "starter_body" contains the placeholder "{name}"' in message


def test_formatted_placeholder_rejected(tmp_path: Path) -> None:
    data = reply_data()
    data["starter_body"] = "Hi {student_name!r},"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert '"{student_name!r}"' in message


def test_unmatched_brace_rejected(tmp_path: Path) -> None:
    data = reply_data()
    data["starter_body"] = "Hi {student_name, see the {draft"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "starter_body" has an unmatched brace' in message


def test_placeholder_in_subject_rejected(tmp_path: Path) -> None:
    data = reply_data()
    data["starter_subject"] = "Hello {student_name}"
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "starter_subject" must not contain' in message


def test_missing_artefact_file(tmp_path: Path) -> None:
    data = initiate_data()
    data["artefacts"] = [{"name": "Report", "file": "files/missing.csv"}]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "artefacts[1].file"' in message
    assert '"files/missing.csv"' in message


def test_artefact_folder_not_file(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    data = initiate_data()
    data["artefacts"] = [{"name": "Report", "file": "files"}]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "artefacts[1].file"' in message


def test_artefact_text_and_file(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n", encoding="utf-8")
    data = initiate_data()
    data["artefacts"] = [{"name": "Data", "text": "a", "file": "data.csv"}]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert "artefacts[1]" in message
    assert "exactly one" in message


def test_artefact_without_content(tmp_path: Path) -> None:
    data = initiate_data()
    data["artefacts"] = [{"name": "Data"}]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert "artefacts[1]" in message


def test_text_artefact_content_type(tmp_path: Path) -> None:
    data = initiate_data()
    data["artefacts"] = [{"name": "Notes", "text": "a", "content_type": "text/csv"}]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "artefacts[1].content_type" is only allowed with "file"' in message


def test_duplicate_artefact_names(tmp_path: Path) -> None:
    data = initiate_data()
    data["artefacts"] = [{"name": "Notes", "text": "a"}, {"name": "Notes", "text": "b"}]
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "artefacts[2].name" value "Notes"' in message


def test_empty_key_points_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["key_points"] = []
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "key_points" must have at least one' in message


def test_empty_keywords_rejected(tmp_path: Path) -> None:
    data = initiate_data()
    data["key_facts"][0]["keywords"] = []
    message = load_error(write_scenario(tmp_path, data))
    assert "bad.toml" in message
    assert 'key "key_facts[1].keywords" must list at least one' in message


def test_empty_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a scenario", encoding="utf-8")
    message = folder_error(tmp_path)
    assert str(tmp_path) in message
    assert "no *.toml scenario files" in message


def test_missing_folder_rejected(tmp_path: Path) -> None:
    message = folder_error(tmp_path / "absent")
    assert "absent" in message
    assert "not found" in message


def test_folder_error_names_file(tmp_path: Path) -> None:
    write_scenario(tmp_path, initiate_data(), "good.toml")
    data = initiate_data("other")
    data["type"] = "replied"
    write_scenario(tmp_path, data, "typo.toml")
    message = folder_error(tmp_path)
    assert "typo.toml" in message
    assert 'key "type"' in message


# find_scenario


@pytest.fixture()
def catalogue(tmp_path: Path) -> list[Scenario]:
    write_scenario(tmp_path, initiate_data("alpha"), "alpha.toml")
    write_scenario(tmp_path, reply_data("beta"), "beta.toml")
    return load_scenarios(tmp_path)


def test_find_by_id(catalogue: list[Scenario]) -> None:
    assert find_scenario(catalogue, "beta").id == "beta"


def test_find_by_id_ignores_case(catalogue: list[Scenario]) -> None:
    assert find_scenario(catalogue, " BETA ").id == "beta"


def test_find_by_number(catalogue: list[Scenario]) -> None:
    assert find_scenario(catalogue, "2").id == "beta"


def test_find_unknown_id(catalogue: list[Scenario]) -> None:
    with pytest.raises(NotFoundError) as info:
        find_scenario(catalogue, "gamma")
    assert '"gamma"' in str(info.value)
    assert "Send LIST" in str(info.value)


def test_find_unknown_number(catalogue: list[Scenario]) -> None:
    with pytest.raises(NotFoundError) as info:
        find_scenario(catalogue, "3")
    assert '"3"' in str(info.value)
    assert "Send LIST" in str(info.value)


# render_starter


def test_render_uses_first_name(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path, reply_data()))
    assert render_starter(scenario, "Ana María Silva").startswith("Hi Ana,\n")


def test_render_blank_name(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path, reply_data()))
    assert render_starter(scenario, "  ").startswith("Hi there,\n")


def test_render_literal_braces(tmp_path: Path) -> None:
    data = reply_data()
    data["starter_body"] = "Hi {student_name}, use {{code}}."
    scenario = load_scenario(write_scenario(tmp_path, data))
    assert render_starter(scenario, "Ana") == "Hi Ana, use {code}."


def test_render_shipped_starter() -> None:
    scenario = find_scenario(load_scenarios(SCENARIOS_DIR), "reschedule-client-call")
    text = render_starter(scenario, "Kenji Watanabe")
    assert text.startswith("Hi Kenji,\n")
    assert "{" not in text


def test_render_initiate_raises(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path, initiate_data()))
    with pytest.raises(ValueError):
        render_starter(scenario, "Ana")
