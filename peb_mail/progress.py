"""A student's progress for STATUS: scenarios, criterion trends, a suggestion."""

from __future__ import annotations

from dataclasses import dataclass, field

from .models import CRITERIA, MAX_SCORE, MAX_TOTAL, Scenario, Verdict
from .store import Attempt

# Words in a scenario's task or grading focus that show it practises a
# criterion. The suggestion picks the unstarted scenario with the most hits.
CRITERION_WORDS: dict[str, tuple[str, ...]] = {
    "tone": ("polite", "apolog", "sorry", "tone", "kind", "thank", "respect", "calm"),
    "clarity": ("clear", "question", "ask", "purpose", "explain", "restate", "summar"),
    "structure": ("paragraph", "structure", "list", "order", "steps", "short"),
    "professionalism": (
        "responsib",
        "mistake",
        "commit",
        "professional",
        "honest",
        "fix",
    ),
    "task": ("next step", "deadline", "plan", "propose", "offer", "time", "date"),
    "grammar": ("sentence", "grammar", "simple", "short"),
    "subject": ("subject",),
}
# How many recent graded attempts decide the weakest criterion.
RECENT_ATTEMPTS = 3


@dataclass
class ScenarioRow:
    number: int | str
    title: str
    attempts: int = 0
    best: int | None = None
    latest: int | None = None
    status: str = ""


@dataclass
class CriterionTrend:
    label: str
    scores: list[int] = field(default_factory=list)

    @property
    def latest(self) -> int:
        return self.scores[-1] if self.scores else 0

    @property
    def bar(self) -> str:
        """Five cells, filled up to the latest score: ■■■□□."""
        return "■" * self.latest + "□" * (MAX_SCORE - self.latest)

    @property
    def history(self) -> str:
        return " -> ".join(str(score) for score in self.scores)


@dataclass
class Progress:
    scenarios: list[ScenarioRow]
    trends: list[CriterionTrend]
    weakest: str | None
    suggestion: Scenario | None
    max_total: int = MAX_TOTAL
    max_score: int = MAX_SCORE


def build_progress(
    attempts: list[Attempt], scenarios: list[Scenario], open_status: dict[int, str]
) -> Progress:
    """Summarise attempts (oldest first). ``open_status`` gives text for open attempts."""
    by_id = {scenario.id: scenario for scenario in scenarios}
    rows: dict[str, ScenarioRow] = {}
    graded: list[Verdict] = []
    for attempt in attempts:
        scenario = by_id.get(attempt.scenario_id)
        row = rows.setdefault(
            attempt.scenario_id,
            ScenarioRow(
                number=scenario.number if scenario else "?",
                title=scenario.title if scenario else attempt.scenario_id,
            ),
        )
        row.attempts += 1
        if attempt.state == "graded" and attempt.score is not None:
            row.best = (
                attempt.score if row.best is None else max(row.best, attempt.score)
            )
            row.latest = attempt.score
            if attempt.verdict:
                graded.append(Verdict.from_json(attempt.verdict))
        row.status = _status(attempt, open_status)

    trends = [CriterionTrend(label) for _, label in CRITERIA]
    for verdict in graded:
        scores = {item.criterion: item.score for item in verdict.scores}
        for trend, (key, _) in zip(trends, CRITERIA, strict=True):
            if key in scores:
                trend.scores.append(scores[key])
    # A revision replaces the earlier try of the same scenario, so the
    # weakest criterion comes from each scenario's latest grade.
    latest_by_scenario: dict[str, Verdict] = {}
    for attempt in attempts:
        if attempt.state == "graded" and attempt.verdict:
            latest_by_scenario[attempt.scenario_id] = Verdict.from_json(attempt.verdict)
    weakest = _weakest(list(latest_by_scenario.values()))
    started = {attempt.scenario_id for attempt in attempts}
    return Progress(
        scenarios=sorted(rows.values(), key=lambda row: str(row.number).zfill(4)),
        trends=trends if graded else [],
        weakest=dict(CRITERIA)[weakest] if weakest else None,
        suggestion=suggest(scenarios, started, weakest),
    )


def _status(attempt: Attempt, open_status: dict[int, str]) -> str:
    if attempt.state == "open":
        return open_status.get(attempt.id, "Started. We are waiting for your email.")
    return {
        "submitted": "We have your email and we are grading it.",
        "graded": f"Graded: {attempt.score} / {MAX_TOTAL}",
        "failed": "Grading is delayed. Your teacher will check it.",
    }.get(attempt.state, attempt.state)


def _weakest(verdicts: list[Verdict]) -> str | None:
    recent = verdicts[-RECENT_ATTEMPTS:]
    if not recent:
        return None
    means = {
        key: sum(v.score_of(key).score for v in recent) / len(recent)
        for key, _ in CRITERIA
    }
    # Ties go to the criterion listed first in the rubric.
    return min(means, key=lambda key: (means[key], [k for k, _ in CRITERIA].index(key)))


def suggest(
    scenarios: list[Scenario], started: set[str], weakest: str | None
) -> Scenario | None:
    """Pick the next scenario: not started yet, practising the weakest criterion."""
    candidates = [s for s in scenarios if s.id not in started] or list(scenarios)
    if not candidates:
        return None
    if weakest is None:
        return candidates[0]
    words = CRITERION_WORDS.get(weakest, ())

    def hits(scenario: Scenario) -> int:
        text = f"{scenario.task} {scenario.grading_focus}".lower()
        return sum(text.count(word) for word in words)

    return max(candidates, key=lambda s: (hits(s), -s.number))
