"""Test helpers for the proxy and the client wrapper (needs ``bsc[server]``).

- :class:`ServerThread` runs any ASGI app with uvicorn on ``127.0.0.1`` and a free port in a
  background thread: ``with ServerThread(app) as server: server.url``.
- :class:`FakeChatUpstream` is an ASGI app speaking the OpenAI chat-completions format,
  streamed and not: it answers ``"answer <n>: <last user message>"`` with usage, and can be
  told to fail (an HTTP status with a body, or a delay) for the next requests. It counts the
  requests it answered, and records the ``Authorization`` header of the last one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bsc._chat import chunks_from_completion

__all__ = ["FakeChatUpstream", "ServerThread", "UpstreamFault"]


@dataclass
class UpstreamFault:
    """How to answer one request instead of normally: ``status`` and ``body`` (JSON), and/or
    ``delay`` seconds before answering."""

    status: int | None = None
    body: Any = None
    delay: float = 0.0


class FakeChatUpstream:
    """An OpenAI-compatible chat API for tests; ``app`` is the ASGI app."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests = 0
        self.last_authorization: str | None = None
        self._faults: deque[UpstreamFault] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

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
        payload = json.loads(await request.body())
        texts = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(texts)]
        return JSONResponse({"object": "list", "data": data, "model": payload.get("model"), "usage": {}})


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
