"""Loopback servers that speak the OpenAI embeddings and Ollama embed wire formats, for tests.

They are real HTTP servers (the standard library's ``ThreadingHTTPServer`` on ``127.0.0.1``
and a free port), so the real ``openai`` SDK and ``httpx`` make real requests to them. Faults
can be queued: an HTTP status with a body, a delay (to trigger client timeouts), a malformed
body, or a change to the vectors (wrong dimension, NaN). Use them to test your own application
without a network or a key::

    with FakeOpenAIServer(dim=1536) as server:
        backend = OpenAIEmbeddingBackend(base_url=server.url, api_key="test")
        server.enqueue(status=429, headers={"retry-after-ms": "10"})  # the next request is throttled
        backend.embed_text("hello")                                   # retried, then answered

Embeddings are deterministic: the normalised sum of one pseudo-random vector per lower-cased
word, so texts sharing most of their words are close and unrelated texts are not.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Fault", "FakeOllamaServer", "FakeOpenAIServer", "WordEmbedder", "word_embedding"]


@functools.lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim)


def word_embedding(text: str, dim: int) -> npt.NDArray[np.float32]:
    """A deterministic unit vector for ``text``: the sum of a seeded random vector per word."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split() or [text]
    total = np.zeros(dim)
    for word, count in collections.Counter(words).items():
        total += count * _word_vector(word, dim)
    return (total / np.linalg.norm(total)).astype(np.float32)


