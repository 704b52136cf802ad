"""Load, validate and look up the practice scenarios stored as TOML files.

The file format is documented for instructors in docs/scenarios.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import mimetypes
import re
import string
import tomllib
from pathlib import Path
from typing import Any

from peb_mail.errors import ConfigError, NotFoundError
from peb_mail.models import Artefact, Counterpart, KeyPoint, Scenario, ScenarioType

DEFAULT_ORDER = 1000
SCENARIO_TYPES: tuple[ScenarioType, ...] = ("initiate", "reply")
STUDENT_NAME_FIELD = "student_name"

# Lowercase letters and digits in groups joined by single hyphens: "reply-to-client".
ID_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

# A dot-atom local part (RFC 5322, section 3.2.3) limited to lowercase letters.
# "+" is excluded because the service appends "+TOKEN" to route replies.
_LOCAL_PART_ATOM = r"[a-z0-9!#$%&'*/=?^_`{|}~-]+"
LOCAL_PART_PATTERN = re.compile(rf"{_LOCAL_PART_ATOM}(?:\.{_LOCAL_PART_ATOM})*")
# RFC 5321, section 4.5.3.1.1. NOTE: the "+TOKEN" suffix counts towards the same
# limit, so a local part near 64 characters may still be too long once sent.
MAX_LOCAL_PART_LENGTH = 64

# Maximum length of a value shown in an error message, so a long task text stays
# readable.
MAX_SHOWN_VALUE_LENGTH = 60

TOP_LEVEL_REQUIRED = (
    "id",
    "title",
    "type",
    "environment",
    "task",
    "grading_focus",
    "subject_keywords",
    "counterpart",
    "key_points",
)
TOP_LEVEL_OPTIONAL = (
    "order",
    "student_error",
    "starter_subject",
    "starter_body",
    "key_facts",
    "artefacts",
)
COUNTERPART_REQUIRED = ("name", "role", "local_part", "style", "knows")
KEY_POINT_REQUIRED = ("text", "keywords")
KEY_POINT_OPTIONAL = ("example", "question")
ARTEFACT_REQUIRED = ("name",)
ARTEFACT_OPTIONAL = ("text", "file", "content_type")


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario file.

    ``number`` is 0 in the result because only ``load_scenarios`` can number the
    catalogue. Raises ConfigError naming the file, the key and the bad value.
    """
    _order, scenario = _load_with_order(path)
    return scenario


def load_scenarios(directory: Path) -> list[Scenario]:
    """Load every ``*.toml`` file directly inside ``directory`` as the catalogue.

    Subfolders are not read. The result is sorted by (``order``, ``id``) and
    numbered 1..n in that order. Raises ConfigError for an invalid file, an id
    used by two files, a missing folder or a folder without scenario files.
    """
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: scenario folder not found; create it or point the "
            "configuration at the folder that contains the *.toml scenario files"
        )
    paths = sorted(path for path in directory.glob("*.toml") if path.is_file())
    if not paths:
        raise ConfigError(
            f"{directory}: no *.toml scenario files found; add at least one "
            "(the format is in docs/scenarios.md)"
        )

    loaded: list[tuple[int, Scenario]] = []
    path_by_id: dict[str, Path] = {}
    for path in paths:
        order, scenario = _load_with_order(path)
        if scenario.id in path_by_id:
            raise ConfigError(
                f'{path}: key "id" value "{scenario.id}" is already used by '
                f"{path_by_id[scenario.id]}; give each scenario its own id"
            )
        path_by_id[scenario.id] = path
        loaded.append((order, scenario))

    loaded.sort(key=lambda item: (item[0], item[1].id))
    return [
        dataclasses.replace(scenario, number=number)
        for number, (_order, scenario) in enumerate(loaded, start=1)
    ]


def find_scenario(scenarios: list[Scenario], ref: str) -> Scenario:
    """Return the scenario whose id (any case) or catalogue number is ``ref``.

    Raises NotFoundError with a message written for the student.
    """
    requested = ref.strip()
    # isascii() keeps digits such as "³" away from int().
    if requested.isascii() and requested.isdigit():
        number = int(requested)
        for scenario in scenarios:
            if scenario.number == number:
                return scenario
    else:
        lowered = requested.lower()
        for scenario in scenarios:
            if scenario.id == lowered:
                return scenario
    raise NotFoundError(
        f'There is no scenario "{requested}". Send LIST to see the catalogue '
        "of scenarios."
    )


