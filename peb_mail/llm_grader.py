"""Grader that scores a submission with a language model called through litellm.

One chat completion per submission returns the scores, the comment, a revised
email and the counterpart's reply as JSON. Output that fails validation is sent
back to the model with the reason, up to a fixed number of calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from peb_mail.errors import ConfigError, GradingError, TemporaryGradingError
from peb_mail.models import (
    CRITERIA,
    CRITERION_KEYS,
    MAX_SCORE,
    MIN_SCORE,
    CriterionScore,
    Scenario,
    Submission,
    Verdict,
)

# litellm downloads its price table from GitHub on import unless this is set.
# The service must not reach hosts the operator did not configure.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

logger = logging.getLogger(__name__)

SYSTEM_TEMPLATE = "grade_system.j2"
USER_TEMPLATE = "grade_user.j2"

# HTTP statuses that may pass on their own: request timeout, conflict, rate
# limit. Every 5xx status is treated the same way.
_TEMPORARY_STATUSES = frozenset({408, 409, 429})

# Maximum number of characters of provider error text in a raised exception.
_MAX_ERROR_TEXT = 300

# Extra seconds on top of timeout_s before the outer guard in _complete fires.
_TIMEOUT_GRACE_S = 5.0

_FENCED_BLOCK = re.compile(r"```(?:json)?\s*\n(.*?)\n\s*```", re.DOTALL | re.IGNORECASE)
_DELIMITER_TAG = re.compile(r"<\s*(/?)\s*student_email\s*>", re.IGNORECASE)
_ELLIPSIS = re.compile(r"\.\.\.|\u2026")
_TYPOGRAPHIC = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u00a0": " ",
    }
)


class InvalidOutputError(ValueError):
    """Model output that failed validation.

    The message explains the problem to the model in the corrective request.
    """


@dataclass(frozen=True)
class ParsedOutput:
    """The validated parts of one model response."""

    scores: tuple[CriterionScore, ...]
    comment: str
    revision: str
    counterpart_reply: str
    dropped_evidence: int


@dataclass
class _UsageTotals:
    """Token counts, time and cost summed over the calls for one submission."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    # None once any call has no known price, because a partial sum would
    # understate the cost.
    cost_usd: float | None = 0.0

    def add(self, response: Any, latency_s: float, cost_usd: float | None) -> None:
        self.calls += 1
        self.prompt_tokens += _usage_count(response, "prompt_tokens")
        self.completion_tokens += _usage_count(response, "completion_tokens")
        self.latency_s += latency_s
        if self.cost_usd is None or cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += cost_usd

    def as_usage(self, model: str) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "model": model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_s": round(self.latency_s, 3),
            "calls": self.calls,
        }
        if self.cost_usd is not None:
            usage["cost_usd"] = self.cost_usd
        return usage


