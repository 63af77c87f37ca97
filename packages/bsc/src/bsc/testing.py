"""Test helpers for the proxy and the client wrapper (needs ``bsc[server]``).

- :class:`ServerThread` runs any ASGI app with uvicorn on ``127.0.0.1`` and a free port in a
  background thread: ``with ServerThread(app) as server: server.url``.
- :class:`FakeChatUpstream` is an ASGI app speaking the OpenAI chat-completions and Responses
  formats, streamed and not: it answers ``"answer <n>: <last user message>"`` with usage, and can
  be told to fail (an HTTP status with a body, or a delay) for the next requests. It counts the
  requests it answered, and records the ``Authorization`` header of the last one. For tests of
  a proxy that forwards other routes unchanged it also serves ``GET /v1/models``,
  ``POST /v1/completions``, ``POST /v1/files`` (multipart), ``POST /v1/audio/speech`` (a binary
  stream) and ``/v1/echo/{path}`` (any method: it describes the request it got), and records the
  headers of the last request to any route.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bsc._chat import chunks_from_completion
from bsc._responses import events_from_response, sse

__all__ = ["FakeChatUpstream", "ServerThread", "UpstreamFault"]


@dataclass
class UpstreamFault:
    """How to answer one request instead of normally: ``status`` and ``body`` (JSON), and/or
    ``delay`` seconds before answering."""

    status: int | None = None
    body: Any = None
    delay: float = 0.0


class FakeChatUpstream:
    """An OpenAI-compatible API for tests; ``app`` is the ASGI app.

    Model answers (``POST /v1/chat/completions`` and ``POST /v1/responses``, streamed when the
    body asks) are ``"answer <n>: <last user input>"``, where ``n`` counts them
    (:attr:`requests`); they honour the faults queued by :meth:`fail`. The pass-through routes
    (``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/files``, ``POST /v1/audio/speech``
    and ``/v1/echo/{path}`` for any method) also honour faults, and are counted apart
    (:attr:`passthrough_requests`). :attr:`last_request_headers` holds the headers (lower-cased
    names) of the last request to any route, :attr:`last_authorization` the ``Authorization``
    header of the last model request.
    """

    #: The body ``POST /v1/audio/speech`` streams: 64 KiB of bytes 0..255 repeated, in
    #: :attr:`SPEECH_CHUNKS` chunks.
    SPEECH_BYTES = bytes(range(256)) * 256
    SPEECH_CHUNKS = 8
    ECHO_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests = 0
        self.passthrough_requests = 0
        self.last_authorization: str | None = None
        self.last_request_headers: dict[str, str] = {}
        self._faults: deque[UpstreamFault] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/files", self._files, methods=["POST"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
                Route("/v1/echo/{path:path}", self._echo, methods=list(self.ECHO_METHODS)),
            ]
        )

    def _seen(self, request: Request) -> None:
        self.last_request_headers = {k.lower(): v for k, v in request.headers.items()}

    def fail(self, status: int | None = None, body: Any = None, delay: float = 0.0, times: int = 1) -> None:
        """Answer the next ``times`` requests with this fault."""
        for _ in range(times):
            self._faults.append(UpstreamFault(status, body, delay))

    async def _fault(self) -> Response | None:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is None:
            if self.delay:
                await asyncio.sleep(self.delay)
            return None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is None:
            return None
        body = fault.body if fault.body is not None else {"error": {"message": "fault", "type": "server_error"}}
        return JSONResponse(body, fault.status)

    async def _chat(self, request: Request) -> Response:
        self._seen(request)
        payload = json.loads(await request.body())
        self.last_authorization = request.headers.get("authorization")
        fault = await self._fault()
        if fault is not None:
            return fault
        with self._lock:
            self.requests += 1
            n = self.requests
        last = payload["messages"][-1]["content"]
        text = last if isinstance(last, str) else json.dumps(last)
        completion = {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "fake"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer {n}: {text}"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        if not payload.get("stream"):
            return JSONResponse(completion)
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        chunks = chunks_from_completion(completion, include_usage=include_usage)

        async def events() -> Any:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _embeddings(self, request: Request) -> Response:
        self._seen(request)
        payload = json.loads(await request.body())
        texts = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(texts)]
        return JSONResponse({"object": "list", "data": data, "model": payload.get("model"), "usage": {}})

    async def _responses(self, request: Request) -> Response:
        self._seen(request)
        payload = json.loads(await request.body())
        self.last_authorization = request.headers.get("authorization")
        fault = await self._fault()
        if fault is not None:
            return fault
        with self._lock:
            self.requests += 1
            n = self.requests
        now = int(time.time())
        response = {
            "id": f"resp_fake_{n}",
            "object": "response",
            "created_at": now,
            "status": "completed",
            "completed_at": now,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"),
            "max_tool_calls": payload.get("max_tool_calls"),
            "model": payload.get("model", "fake"),
            "output": [
                {
                    "id": f"msg_fake_{n}",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_text",
                            "text": f"answer {n}: {_last_input_text(payload.get('input'))}",
                            "annotations": [],
                            "logprobs": [],
                        }
                    ],
                }
            ],
            "parallel_tool_calls": payload.get("parallel_tool_calls", True),
            "previous_response_id": payload.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": payload.get("store", True),
            "temperature": payload.get("temperature", 1.0),
            "text": payload.get("text", {"format": {"type": "text"}}),
            "tool_choice": payload.get("tool_choice", "auto"),
            "tools": payload.get("tools", []),
            "top_logprobs": payload.get("top_logprobs", 0),
            "top_p": payload.get("top_p", 1.0),
            "truncation": payload.get("truncation", "disabled"),
            "usage": {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 15,
            },
            "user": payload.get("user"),
            "metadata": payload.get("metadata", {}),
        }
        if not payload.get("stream"):
            return JSONResponse(response)
        body = sse(events_from_response(response))

        async def events() -> Any:
            # Event by event, as the API sends them.
            for event in body.split(b"\n\n")[:-1]:
                yield event + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _passthrough(self, request: Request) -> Response | None:
        """Record a pass-through request; the fault to answer it with, if any."""
        self._seen(request)
        fault = await self._fault()
        if fault is None:
            with self._lock:
                self.passthrough_requests += 1
        return fault

    async def _models(self, request: Request) -> Response:
        fault = await self._passthrough(request)
        if fault is not None:
            return fault
        data = [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "bsc-test"}
            for name in ("fake-model", "fake-embedding")
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _completions(self, request: Request) -> Response:
        fault = await self._passthrough(request)
        if fault is not None:
            return fault
        payload = json.loads(await request.body())
        prompt = payload.get("prompt")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        return JSONResponse(
            {
                "id": f"cmpl-fake-{self.passthrough_requests}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": payload.get("model", "fake"),
                "choices": [{"index": 0, "text": f"echo: {text}", "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
        )

    async def _files(self, request: Request) -> Response:
        fault = await self._passthrough(request)
        if fault is not None:
            return fault
        body = await request.body()
        header = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode("latin-1")
        form = BytesParser().parsebytes(header + body)
        fields: dict[str, str] = {}
        upload: tuple[str, bytes] | None = None
        for part in form.get_payload() if form.is_multipart() else []:
            assert isinstance(part, Message)
            name = part.get_param("name", header="content-disposition")
            content = part.get_payload(decode=True)
            content = content if isinstance(content, bytes) else b""
            filename = part.get_filename()
            if filename is not None:
                upload = (filename, content)
            elif isinstance(name, str):
                fields[name] = content.decode()
        if upload is None:
            return JSONResponse({"error": {"message": "no file uploaded", "type": "invalid_request_error"}}, 400)
        return JSONResponse(
            {
                "id": f"file-fake-{self.passthrough_requests}",
                "object": "file",
                "bytes": len(upload[1]),
                "created_at": int(time.time()),
                "filename": upload[0],
                "purpose": fields.get("purpose", ""),
                "status": "processed",
                "sha256": hashlib.sha256(upload[1]).hexdigest(),
            }
        )

    async def _speech(self, request: Request) -> Response:
        fault = await self._passthrough(request)
        if fault is not None:
            return fault
        await request.body()
        data = self.SPEECH_BYTES
        size = len(data) // self.SPEECH_CHUNKS

        async def chunks() -> Any:
            for start in range(0, len(data), size):
                yield data[start : start + size]
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="audio/mpeg")

    async def _echo(self, request: Request) -> Response:
        fault = await self._passthrough(request)
        if fault is not None:
            return fault
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                "query": request.url.query,
                "headers": dict(self.last_request_headers),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_size": len(body),
            }
        )


def _last_input_text(value: Any) -> str:
    """The text of a Responses request's last input (JSON for anything but text)."""
    if isinstance(value, list) and value:
        value = value[-1].get("content") if isinstance(value[-1], dict) else value[-1]
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "input_text" for p in value):
        value = "\n".join(str(p.get("text", "")) for p in value)
    return value if isinstance(value, str) else json.dumps(value)


class ServerThread:
    """Runs an ASGI app with uvicorn on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="bsc-test-server", daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
