"""Grader that scores a submission with a language model called through litellm.

One chat completion per submission returns the scores, the comment, a revised
email and the counterpart's reply as JSON. Output that fails validation is sent
back to the model with the reason, up to ``max_output_tries`` calls.

Each HTTP call is bounded by ``timeout_s``. A rate limit (429), a 5xx status, a
timeout or a refused connection is retried with exponential backoff and jitter
up to ``max_provider_retries`` times per model, then the next model of
``fallback_models`` takes over. When every model failed this way, ``grade``
raises ``TemporaryGradingError`` so that the job queue retries later.

Before the model is called, ``peb_mail.precheck`` removes text that addresses
the grader, the prompt states that it was removed, and the caps of the precheck
are applied to the model's scores (see the rule in ``peb_mail.precheck``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
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
from peb_mail.precheck import (
    REDACTION_MARK,
    PrecheckResult,
    apply_caps,
    mark_redactions,
    precheck_async,
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

# Extra seconds on top of timeout_s before the outer guard in _request fires.
_TIMEOUT_GRACE_S = 5.0

MIN_COMMENT_SENTENCES = 3
MAX_COMMENT_SENTENCES = 6

_FENCED_BLOCK = re.compile(r"```(?:json)?\s*\n(.*?)\n\s*```", re.DOTALL | re.IGNORECASE)
# Reasoning models put their reasoning before the JSON in one of these tags.
_REASONING_BLOCK = re.compile(
    r"<(think|thinking|reasoning)>.*?</\1>", re.DOTALL | re.IGNORECASE
)
_REASONING_END = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")
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

Sleep = Callable[[float], Awaitable[None]]


class InvalidOutputError(ValueError):
    """Model output that failed validation.

    The message explains the problem to the model in the corrective request.
    """


class _ProviderFailure(Exception):
    """One failed HTTP call, classified for the retry loop."""

    def __init__(
        self, message: str, *, temporary: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ParsedOutput:
    """The validated parts of one model response."""

    scores: tuple[CriterionScore, ...]
    comment: str
    revision: str
    counterpart_reply: str


@dataclass
class _UsageTotals:
    """HTTP calls, tokens, time and cost summed over one ``grade`` call."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    # None once any successful call has no known price, because a partial sum
    # would understate the cost.
    cost_usd: float | None = 0.0

    def add_response(self, response: Any, cost_usd: float | None) -> None:
        self.prompt_tokens += _usage_count(response, "prompt_tokens")
        self.completion_tokens += _usage_count(response, "completion_tokens")
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

    ``api_base`` is passed to litellm as given, for the main model and every
    fallback model. Without it, litellm routes each request by the provider
    prefix of the model name, such as ``openai/``. ``sleep`` and ``rng`` are
    injectable so that tests can record the backoff waits.
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
        fallback_models: Sequence[str] = (),
        max_provider_retries: int = 2,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        concurrency: int = 4,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not model:
            raise ConfigError("LLM grader model is empty: set a litellm model name")
        if timeout_s <= 0:
            raise ConfigError(f"LLM grader timeout_s must be > 0, got {timeout_s}")
        if max_output_tries < 1:
            raise ConfigError(
                f"LLM grader max_output_tries must be >= 1, got {max_output_tries}"
            )
        if max_provider_retries < 0:
            raise ConfigError(
                "LLM grader max_provider_retries must be >= 0, got "
                f"{max_provider_retries}"
            )
        if concurrency < 1:
            raise ConfigError(f"LLM grader concurrency must be >= 1, got {concurrency}")
        if backoff_base_s < 0 or backoff_max_s < 0 or max_retry_after_s < 0:
            raise ConfigError("LLM grader backoff and retry-after limits must be >= 0")
        if any(not item for item in fallback_models):
            raise ConfigError("LLM grader fallback_models contains an empty name")
        for template in (SYSTEM_TEMPLATE, USER_TEMPLATE):
            if not (prompts_dir / template).is_file():
                raise ConfigError(
                    f"prompt template not found: {prompts_dir / template}"
                )

        self.model = model
        self.models: tuple[str, ...] = (model, *fallback_models)
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_output_tries = max_output_tries
        self.max_provider_retries = max_provider_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.prompts_dir = prompts_dir
        self.temperature = temperature
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Bounds the HTTP requests in flight across every grade() call of this
        # instance. It is not held during backoff waits.
        self._semaphore = asyncio.Semaphore(concurrency)
        self._warm_lock = asyncio.Lock()
        self._litellm: Any = None
        self._provider_error: type[Exception] = Exception
        self._system_template: jinja2.Template | None = None
        self._user_template: jinja2.Template | None = None
        self._response_formats: dict[str, dict[str, Any]] = {}

    async def warm_up(self) -> None:
        """Import litellm and load the prompt templates.

        Importing litellm takes seconds, so it runs in a worker thread and the
        event loop stays free. ``grade`` calls this itself when needed.
        """
        if self._litellm is not None and self._user_template is not None:
            return
        # The service's warm-up task and the first grade() can both get here;
        # the lock makes the second wait instead of loading a second time.
        async with self._warm_lock:
            if self._litellm is not None and self._user_template is not None:
                return
            started = time.perf_counter()
            await asyncio.to_thread(self._load)
            await self._first_call()
        logger.info(
            "LLM grader ready: model %s, fallbacks %s, loaded in %.1f s",
            self.model,
            ", ".join(self.models[1:]) or "none",
            time.perf_counter() - started,
        )

    async def _first_call(self) -> None:
        """Make one completion that never leaves the process.

        litellm and the openai SDK build clients, pydantic schemas and a
        logging helper lazily on the first call. In one measurement on a
        2-core machine the first real call took about 40 ms more than later
        ones after a ``mock_response`` warm-up, and no more with this one. For
        an ``openai`` provider model the call goes through the same request
        and response code as grading, but an httpx ``MockTransport`` returns
        the response. Other providers get litellm's ``mock_response``, which skips the
        HTTP and parsing steps, because they may not use the openai client.

        NOTE: litellm logs the call in a background task that imports a few
        more modules (about 10 ms) and may still run when this returns.
        """
        try:
            provider = self._litellm.get_llm_provider(self.model)[1]
        except Exception:
            provider = None
        options: dict[str, Any] = {"mock_response": "ok"}
        # Bound but never listening, so a request that ignored ``client``
        # would be refused on loopback instead of reaching the provider.
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if provider == "openai":
                reserved.bind(("127.0.0.1", 0))
                port = reserved.getsockname()[1]
                options = {
                    "client": _offline_openai_client(port),
                    "api_base": f"http://127.0.0.1:{port}/v1",
                    "api_key": "warm-up",
                    "temperature": self.temperature,
                    "response_format": self._response_formats[self.model],
                    "timeout": self.timeout_s,
                    "num_retries": 0,
                    "max_retries": 0,
                    "drop_params": True,
                }
            await self._litellm.acompletion(
                model=self.model,
                messages=[{"role": "user", "content": "warm-up"}],
                **options,
            )
        except Exception as exc:  # only an optimisation: grading still works
            logger.info("LLM grader: offline warm-up call failed: %s", exc)
        finally:
            reserved.close()

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
        self._response_formats = {
            model: self._response_format_for(model) for model in self.models
        }

    def _response_format_for(self, model: str) -> dict[str, Any]:
        """Return a JSON schema format if litellm lists schema support for the model."""
        litellm = self._litellm
        try:
            name, provider, _, _ = litellm.get_llm_provider(model)
            supported = litellm.supports_response_schema(
                model=name, custom_llm_provider=provider
            )
        except Exception:
            # get_llm_provider raises for names without a known provider; JSON
            # mode is the safe choice then.
            supported = False
        if supported:
            return {"type": "json_schema", "json_schema": verdict_json_schema()}
        return {"type": "json_object"}

    def response_format(self, model: str) -> dict[str, Any]:
        """Return the ``response_format`` sent to ``model``."""
        if model not in self._response_formats:
            raise RuntimeError("LLMGrader is not loaded: await warm_up()")
        return self._response_formats[model]

    def build_messages(
        self,
        scenario: Scenario,
        submission: Submission,
        checks: PrecheckResult | None = None,
    ) -> list[dict[str, str]]:
        """Render the system and user messages for one submission.

        With ``checks``, injected spans are replaced by ``REDACTION_MARK`` and
        the user message says why.
        """
        if self._system_template is None or self._user_template is None:
            raise RuntimeError("LLMGrader templates are not loaded: await warm_up()")
        checks = checks or PrecheckResult()
        shown = mark_redactions(submission, checks)
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
            subject=_neutralise_tags(shown.subject),
            attachments=[
                {
                    "filename": _neutralise_tags(item.filename),
                    "content_type": item.content_type,
                    "size_bytes": item.size_bytes,
                }
                for item in submission.attachments
            ],
            text=_neutralise_tags(shown.text),
            removed_count=len(checks.injections),
            redaction_mark=REDACTION_MARK,
        )
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]

    async def grade(self, scenario: Scenario, submission: Submission) -> Verdict:
        """Grade one submission with the model.

        Raises ``TemporaryGradingError`` when every model failed with errors
        that may pass (rate limit, timeout, connection failure, 5xx) after the
        retries. Raises ``GradingError`` on other provider errors and when
        ``max_output_tries`` responses gave no valid output. A precheck refusal
        is the worker's decision and does not stop the grading here.
        """
        await self.warm_up()
        checks = await precheck_async(scenario, submission)
        if checks.injections:
            logger.warning(
                "LLM grader: removed %d spans addressed to the grader "
                "(scenario %s, flags %s)",
                len(checks.injections),
                scenario.id,
                ", ".join(checks.flags),
            )
        shown = mark_redactions(submission, checks)
        base_messages = self.build_messages(scenario, submission, checks)
        messages = base_messages
        totals = _UsageTotals()
        problem = ""
        model_index = 0

        for call in range(1, self.max_output_tries + 1):
            response, model_index = await self._complete(
                messages, scenario.id, model_index, totals
            )
            model = self.models[model_index]
            totals.add_response(response, self._cost_of(response))

            content, finish_reason, body_error = _first_choice(response)
            try:
                if body_error and not content:
                    raise InvalidOutputError(
                        f"your response had no content and this error: {body_error}"
                    )
                parsed = parse_output(content, finish_reason, shown)
            except InvalidOutputError as exc:
                problem = str(exc)
                logger.warning(
                    "LLM grader: invalid output from %s for scenario %s "
                    "(output try %d of %d): %s",
                    model,
                    scenario.id,
                    call,
                    self.max_output_tries,
                    problem,
                )
                messages = _corrective_messages(
                    base_messages, content, finish_reason, problem
                )
                continue

            logger.info(
                "LLM grader: graded scenario %s with %s in %d HTTP calls, %.1f s, "
                "%d prompt and %d completion tokens",
                scenario.id,
                model,
                totals.calls,
                totals.latency_s,
                totals.prompt_tokens,
                totals.completion_tokens,
            )
            verdict = Verdict(
                scores=parsed.scores,
                comment=parsed.comment,
                revision=parsed.revision,
                counterpart_reply=parsed.counterpart_reply,
                grader=f"llm:{model}",
                usage=totals.as_usage(model),
            )
            return apply_caps(verdict, checks)

        raise GradingError(
            f"model {self.models[model_index]} returned no valid verdict in "
            f"{self.max_output_tries} responses; last problem: {problem}"
        )

    async def _complete(
        self,
        messages: list[dict[str, str]],
        scenario_id: str,
        first_model: int,
        totals: _UsageTotals,
    ) -> tuple[Any, int]:
        """Send one completion, retrying and falling back on provider errors.

        Returns the response and the index in ``self.models`` of the model
        that sent it.
        """
        failures: list[str] = []
        any_temporary = False
        retry_after_s: float | None = None
        for index in range(first_model, len(self.models)):
            model = self.models[index]
            for attempt in range(self.max_provider_retries + 1):
                try:
                    response = await self._request(model, messages, totals)
                except _ProviderFailure as failure:
                    failures.append(f"{model}: {failure}")
                    if not failure.temporary:
                        break
                    any_temporary = True
                    if failure.retry_after_s is not None:
                        retry_after_s = max(retry_after_s or 0.0, failure.retry_after_s)
                    delay = self._retry_delay(attempt, failure.retry_after_s)
                    if delay is None:
                        break
                    logger.warning(
                        "LLM grader: retrying %s in %.1f s (retry %d of %d, "
                        "scenario %s): %s",
                        model,
                        delay,
                        attempt + 1,
                        self.max_provider_retries,
                        scenario_id,
                        failure,
                    )
                    await self._sleep(delay)
                    continue
                if index != first_model:
                    logger.warning(
                        "LLM grader: fallback model %s answered for scenario %s",
                        model,
                        scenario_id,
                    )
                return response, index
            if index + 1 < len(self.models):
                logger.warning(
                    "LLM grader: giving up on %s for scenario %s, trying %s",
                    model,
                    scenario_id,
                    self.models[index + 1],
                )

        summary = "; ".join(failures[-3:])
        if any_temporary:
            raise TemporaryGradingError(
                f"every model failed after retries: {summary}",
                retry_after_s=retry_after_s,
            )
        raise GradingError(f"every model failed: {summary}")

    def _retry_delay(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Return the wait before the next try, or None to stop retrying this model.

        A Retry-After of the provider is used as given when it is at most
        ``max_retry_after_s``. A longer one stops the retries of this model,
        because the job queue can wait that long without holding a worker.
        """
        if attempt >= self.max_provider_retries:
            return None
        if retry_after_s is not None:
            if retry_after_s > self.max_retry_after_s:
                return None
            return retry_after_s
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        # Jitter in [0.5, 1.0) of the delay spreads out retries of many jobs.
        return delay * (0.5 + self._rng.random() / 2)

    async def _request(
        self, model: str, messages: list[dict[str, str]], totals: _UsageTotals
    ) -> Any:
        """Send one HTTP request and classify its failure."""
        litellm = self._litellm
        async with self._semaphore:
            started = time.perf_counter()
            totals.calls += 1
            try:
                # litellm enforces ``timeout`` per HTTP request. The outer
                # guard bounds the whole call in case a provider path ignores
                # it.
                async with asyncio.timeout(self.timeout_s + _TIMEOUT_GRACE_S):
                    return await litellm.acompletion(
                        model=model,
                        messages=messages,
                        api_base=self.api_base,
                        api_key=self._api_key,
                        temperature=self.temperature,
                        response_format=self._response_formats[model],
                        timeout=self.timeout_s,
                        # The retry loop in _complete retries, so litellm and
                        # the openai client must not retry on their own.
                        num_retries=0,
                        max_retries=0,
                        # Lets providers without JSON mode still be used:
                        # litellm drops parameters the provider does not
                        # support, and parse_output finds the JSON in text.
                        drop_params=True,
                    )
            except TimeoutError as exc:
                raise _ProviderFailure(
                    f"timed out after {self.timeout_s:g} s", temporary=True
                ) from exc
            except self._provider_error as exc:
                raise self._classify(exc) from exc
            finally:
                totals.latency_s += time.perf_counter() - started

    def _classify(self, exc: Exception) -> _ProviderFailure:
        """Decide whether an exception litellm raised may pass on a retry."""
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
        retry_after_s = _retry_after_s(exc)
        detail = str(exc)[:_MAX_ERROR_TEXT]
        message = f"{type(exc).__name__} (HTTP status {status}): {detail}"
        if retry_after_s is not None:
            message += f" (provider asks to retry after {retry_after_s:g} s)"
        return _ProviderFailure(
            message,
            temporary=isinstance(exc, temporary_types) or temporary_status,
            retry_after_s=retry_after_s,
        )

    def _cost_of(self, response: Any) -> float | None:
        """Return the US dollar cost of one response, or None without a price.

        litellm prices every response once and stores the result in
        ``_hidden_params["response_cost"]`` (None when the model has no
        price), so it is read from there. ``completion_cost`` prices it again
        only when that key is missing, because a second pricing took about a
        third of litellm's CPU time per call for an unpriced model (litellm
        1.110.2, measured on a 2-core machine).
        """
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(hidden, dict) and "response_cost" in hidden:
            cost = hidden["response_cost"]
            return float(cost) if isinstance(cost, int | float) else None
        try:
            return float(self._litellm.completion_cost(completion_response=response))
        except Exception:
            # litellm raises several exception types for models without a
            # price, which is normal for local and self-hosted models.
            logger.debug("LLM grader: no cost known for %s", response.model)
            return None


def verdict_json_schema() -> dict[str, Any]:
    """Build the JSON schema of a verdict for ``response_format``.

    It follows OpenAI's strict structured outputs: every property is required
    and no other property is allowed.
    """
    criterion = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "enum": list(range(MIN_SCORE, MAX_SCORE + 1))},
            "justification": {"type": "string"},
            "evidence": {"type": "string"},
        },
        "required": ["score", "justification", "evidence"],
        "additionalProperties": False,
    }
    return {
        "name": "email_verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "scores": {
                    "type": "object",
                    "properties": {key: criterion for key in CRITERION_KEYS},
                    "required": list(CRITERION_KEYS),
                    "additionalProperties": False,
                },
                "comment": {"type": "string"},
                "revision": {"type": "string"},
                "counterpart_reply": {"type": "string"},
            },
            "required": ["scores", "comment", "revision", "counterpart_reply"],
            "additionalProperties": False,
        },
    }


def parse_output(
    content: str | None, finish_reason: str | None, submission: Submission
) -> ParsedOutput:
    """Validate one model response and return its parts.

    ``submission`` is the text the model saw, which evidence quotes must come
    from. Raises ``InvalidOutputError`` with a message addressed to the model.
    """
    if finish_reason == "length":
        raise InvalidOutputError(
            "your response was cut off because it reached the output token limit"
        )
    if content is None or not content.strip():
        raise InvalidOutputError("your response was empty")

    data = extract_json_object(content)
    scores = _parse_scores(data.get("scores"), submission)
    comment = _required_text(data, "comment")
    sentences = count_sentences(comment)
    if not MIN_COMMENT_SENTENCES <= sentences <= MAX_COMMENT_SENTENCES:
        raise InvalidOutputError(
            f'"comment" must have {MIN_COMMENT_SENTENCES} to '
            f"{MAX_COMMENT_SENTENCES} sentences, got {sentences}"
        )
    return ParsedOutput(
        scores=scores,
        comment=comment,
        revision=_required_text(data, "revision"),
        counterpart_reply=_required_text(data, "counterpart_reply"),
    )


def count_sentences(text: str) -> int:
    """Count sentences that end with ".", "!" or "?" or at the end of the text."""
    return len([part for part in _SENTENCE_END.split(text.strip()) if part.strip()])


def extract_json_object(content: str) -> dict[str, Any]:
    """Find the JSON object in a model response.

    Accepts a bare object, an object in a fenced code block, or an object with
    prose before or after it. A reasoning block such as ``<think>...</think>``
    before the answer is skipped.
    """
    text = _REASONING_BLOCK.sub("", content)
    # Some providers strip the opening tag but keep the closing one.
    closing = list(_REASONING_END.finditer(text))
    if closing:
        text = text[closing[-1].end() :]
    text = text.strip()
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


def _parse_scores(value: Any, submission: Submission) -> tuple[CriterionScore, ...]:
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
    invented: list[str] = []
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
        if "evidence" not in item:
            raise InvalidOutputError(f'"scores.{key}.evidence" is missing')
        evidence = item["evidence"]
        if not isinstance(evidence, str):
            raise InvalidOutputError(f'"scores.{key}.evidence" must be a string')
        evidence = evidence.strip()
        if evidence and not _quote_in_source(evidence, source):
            invented.append(key)
        scores.append(
            CriterionScore(
                criterion=key,
                score=score,
                justification=justification,
                evidence=evidence,
            )
        )
    if invented:
        # A quote the student never wrote would mislead the student.
        raise InvalidOutputError(
            "these evidence quotes do not occur in the student's email: "
            f"{', '.join(f'scores.{key}.evidence' for key in invented)}; copy "
            'the words exactly from the email, or use "" when there is nothing '
            "to quote"
        )
    return tuple(scores)


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


def _first_choice(response: Any) -> tuple[str | None, str | None, str]:
    """Return the content, the finish reason and any error text in the body."""
    body_error = getattr(response, "error", None)
    error_text = ""
    if body_error:
        message = body_error.get("message") if isinstance(body_error, dict) else None
        error_text = str(message or body_error)[:_MAX_ERROR_TEXT]
    choices = getattr(response, "choices", None) or []
    if not choices:
        return None, None, error_text
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    finish_reason = getattr(choice, "finish_reason", None)
    return (content if isinstance(content, str) else None), finish_reason, error_text


def _usage_count(response: Any, field_name: str) -> int:
    usage = getattr(response, "usage", None)
    value = getattr(usage, field_name, None)
    return value if isinstance(value, int) else 0


def _retry_after_s(exc: Exception) -> float | None:
    """Return the Retry-After of a provider error response in seconds, if any.

    The header contains either seconds or an HTTP date (RFC 9110, section 10.2.3).
    """
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _offline_openai_client(port: int) -> Any:
    """Build an openai client whose transport responds in-process, for warm-up.

    httpx's ``MockTransport`` returns a fixed chat completion without opening
    a socket. The base URL names the refused loopback ``port`` in case a code
    path bypasses the transport.
    """
    import httpx
    import openai

    body = {
        "id": "chatcmpl-warm-up",
        "object": "chat.completion",
        "created": 0,
        "model": "warm-up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "{}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    return openai.AsyncOpenAI(
        api_key="warm-up",
        base_url=f"http://127.0.0.1:{port}/v1",
        http_client=httpx.AsyncClient(transport=transport),
        max_retries=0,
    )