class LLMGrader:
    """``Grader`` that sends one litellm chat completion per submission.

    ``api_base`` is passed to litellm as given. Without it, litellm routes the
    request by the provider prefix of ``model``, such as ``openai/``.
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_output_tries: int = 3,
        prompts_dir: Path,
        temperature: float = 0.0,
    ) -> None:
        if not model:
            raise ConfigError("LLM grader model is empty: set a litellm model name")
        if timeout_s <= 0:
            raise ConfigError(f"LLM grader timeout_s must be > 0, got {timeout_s}")
        if max_output_tries < 1:
            raise ConfigError(
                f"LLM grader max_output_tries must be >= 1, got {max_output_tries}"
            )
        for template in (SYSTEM_TEMPLATE, USER_TEMPLATE):
            if not (prompts_dir / template).is_file():
                raise ConfigError(
                    f"prompt template not found: {prompts_dir / template}"
                )

        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_output_tries = max_output_tries
        self.prompts_dir = prompts_dir
        self.temperature = temperature
        self._litellm: Any = None
        self._provider_error: type[Exception] = Exception
        self._system_template: jinja2.Template | None = None
        self._user_template: jinja2.Template | None = None

    async def warm_up(self) -> None:
        """Import litellm and load the prompt templates.

        Importing litellm takes seconds, so it runs in a worker thread and the
        event loop stays free. ``grade`` calls this itself when needed.
        """
        if self._litellm is not None and self._user_template is not None:
            return
        started = time.perf_counter()
        await asyncio.to_thread(self._load)
        logger.info(
            "LLM grader ready: model %s, loaded in %.1f s",
            self.model,
            time.perf_counter() - started,
        )

    def _load(self) -> None:
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.prompts_dir),
            # Prompts are plain text, not HTML.
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        try:
            system_template = environment.get_template(SYSTEM_TEMPLATE)
            user_template = environment.get_template(USER_TEMPLATE)
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"invalid prompt template in {self.prompts_dir}: {exc}"
            ) from exc

        import litellm
        import openai

        # litellm prints a "Give Feedback / Get Help" banner to stdout on every
        # error. The service logs errors itself.
        litellm.suppress_debug_info = True

        self._system_template = system_template
        self._user_template = user_template
        # litellm's provider errors subclass the openai SDK's errors, not a
        # litellm base class.
        self._provider_error = openai.OpenAIError
        self._litellm = litellm

    def build_messages(
        self, scenario: Scenario, submission: Submission
    ) -> list[dict[str, str]]:
        """Render the system and user messages for one submission."""
        if self._system_template is None or self._user_template is None:
            raise RuntimeError("LLMGrader templates are not loaded: await warm_up()")
        starter_body = scenario.starter_body
        if starter_body:
            # The system message stays the same for every student of a
            # scenario, so the name placeholder is not filled in here.
            starter_body = starter_body.replace("{student_name}", "[student's name]")
        system = self._system_template.render(
            scenario=scenario,
            criteria=CRITERIA,
            min_score=MIN_SCORE,
            max_score=MAX_SCORE,
            starter_body=starter_body,
        )
        user = self._user_template.render(
            student_name=submission.student_name,
            subject=_neutralise_tags(submission.subject),
            attachments=[
                {
                    "filename": _neutralise_tags(item.filename),
                    "content_type": item.content_type,
                    "size_bytes": item.size_bytes,
                }
                for item in submission.attachments
            ],
            text=_neutralise_tags(submission.text),
        )
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]

    async def grade(self, scenario: Scenario, submission: Submission) -> Verdict:
        """Grade one submission with the model.

        Raises ``TemporaryGradingError`` on provider errors that may pass
        (rate limit, timeout, connection failure, 5xx), at once and without a
        retry here. Raises ``GradingError`` on other provider errors and when
        ``max_output_tries`` calls gave no valid output.
        """
        await self.warm_up()
        base_messages = self.build_messages(scenario, submission)
        messages = base_messages
        totals = _UsageTotals()
        problem = ""

        for call in range(1, self.max_output_tries + 1):
            started = time.perf_counter()
            response = await self._complete(messages, scenario.id)
            totals.add(response, time.perf_counter() - started, self._cost_of(response))

            content, finish_reason = _first_choice(response)
            try:
                parsed = parse_output(content, finish_reason, submission)
            except InvalidOutputError as exc:
                problem = str(exc)
                logger.warning(
                    "LLM grader: invalid output from %s for scenario %s "
                    "(call %d of %d): %s",
                    self.model,
                    scenario.id,
                    call,
                    self.max_output_tries,
                    problem,
                )
                messages = _corrective_messages(
                    base_messages, content, finish_reason, problem
                )
                continue

            if parsed.dropped_evidence:
                logger.info(
                    "LLM grader: cleared %d evidence quotes not found in the "
                    "submission (scenario %s)",
                    parsed.dropped_evidence,
                    scenario.id,
                )
            logger.info(
                "LLM grader: graded scenario %s with %s in %d calls, %.1f s, "
                "%d prompt and %d completion tokens",
                scenario.id,
                self.model,
                totals.calls,
                totals.latency_s,
                totals.prompt_tokens,
                totals.completion_tokens,
            )
            return Verdict(
                scores=parsed.scores,
                comment=parsed.comment,
                revision=parsed.revision,
                counterpart_reply=parsed.counterpart_reply,
                grader=f"llm:{self.model}",
                usage=totals.as_usage(self.model),
            )

        raise GradingError(
            f"model {self.model} returned no valid verdict in "
            f"{self.max_output_tries} calls; last problem: {problem}"
        )

    async def _complete(self, messages: list[dict[str, str]], scenario_id: str) -> Any:
        """Send one chat completion and map provider errors to grading errors."""
        litellm = self._litellm
        try:
            # litellm enforces ``timeout`` per HTTP request. The outer guard
            # bounds the whole call in case a provider path ignores it.
            async with asyncio.timeout(self.timeout_s + _TIMEOUT_GRACE_S):
                return await litellm.acompletion(
                    model=self.model,
                    messages=messages,
                    api_base=self.api_base,
                    api_key=self._api_key,
                    temperature=self.temperature,
                    # NOTE: a full JSON schema (response_format type
                    # "json_schema") would let providers that support it
                    # enforce the shape. Until then parse_output checks it.
                    response_format={"type": "json_object"},
                    timeout=self.timeout_s,
                    # The job queue retries temporary errors later with
                    # backoff, so litellm must not retry on its own.
                    num_retries=0,
                    # Lets providers without JSON mode still be used: litellm
                    # drops parameters the provider does not support, and
                    # parse_output finds the JSON in plain text.
                    drop_params=True,
                )
        except TimeoutError as exc:
            logger.warning(
                "LLM grader: call to %s timed out (timeout %g s, scenario %s)",
                self.model,
                self.timeout_s,
                scenario_id,
            )
            raise TemporaryGradingError(
                f"model {self.model} timed out (timeout {self.timeout_s:g} s)"
            ) from exc
        except self._provider_error as exc:
            raise self._grading_error(exc, scenario_id) from exc

    def _grading_error(self, exc: Exception, scenario_id: str) -> GradingError:
        """Choose the grading error for an exception litellm raised."""
        litellm = self._litellm
        temporary_types = (
            litellm.RateLimitError,
            litellm.Timeout,
            litellm.APIConnectionError,
            litellm.ServiceUnavailableError,
            litellm.InternalServerError,
            litellm.BadGatewayError,
        )
        status = getattr(exc, "status_code", None)
        temporary_status = isinstance(status, int) and (
            status >= 500 or status in _TEMPORARY_STATUSES
        )

        retry_after = _retry_after(exc)
        logger.warning(
            "LLM grader: %s from %s (HTTP status %s, retry after %s, scenario %s)",
            type(exc).__name__,
            self.model,
            status,
            retry_after,
            scenario_id,
        )

        detail = str(exc)[:_MAX_ERROR_TEXT]
        message = f"model {self.model} failed with {type(exc).__name__}: {detail}"
        if retry_after:
            message += f" (provider asks to retry after {retry_after})"
        if isinstance(exc, temporary_types) or temporary_status:
            return TemporaryGradingError(message)
        return GradingError(message)

    def _cost_of(self, response: Any) -> float | None:
        try:
            return float(self._litellm.completion_cost(completion_response=response))
        except Exception:
            # litellm raises several exception types for models without a
            # price, which is normal for local and self-hosted models.
            logger.debug("LLM grader: no cost known for model %s", self.model)
            return None


def parse_output(
    content: str | None, finish_reason: str | None, submission: Submission
) -> ParsedOutput:
    """Validate one model response and return its parts.

    Raises ``InvalidOutputError`` with a message addressed to the model.
    """
    if finish_reason == "length":
        raise InvalidOutputError(
            "your response was cut off because it reached the output token limit"
        )
    if content is None or not content.strip():
        raise InvalidOutputError("your response was empty")

    data = extract_json_object(content)
    scores, dropped = _parse_scores(data.get("scores"), submission)
    return ParsedOutput(
        scores=scores,
        comment=_required_text(data, "comment"),
        revision=_required_text(data, "revision"),
        counterpart_reply=_required_text(data, "counterpart_reply"),
        dropped_evidence=dropped,
    )


def extract_json_object(content: str) -> dict[str, Any]:
    """Find the JSON object in a model response.

    Accepts a bare object, an object in a fenced code block, or an object with
    prose before or after it.
    """
    text = content.strip()
    candidates = [text]
    candidates.extend(match.group(1) for match in _FENCED_BLOCK.finditer(text))
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value

    # Prose around the object: try to decode an object at each "{" in turn.
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise InvalidOutputError("your response does not contain a valid JSON object")


def _parse_scores(
    value: Any, submission: Submission
) -> tuple[tuple[CriterionScore, ...], int]:
    if not isinstance(value, dict):
        raise InvalidOutputError(
            '"scores" must be a JSON object with one key per criterion'
        )
    missing = [key for key in CRITERION_KEYS if key not in value]
    unknown = sorted(key for key in value if key not in CRITERION_KEYS)
    if missing:
        raise InvalidOutputError(f'"scores" is missing criteria: {", ".join(missing)}')
    if unknown:
        raise InvalidOutputError(
            f'"scores" has unknown criteria: {", ".join(unknown)}; '
            f"use only {', '.join(CRITERION_KEYS)}"
        )

    source = _normalise_quote(f"{submission.subject}\n{submission.text}")
    scores: list[CriterionScore] = []
    dropped = 0
    for key in CRITERION_KEYS:
        item = value[key]
        if not isinstance(item, dict):
            raise InvalidOutputError(
                f'"scores.{key}" must be an object with "score", "justification" '
                'and "evidence"'
            )
        score = item.get("score")
        # bool is a subclass of int, and a float such as 4.5 or a string such
        # as "4/5" is not a rubric score.
        if type(score) is not int or not MIN_SCORE <= score <= MAX_SCORE:
            raise InvalidOutputError(
                f'"scores.{key}.score" must be a JSON integer from {MIN_SCORE} '
                f"to {MAX_SCORE}, got {json.dumps(score)}"
            )
        justification = _required_text(item, "justification", prefix=f"scores.{key}.")
        evidence = item.get("evidence", "")
        if not isinstance(evidence, str):
            raise InvalidOutputError(f'"scores.{key}.evidence" must be a string')
        evidence = evidence.strip()
        # A quote the student never wrote would mislead the student, so it is
        # cleared rather than shown.
        if evidence and not _quote_in_source(evidence, source):
            evidence = ""
            dropped += 1
        scores.append(
            CriterionScore(
                criterion=key,
                score=score,
                justification=justification,
                evidence=evidence,
            )
        )
    return tuple(scores), dropped


def _required_text(data: dict[str, Any], key: str, prefix: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidOutputError(f'"{prefix}{key}" must be a non-empty string')
    return value.strip()


def _normalise_quote(text: str) -> str:
    """Lower-case the text, use ASCII quotes and dashes and collapse whitespace."""
    return " ".join(text.translate(_TYPOGRAPHIC).lower().split())


def _quote_in_source(evidence: str, source: str) -> bool:
    """Check that every part of a quote, split at "...", occurs in the source."""
    stripped = evidence.strip().strip("\"'\u201c\u201d\u2018\u2019")
    parts = [_normalise_quote(part) for part in _ELLIPSIS.split(stripped)]
    parts = [part for part in parts if part]
    return bool(parts) and all(part in source for part in parts)


def _neutralise_tags(text: str) -> str:
    """Rewrite <student_email> tags in student text so it cannot close the block."""
    return _DELIMITER_TAG.sub(r"[\1student_email]", text)


def _corrective_messages(
    base_messages: list[dict[str, str]],
    content: str | None,
    finish_reason: str | None,
    problem: str,
) -> list[dict[str, str]]:
    """Build the next request: the prompt, the rejected response and the reason.

    Only the latest rejected response is sent, so each retry costs about as
    much as the first call.
    """
    messages = list(base_messages)
    # A cut-off or empty response is not worth sending back.
    if content and content.strip() and finish_reason != "length":
        messages.append({"role": "assistant", "content": content})
    advice = "Respond again with only the JSON object described in the system message."
    if finish_reason == "length":
        advice += (
            " Keep every justification to one short sentence and keep the "
            "revision and the reply short."
        )
    messages.append(
        {
            "role": "user",
            "content": f"Your previous response could not be used: {problem}. {advice}",
        }
    )
    return messages


def _first_choice(response: Any) -> tuple[str | None, str | None]:
    choices = getattr(response, "choices", None) or []
    if not choices:
        return None, None
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    finish_reason = getattr(choice, "finish_reason", None)
    return (content if isinstance(content, str) else None), finish_reason


def _usage_count(response: Any, field_name: str) -> int:
    usage = getattr(response, "usage", None)
    value = getattr(usage, field_name, None)
    return value if isinstance(value, int) else 0


def _retry_after(exc: Exception) -> str | None:
    """Return the Retry-After header of a provider error response, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    return str(value) if value else None