class WordEmbedder:
    """An in-process :class:`~bsc_backends.Embedder` for tests: :func:`word_embedding` of each
    text, instantly, with no model, server or network. ``calls`` counts calls and ``texts`` the
    texts embedded. With ``max_tokens``, it also reports ``token_count`` (words + 2, capped) as
    the local embedder does, so prompts longer than a model's window can be tested."""

    def __init__(self, dim: int = 64, *, max_tokens: int | None = None, name: str = "test-words") -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.name = name
        self.calls = 0
        self.texts = 0
        self._lock = threading.Lock()
        if max_tokens is not None:
            self.max_tokens = max_tokens

    @property
    def embedding_dim(self) -> int:
        return self.dim

    @property
    def model_name(self) -> str:
        return self.name

    def token_count(self, text: str) -> int:
        return min(len(text.split()) + 2, getattr(self, "max_tokens", 1 << 62))

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            self.calls += 1
            self.texts += len(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([word_embedding(text, self.dim) for text in texts])

    def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        row: npt.NDArray[np.float32] = self.embed_texts([text])[0]
        return row

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        return self.embed_text(text)

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return self.embed_texts(texts)


@dataclass
class Fault:
    """How to answer one request instead of (or on top of) the normal answer.

    ``status`` and ``body`` replace the answer (``body`` as JSON unless it is ``bytes``);
    ``delay`` sleeps before answering; ``vectors`` rewrites the normal answer's vectors.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    vectors: Callable[[list[list[float]]], list[list[float]]] | None = None


@dataclass
class Request:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class _Server:
    """The shared machinery: a threaded HTTP server on 127.0.0.1 with a fault queue."""

    def __init__(self, dim: int, models: set[str]) -> None:
        self.dim = dim
        self.models = set(models)
        self.requests: list[Request] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._handle(self, "GET")

            def do_POST(self) -> None:
                owner._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def enqueue(self, fault: Fault | None = None, /, *, times: int = 1, **kwargs: Any) -> None:
        """Answer the next ``times`` requests with ``fault`` (or ``Fault(**kwargs)``)."""
        fault = fault or Fault(**kwargs)
        with self._lock:
            self._faults.extend([fault] * times)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        with self._lock:
            self.requests.append(
                Request(method, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
            )
        fault = self._next_fault() if method == "POST" else None
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.status is not None:
            self._send(handler, fault.status, fault.body, fault.headers)
            return
        if fault and fault.status is None and fault.body is not None:
            self._send(handler, 200, fault.body, fault.headers)
            return
        status, answer = self.answer(method, handler.path, body, fault)
        self._send(handler, status, answer, fault.headers if fault else {})

    def answer(self, method: str, path: str, body: Any, fault: Fault | None) -> tuple[int, Any]:
        raise NotImplementedError

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def _vectors(self, texts: list[str], dim: int, fault: Fault | None) -> list[list[float]]:
        vectors = [word_embedding(t, dim).tolist() for t in texts]
        return fault.vectors(vectors) if fault and fault.vectors else vectors


class FakeOpenAIServer(_Server):
    """``POST /v1/embeddings`` as OpenAI serves it (float and base64 encodings, ``dimensions``,
    usage counts, 401 without a bearer token, 404 for an unknown model, 400 for an input over
    ``max_input_tokens``, counting one token per word). ``url`` ends in ``/v1``."""

    def __init__(self, dim: int = 1536, models: set[str] | None = None, max_input_tokens: int = 8192) -> None:
        super().__init__(dim, models or {"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"})
        self.max_input_tokens = max_input_tokens
        self.url = f"http://127.0.0.1:{self.port}/v1"

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str | None = None) -> tuple[int, Any]:
        return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def answer(self, method: str, path: str, body: Any, fault: Fault | None) -> tuple[int, Any]:
        if method != "POST" or path.rstrip("/") != "/v1/embeddings":
            return self._error(404, f"Unknown request URL: {method} {path}", "invalid_request_error")
        headers = self.requests[-1].headers
        if not headers.get("authorization", "").startswith("Bearer "):
            return self._error(401, "You didn't provide an API key.", "invalid_request_error")
        if not isinstance(body, dict) or "input" not in body or "model" not in body:
            return self._error(400, "'input' and 'model' are required", "invalid_request_error")
        if body["model"] not in self.models:
            return self._error(
                404, f"The model `{body['model']}` does not exist", "invalid_request_error", "model_not_found"
            )
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not texts or len(texts) > 2048 or not all(isinstance(t, str) and t for t in texts):
            return self._error(400, "'input' must be 1 to 2048 non-empty strings", "invalid_request_error")
        longest = max(len(t.split()) for t in texts)  # one token per word, in this fake
        if longest > self.max_input_tokens:
            return self._error(
                400, f"This model's maximum context length is {self.max_input_tokens} tokens, however you requested "
                f"{longest} tokens. Please reduce your prompt.", "invalid_request_error", "context_length_exceeded",
            )  # fmt: skip
        dim = int(body.get("dimensions") or self.dim)
        vectors = self._vectors(texts, dim, fault)
        b64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode() if b64 else v,
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(t.split()) for t in texts)
        return 200, {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class FakeOllamaServer(_Server):
    """``POST /api/embed`` as Ollama serves it (404 for a model that is not pulled, 400 for a
    model in ``chat_models`` that cannot embed), plus ``GET /`` and ``GET /api/tags``."""

    def __init__(self, dim: int = 768, models: set[str] | None = None, chat_models: set[str] | None = None) -> None:
        super().__init__(dim, models or {"nomic-embed-text"})
        self.chat_models = chat_models or {"llama3.2"}
        self.url = f"http://127.0.0.1:{self.port}"

    def answer(self, method: str, path: str, body: Any, fault: Fault | None) -> tuple[int, Any]:
        if method == "GET" and path == "/":
            return 200, "Ollama is running"
        if method == "GET" and path == "/api/tags":
            return 200, {"models": [{"name": f"{m}:latest", "model": f"{m}:latest"} for m in sorted(self.models)]}
        if method != "POST" or path != "/api/embed":
            return 404, {"error": "404 page not found"}
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return 400, {"error": "invalid request body"}
        model = body["model"].removesuffix(":latest")
        if model in self.chat_models:
            return 400, {"error": f'"{body["model"]}" does not support embeddings'}
        if model not in self.models:
            return 404, {"error": f'model "{body["model"]}" not found, try pulling it first'}
        texts = body.get("input", [])
        texts = texts if isinstance(texts, list) else [texts]
        tokens = sum(len(t.split()) for t in texts)
        return 200, {
            "model": body["model"],
            "embeddings": self._vectors(texts, self.dim, fault),
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": tokens,
        }
