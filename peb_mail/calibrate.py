"""Run a grader over calibration emails and compare its totals with expected bands.

The calibration file is JSON with a ``cases`` list. Each case names a scenario
id, a ``level`` ("poor", "adequate" or "excellent"), the expected ``band`` of
the total score as ``[min, max]``, the ``subject``, the ``text`` and optional
``attachments`` as ``[filename, content_type, size_bytes]`` triples. The
project's set is ``tests/calibration/cases.json``.

The report gives each total and whether it is inside its band, whether the
totals of each scenario rise from poor to adequate to excellent, and the
spread (the excellent total minus the poor total) of each scenario.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peb_mail.errors import ConfigError
from peb_mail.models import AttachmentInfo, Grader, Scenario, Submission
from peb_mail.precheck import PrecheckedGrader

LEVELS = ("poor", "adequate", "excellent")
STUDENT_NAME = "Ana Silva"


@dataclass(frozen=True)
class CalibrationCase:
    """One calibration email and the band its total is expected in."""

    id: str
    scenario: str
    level: str
    band: tuple[int, int]
    submission: Submission


@dataclass(frozen=True)
class CaseResult:
    """The total a grader gave one case."""

    case: CalibrationCase
    total: int

    @property
    def in_band(self) -> bool:
        low, high = self.case.band
        return low <= self.total <= high


@dataclass(frozen=True)
class CalibrationReport:
    """Totals of every case, the order check and the spread per scenario."""

    grader: str
    results: tuple[CaseResult, ...]

    def scenario_totals(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        for result in self.results:
            totals.setdefault(result.case.scenario, {})[result.case.level] = (
                result.total
            )
        return totals

    def order_agreement(self) -> dict[str, bool]:
        """Return, per scenario, whether poor < adequate < excellent."""
        agreement: dict[str, bool] = {}
        for scenario, totals in self.scenario_totals().items():
            values = [totals[level] for level in LEVELS if level in totals]
            agreement[scenario] = len(values) == len(LEVELS) and all(
                low < high for low, high in zip(values, values[1:], strict=False)
            )
        return agreement

    def spreads(self) -> dict[str, int]:
        """Return, per scenario, the excellent total minus the poor total."""
        return {
            scenario: totals.get("excellent", 0) - totals.get("poor", 0)
            for scenario, totals in self.scenario_totals().items()
        }

    @property
    def in_band_count(self) -> int:
        return sum(result.in_band for result in self.results)

    @property
    def passed(self) -> bool:
        return self.in_band_count == len(self.results) and all(
            self.order_agreement().values()
        )

    def format(self) -> str:
        """Render the report as plain text for a terminal."""
        lines = [f"Calibration of grader {self.grader}", ""]
        lines.append(f"{'case':<28} {'total':>5}  {'band':<7}  in band")
        for result in self.results:
            low, high = result.case.band
            mark = "yes" if result.in_band else "NO"
            lines.append(
                f"{result.case.id:<28} {result.total:>5}  {low:>2}-{high:<4}  {mark}"
            )
        lines.append("")
        spreads = self.spreads()
        for scenario, ordered in self.order_agreement().items():
            lines.append(
                f"{scenario}: order poor < adequate < excellent "
                f"{'holds' if ordered else 'FAILS'}, spread {spreads[scenario]}"
            )
        totals = [result.total for result in self.results]
        lines.append("")
        lines.append(
            f"{self.in_band_count} of {len(self.results)} totals in band; "
            f"standard deviation of all totals {statistics.pstdev(totals):.1f}"
        )
        return "\n".join(lines)


def load_cases(path: Path) -> list[CalibrationCase]:
    """Read the calibration file. Raises ConfigError on an invalid case."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read calibration cases: {exc}") from exc
    cases: list[CalibrationCase] = []
    for raw in data.get("cases", []):
        cases.append(_read_case(path, raw))
    if not cases:
        raise ConfigError(f'{path}: no calibration cases found under "cases"')
    return cases


async def run_calibration(
    grader: Grader, scenarios: list[Scenario], cases: list[CalibrationCase]
) -> CalibrationReport:
    """Grade every case one after another and build the report.

    Graders other than ``LLMGrader`` are wrapped in ``PrecheckedGrader``, as
    the worker does, so both graders apply the same caps.
    """
    by_id = {scenario.id: scenario for scenario in scenarios}
    checked: Grader = grader if grader.name == "llm" else PrecheckedGrader(grader)
    results: list[CaseResult] = []
    for case in cases:
        scenario = by_id.get(case.scenario)
        if scenario is None:
            raise ConfigError(
                f"calibration case {case.id}: scenario {case.scenario!r} not found"
            )
        verdict = await checked.grade(scenario, case.submission)
        results.append(CaseResult(case=case, total=verdict.total))
    return CalibrationReport(grader=grader.name, results=tuple(results))


def _read_case(path: Path, raw: Any) -> CalibrationCase:
    try:
        level = raw["level"]
        low, high = raw["band"]
        if level not in LEVELS or not isinstance(low, int) or not isinstance(high, int):
            raise ValueError(f"level must be one of {LEVELS}, band two integers")
        attachments = tuple(
            AttachmentInfo(str(name), str(kind), int(size))
            for name, kind, size in raw.get("attachments", [])
        )
        submission = Submission(
            subject=str(raw["subject"]),
            text=str(raw["text"]),
            student_name=STUDENT_NAME,
            attachments=attachments,
        )
        return CalibrationCase(
            id=str(raw["id"]),
            scenario=str(raw["scenario"]),
            level=level,
            band=(low, high),
            submission=submission,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid calibration case {raw!r}: {exc}") from exc
