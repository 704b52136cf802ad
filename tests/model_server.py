"""Loopback HTTP server that imitates OpenAI's chat completions endpoint for tests.

It binds 127.0.0.1 on a free port, so tests can drive litellm's real HTTP client
without any model provider.

API:

- ``ModelServer()`` is an async context manager. ``async with ModelServer() as
  server:`` starts it, and leaving the block stops it. ``await server.start()``
  and ``await server.stop()`` do the same by hand.
- ``server.port`` is the bound port and ``server.api_base`` is
  ``"http://127.0.0.1:PORT/v1"``, the value to pass as litellm's ``api_base``.
- ``server.push(*replies)`` appends ``ScriptedReply`` objects to a FIFO queue.
  Each POST to ``/v1/chat/completions`` takes the next reply. With an empty
  queue the server returns HTTP 200 with ``default_content``. That value is a
  string or a function of the parsed request body, and it defaults to a valid
  grader verdict from ``verdict_content()``.
- ``server.requests`` lists every parsed request body in arrival order, and
  ``server.request_headers`` lists the matching request headers.
- ``server.models`` lists the model name of each request, and
  ``server.max_in_flight`` is the highest number of requests the server was
  handling at the same time.
- ``ScriptedReply(content=None, body_error="...")`` sends HTTP 200 with
  ``null`` content and an ``error`` object in the body, as some gateways do.
- ``verdict_payload()`` and ``verdict_content()`` build a valid verdict as a
  dict or a JSON string, for tests to change before they script it.
- The ``model_server`` pytest fixture yields a started server. Import
  ``model_server_fixture`` into a test module to make the fixture available.

Streaming requests (``"stream": true``) get HTTP 400 because no test needs them
yet. Other paths get HTTP 404.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest
from aiohttp import web

from peb_mail.models import CRITERION_KEYS

LOOPBACK_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ScriptedReply:
    """One response the server sends, in the order the test pushed it.

    ``content=None`` sends the server's default content. A ``status`` other
    than 200 sends an OpenAI-style error body. ``raw_body`` replaces the whole
    response body, for tests of malformed responses. ``delay_s`` waits before
    any byte of the response is sent, which imitates a stalled provider.
    """

    content: str | None = None
    finish_reason: str = "stop"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    prompt_tokens: int = 120
    completion_tokens: int = 80
    raw_body: str | None = None
    # Sends null content and this message in an "error" object of the body.
    body_error: str | None = None


COMMENT = (
    "Thank you for your email. Your message is polite and clear. "
    "You can make the next step more specific."
)


def verdict_payload(score: int = 4, evidence: str = "") -> dict[str, Any]:
    """Build a valid grader verdict with the same score for every criterion."""
    return {
        "scores": {
            key: {
                "score": score,
                "justification": f"The {key} of the email is mostly good.",
                "evidence": evidence,
            }
            for key in CRITERION_KEYS
        },
        "comment": COMMENT,
        "revision": "Subject: Update\n\nHello,\n\nHere is the update.\n\nBest regards",
        "counterpart_reply": "Thanks for the update. I will check it today.",
    }


def verdict_content(score: int = 4, evidence: str = "") -> str:
    """Return ``verdict_payload()`` as the JSON text a model would send."""
    return json.dumps(verdict_payload(score=score, evidence=evidence))


DefaultContent = str | Callable[[dict[str, Any]], str]


class ModelServer:
    """OpenAI-compatible chat completions server on the loopback interface."""

    def __init__(self, default_content: DefaultContent | None = None) -> None:
        self.default_content: DefaultContent = (
            default_content if default_content is not None else verdict_content()
        )
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        # time.time() at the arrival of each request, in the same order.
        self.arrived_at: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: collections.deque[ScriptedReply] = collections.deque()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        # Set on stop so that replies still waiting out ``delay_s`` end at once
        # and shutdown does not wait for them.
        self._stopping = asyncio.Event()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ModelServer is not started: call start() first")
        return self._port

    @property
    def api_base(self) -> str:
        return f"http://{LOOPBACK_HOST}:{self.port}/v1"

    def push(self, *replies: ScriptedReply) -> None:
        """Append replies to the queue that the next requests consume."""
        self._script.extend(replies)

    @property
    def models(self) -> list[str]:
        """Model name of each request, in arrival order."""
        return [str(body.get("model", "")) for body in self.requests]

    @property
    def pending(self) -> int:
        """Number of scripted replies not yet sent."""
        return len(self._script)

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and start serving."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle_completion)
        # A short shutdown timeout keeps stop() fast when a client is still
        # connected.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()

        # Binding the socket here, not in aiohttp, gives a public way to read
        # back the port the OS chose.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK_HOST, 0))
        self._port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle_completion(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error_response(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error_response(400, "request body must be a JSON object")

        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        self.arrived_at.append(time.time())
        reply = self._script.popleft() if self._script else ScriptedReply()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._reply(body, reply)
        finally:
            self.in_flight -= 1

    async def _reply(
        self, body: dict[str, Any], reply: ScriptedReply
    ) -> web.StreamResponse:
        if reply.delay_s > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=reply.delay_s)
            except TimeoutError:
                pass

        if body.get("stream"):
            return _error_response(400, "streaming is not supported by ModelServer")
        if reply.raw_body is not None:
            return web.Response(
                status=reply.status,
                text=reply.raw_body,
                content_type="application/json",
                headers=reply.headers,
            )
        if reply.status != 200:
            return _error_response(
                reply.status, "scripted error from ModelServer", reply.headers
            )

        if reply.body_error is not None:
            payload = _completion_body(str(body.get("model", "")), None, reply)
            payload["error"] = {"message": reply.body_error, "code": 502}
            return web.json_response(payload, headers=reply.headers)

        content = reply.content
        if content is None:
            content = (
                self.default_content(body)
                if callable(self.default_content)
                else self.default_content
            )
        return web.json_response(
            _completion_body(str(body.get("model", "")), content, reply),
            headers=reply.headers,
        )


def _completion_body(
    model: str, content: str | None, reply: ScriptedReply
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


def _error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    error = {"message": message, "type": "server_error", "code": status}
    return web.json_response({"error": error}, status=status, headers=headers)


@pytest.fixture(name="model_server")
async def model_server_fixture() -> AsyncIterator[ModelServer]:
    """Yield a started ``ModelServer`` and stop it after the test."""
    async with ModelServer() as server:
        yield server