def render_starter(scenario: Scenario, student_name: str) -> str:
    """Fill ``{student_name}`` in the starter body with the student's first name.

    A blank name becomes "there", so "Hi {student_name}," reads "Hi there,".
    Raises ValueError for an initiate scenario, which has no starter email.
    """
    if scenario.starter_body is None:
        raise ValueError(
            f'scenario "{scenario.id}" is an initiate scenario and has no starter '
            "email to render"
        )
    words = student_name.split()
    first_name = words[0] if words else "there"
    return scenario.starter_body.format_map({STUDENT_NAME_FIELD: first_name})


def _load_with_order(path: Path) -> tuple[int, Scenario]:
    data = _read_toml(path)
    _check_keys(path, data, "", TOP_LEVEL_REQUIRED, TOP_LEVEL_OPTIONAL)

    scenario_id = _read_text(path, data, "id")
    if not ID_PATTERN.fullmatch(scenario_id) or scenario_id.isdigit():
        raise ConfigError(
            f'{path}: key "id" must be lowercase letters, digits and single '
            f'hyphens, with at least one letter (such as "reply-to-client"), '
            f"got {_show(scenario_id)}"
        )

    scenario_type = _read_text(path, data, "type")
    if scenario_type not in SCENARIO_TYPES:
        raise ConfigError(
            f'{path}: key "type" must be "initiate" or "reply", '
            f"got {_show(scenario_type)}"
        )

    order = data.get("order", DEFAULT_ORDER)
    # bool is a subclass of int, so "order = true" needs the exact type check.
    if type(order) is not int:
        raise ConfigError(
            f'{path}: key "order" must be an integer such as 10, got {_describe(order)}'
        )

    starter_subject, starter_body = _read_starter(path, data, scenario_type)

    key_facts: tuple[KeyPoint, ...] = ()
    if "key_facts" in data:
        key_facts = _read_key_points(path, data, "key_facts")

    scenario = Scenario(
        id=scenario_id,
        number=0,
        title=_read_text(path, data, "title"),
        type=scenario_type,
        environment=_read_text(path, data, "environment"),
        counterpart=_read_counterpart(path, data),
        task=_read_text(path, data, "task"),
        key_facts=key_facts,
        key_points=_read_key_points(path, data, "key_points"),
        grading_focus=_read_text(path, data, "grading_focus"),
        subject_keywords=_read_string_list(path, data, "subject_keywords"),
        starter_subject=starter_subject,
        starter_body=starter_body,
        artefacts=_read_artefacts(path, data),
        student_error=_read_bool(path, data, "student_error"),
        source_path=path.resolve(),
    )
    return order, scenario


def _read_bool(path: Path, data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(
            f'{path}: key "{key}" must be true or false, got {_show(value)}'
        )
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(
            f"{path}: failed to read the file: {error.strerror}"
        ) from error
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: the file is not valid UTF-8 ({error.reason} at byte "
            f"{error.start}); save it as UTF-8"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{path}: invalid TOML: {error}; fix the syntax (the format is in "
            "docs/scenarios.md)"
        ) from error


def _read_starter(
    path: Path, data: dict[str, Any], scenario_type: str
) -> tuple[str | None, str | None]:
    """Return (starter_subject, starter_body), which only reply scenarios have."""
    if scenario_type == "initiate":
        for key in ("starter_subject", "starter_body"):
            if key in data:
                raise ConfigError(
                    f'{path}: key "{key}" is only allowed when "type" is "reply"; '
                    'remove it or set type = "reply"'
                )
        return None, None

    for key in ("starter_subject", "starter_body"):
        if key not in data:
            raise ConfigError(
                f'{path}: missing key "{key}": a reply scenario needs the starter '
                "email that the student answers"
            )
    subject = _read_text(path, data, "starter_subject")
    # Only the body is filled in by render_starter, so a brace in the subject
    # would be sent as written.
    if "{" in subject or "}" in subject:
        raise ConfigError(
            f'{path}: key "starter_subject" must not contain "{{" or "}}" because '
            f"placeholders are filled only in starter_body, got {_show(subject)}"
        )
    body = _read_text(path, data, "starter_body")
    _check_placeholders(path, "starter_body", body)
    return subject, body


def _check_placeholders(path: Path, key: str, text: str) -> None:
    """Raise ConfigError unless ``{student_name}`` is the only placeholder."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as error:
        raise ConfigError(
            f'{path}: key "{key}" has an unmatched brace ({error}); write "{{{{" '
            'and "}}" for a literal brace'
        ) from error
    for _literal, field, spec, conversion in fields:
        if field is None:
            continue
        if field == STUDENT_NAME_FIELD and not spec and conversion is None:
            continue
        placeholder = "{" + field
        if conversion is not None:
            placeholder += "!" + conversion
        if spec:
            placeholder += ":" + spec
        placeholder += "}"
        raise ConfigError(
            f'{path}: key "{key}" contains the placeholder "{placeholder}"; '
            'the only placeholder allowed is "{student_name}" (write "{{" and '
            '"}}" for a literal brace)'
        )


def _read_counterpart(path: Path, data: dict[str, Any]) -> Counterpart:
    table = _read_table(path, data, "counterpart")
    _check_keys(path, table, "counterpart", COUNTERPART_REQUIRED, ())
    local_part = _read_text(path, table, "local_part", "counterpart")
    if "+" in local_part:
        raise ConfigError(
            f'{path}: key "counterpart.local_part" must not contain "+" because '
            f'the service adds "+TOKEN" itself, got {_show(local_part)}'
        )
    if (
        not LOCAL_PART_PATTERN.fullmatch(local_part)
        or len(local_part) > MAX_LOCAL_PART_LENGTH
    ):
        raise ConfigError(
            f'{path}: key "counterpart.local_part" must be a lowercase email '
            f'local part (the text before "@") such as "maria.lopez", at most '
            f"{MAX_LOCAL_PART_LENGTH} characters, got {_show(local_part)}"
        )
    return Counterpart(
        name=_read_text(path, table, "name", "counterpart"),
        role=_read_text(path, table, "role", "counterpart"),
        local_part=local_part,
        style=_read_text(path, table, "style", "counterpart"),
        knows=_read_text(path, table, "knows", "counterpart"),
    )


def _read_key_points(
    path: Path, data: dict[str, Any], key: str
) -> tuple[KeyPoint, ...]:
    points = []
    for prefix, table in _read_table_list(path, data, key):
        _check_keys(path, table, prefix, KEY_POINT_REQUIRED, KEY_POINT_OPTIONAL)
        points.append(
            KeyPoint(
                text=_read_text(path, table, "text", prefix),
                keywords=_read_string_list(path, table, "keywords", prefix),
                example=_read_text(path, table, "example", prefix)
                if "example" in table
                else "",
                question=_read_text(path, table, "question", prefix)
                if "question" in table
                else "",
            )
        )
    return tuple(points)


def _read_artefacts(path: Path, data: dict[str, Any]) -> tuple[Artefact, ...]:
    if "artefacts" not in data:
        return ()
    artefacts = []
    seen_names: set[str] = set()
    for prefix, table in _read_table_list(path, data, "artefacts"):
        _check_keys(path, table, prefix, ARTEFACT_REQUIRED, ARTEFACT_OPTIONAL)
        name = _read_text(path, table, "name", prefix)
        if name in seen_names:
            raise ConfigError(
                f'{path}: key "{prefix}.name" value {_show(name)} is used by an '
                "earlier artefact; give each artefact its own name"
            )
        seen_names.add(name)

        has_text = "text" in table
        has_file = "file" in table
        if has_text == has_file:
            raise ConfigError(
                f'{path}: artefact {_show(name)} ("{prefix}") must have exactly '
                'one of the keys "text" (quoted in the brief) or "file" '
                "(attached to the brief)"
            )
        if has_text:
            if "content_type" in table:
                raise ConfigError(
                    f'{path}: key "{prefix}.content_type" is only allowed with '
                    '"file"; remove it from this text artefact'
                )
            text = _read_text(path, table, "text", prefix)
            artefacts.append(Artefact(name=name, text=text))
        else:
            artefacts.append(_read_file_artefact(path, table, prefix, name))
    return tuple(artefacts)


def _read_file_artefact(
    path: Path, table: dict[str, Any], prefix: str, name: str
) -> Artefact:
    relative = _read_text(path, table, "file", prefix)
    file_path = (path.parent / relative).resolve()
    if not file_path.is_file():
        raise ConfigError(
            f'{path}: key "{prefix}.file" names a file that does not exist: '
            f"{_show(relative)} (looked for {file_path}); the path is relative "
            "to the folder of the scenario file"
        )
    if "content_type" in table:
        content_type = _read_text(path, table, "content_type", prefix)
        if content_type.count("/") != 1:
            raise ConfigError(
                f'{path}: key "{prefix}.content_type" must be a media type such '
                f'as "text/csv", got {_show(content_type)}'
            )
    else:
        guessed, _encoding = mimetypes.guess_type(file_path.name)
        content_type = guessed or "application/octet-stream"
    return Artefact(name=name, path=file_path, content_type=content_type)


def _check_keys(
    path: Path,
    table: dict[str, Any],
    prefix: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
) -> None:
    """Raise ConfigError for an unknown key, then for a missing required key."""
    allowed = required + optional
    for key in table:
        if key not in allowed:
            hint = ""
            close = difflib.get_close_matches(key, allowed, n=1)
            if close:
                hint = f'; did you mean "{close[0]}"?'
            raise ConfigError(
                f'{path}: unknown key "{_key_name(prefix, key)}"{hint} '
                f"(allowed keys here: {', '.join(allowed)})"
            )
    for key in required:
        if key not in table:
            raise ConfigError(
                f'{path}: missing key "{_key_name(prefix, key)}"; add it '
                "(the format is in docs/scenarios.md)"
            )


def _read_text(path: Path, table: dict[str, Any], key: str, prefix: str = "") -> str:
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(
            f'{path}: key "{_key_name(prefix, key)}" must be a string, '
            f"got {_describe(value)}"
        )
    if not value.strip():
        raise ConfigError(
            f'{path}: key "{_key_name(prefix, key)}" must not be empty; '
            "write the text or remove the key if it is optional"
        )
    return value.strip()


def _read_string_list(
    path: Path, table: dict[str, Any], key: str, prefix: str = ""
) -> tuple[str, ...]:
    name = _key_name(prefix, key)
    value = table[key]
    if not isinstance(value, list):
        raise ConfigError(
            f'{path}: key "{name}" must be a list of strings such as ["a", "b"], '
            f"got {_describe(value)}"
        )
    if not value:
        raise ConfigError(f'{path}: key "{name}" must list at least one string')
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(
                f'{path}: key "{name}" must contain only non-empty strings, '
                f"got {_describe(item)}"
            )
    return tuple(item.strip() for item in value)


def _read_table(path: Path, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data[key]
    if not isinstance(value, dict):
        raise ConfigError(
            f'{path}: key "{key}" must be a table written as [{key}], '
            f"got {_describe(value)}"
        )
    return value


def _read_table_list(
    path: Path, data: dict[str, Any], key: str
) -> list[tuple[str, dict[str, Any]]]:
    """Return (name for messages, table) pairs, such as ("key_points[2]", {...}).

    Entries are counted from 1 in messages, as an instructor counts them.
    """
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(
            f'{path}: key "{key}" must be a list of tables, each written as '
            f"[[{key}]], got {_describe(value)}"
        )
    if not value:
        raise ConfigError(
            f'{path}: key "{key}" must have at least one [[{key}]] entry, got []'
        )
    return [(f"{key}[{index}]", table) for index, table in enumerate(value, 1)]


def _key_name(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: object) -> str:
    """Name the TOML type of ``value`` and show it, as in 'an integer (5)'."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a float"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "an array"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, datetime.date | datetime.time):
        kind = "a date or time"
    else:
        kind = type(value).__name__
    return f"{kind} ({_show(value)})"


def _show(value: object) -> str:
    if isinstance(value, datetime.date | datetime.time):
        text = value.isoformat()
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_SHOWN_VALUE_LENGTH:
        text = text[: MAX_SHOWN_VALUE_LENGTH - 3] + "..."
    return text
