"""The caching proxy: an OpenAI-compatible HTTP server in front of an upstream API.

    bsc serve --upstream http://127.0.0.1:11434/v1 --port 8080 --persist answers.bsc

Point any OpenAI client's base URL at ``http://HOST:PORT/v1``. Routes:

- ``POST /v1/chat/completions``: answered from the ``SemanticCache`` when it can be, streamed
  (``"stream": true``, server-sent events) or not; otherwise forwarded upstream, and a
  successful answer is stored (a streamed one once its stream has completed). Upstream errors
  and timeouts are passed back with the upstream's status (502/504 when there was no answer);
  nothing is cached from an error.
- ``POST /v1/embeddings``: passed through.
- ``GET /healthz``: ``{"status": "ok", "entries": N}``.
- ``GET /metrics``: Prometheus text format.

Isolation: entries are kept per API key (a hash of the ``Authorization`` or ``api-key``
header, which is forwarded upstream and never logged or stored), subdivided by an
``X-Bsc-Namespace`` header when given; ``--shared-namespaces`` makes ``X-Bsc-Namespace`` alone
the namespace, shared by every key (for a proxy behind a gateway that authenticates callers).
Response headers: ``X-Bsc-Cache: hit|miss|bypass`` and, on a hit, ``X-Bsc-Similarity``.
Request headers: ``Cache-Control: no-cache`` (do not answer from the cache, but store the new
answer), ``Cache-Control: no-store`` (bypass the cache entirely), ``X-Bsc-TTL: seconds``.

Built on Starlette (routing, requests, streaming responses), uvicorn (the HTTP server), httpx
(the upstream client) and prometheus-client; no HTTP is hand-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

try:
    import httpx
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('the bsc proxy needs its server dependencies: pip install "bsc[server]"') from exc

from bsc._chat import chunks_from_completion, completion_from_chunks, fresh, split_request, usable_usage
from bsc.semantic import SemanticCache, _check_namespace, chat_scope

logger = logging.getLogger("bsc")

__all__ = ["create_app"]

# Request headers not forwarded upstream: hop-by-hop ones, those httpx sets, and bsc's own.
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "accept-encoding",
        "cache-control",
        "x-bsc-namespace",
        "x-bsc-ttl",
    }
)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _error(status: int, message: str, kind: str = "invalid_request_error", **headers: str) -> JSONResponse:
    """An error in the OpenAI format."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status, headers=headers)


class _Metrics:
    def __init__(self, cache: SemanticCache) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bsc_proxy_requests", "Chat completion requests by cache result", ["cache"], registry=self.registry
        )
        self.latency = Histogram(
            "bsc_proxy_request_seconds",
            "Time to the response headers (a hit: to the whole answer) by cache result",
            ["cache"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "bsc_proxy_upstream_seconds",
            "Upstream time to response headers",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "bsc_proxy_upstream_errors",
            "Upstream answers that were errors, by status",
            ["status"],
            registry=self.registry,
        )
        self.stored = Counter("bsc_proxy_stored", "Answers stored in the cache", registry=self.registry)
        entries = Gauge("bsc_cache_entries", "Entries in the cache", registry=self.registry)
        entries.set_function(lambda: len(cache))

    def done(self, result: str, started: float) -> None:
        self.requests.labels(result).inc()
        self.latency.labels(result).observe(time.perf_counter() - started)


def _namespace(request: Request, shared: bool) -> str | JSONResponse:
    """The caller's namespace. By default one per API key (``Authorization`` or ``api-key``
    header; a hash, the key itself is never kept), subdivided by ``X-Bsc-Namespace``; with
    ``shared``, ``X-Bsc-Namespace`` alone, so callers with different keys share it."""
    given = request.headers.get("x-bsc-namespace")
    auth = request.headers.get("authorization") or request.headers.get("api-key") or ""
    key = "key-" + hashlib.sha256(auth.encode("utf-8", "surrogateescape")).hexdigest()[:24] if auth else "anonymous"
    if given is None:
        return key
    name = given if shared else f"{key}:{given}"
    try:
        return _check_namespace(name)
    except ValueError as err:
        limit = "" if shared else f" (at most {127 - len(key)} characters after the key's prefix)"
        return _error(400, f"X-Bsc-Namespace{limit}: {err}")


def _ttl(request: Request) -> float | JSONResponse | None:
    raw = request.headers.get("x-bsc-ttl")
    if raw is None:
        return None
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not 0 < ttl < float("inf"):
        return _error(400, f"X-Bsc-TTL must be a positive number of seconds, got {raw!r}")
    return ttl


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    events = [f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n" for chunk in chunks]
    return ("".join(events) + "data: [DONE]\n\n").encode()


_background: set[asyncio.Task[None]] = set()


async def _shielded(work: Coroutine[Any, Any, None]) -> None:
    """Runs ``work`` to the end even if the caller is cancelled (a client that disconnects)."""
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.shield(task)


def create_app(
    cache: SemanticCache,
    upstream: str,
    *,
    timeout: float = 600.0,
    close_cache: bool = False,
    shared_namespaces: bool = False,
) -> Starlette:
    """The proxy as an ASGI app: ``upstream`` is the base URL requests go to (e.g.
    ``http://127.0.0.1:11434/v1``; ``/chat/completions`` and ``/embeddings`` are appended).
    ``close_cache``: close the cache when the server shuts down (with a ``persist_path``, its
    last save), as ``bsc serve`` does. ``shared_namespaces``: ``X-Bsc-Namespace`` alone names
    the namespace, so callers with different API keys share its answers (only behind a
    gateway that authenticates callers; by default a namespace lives within one API key)."""
    if not isinstance(upstream, str):
        raise TypeError(f"upstream must be a URL string, got {type(upstream).__name__}")
    parsed = httpx.URL(upstream)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"upstream must be an http:// or https:// URL, got {upstream!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(cache, SemanticCache):
        raise TypeError(f"cache must be a bsc.SemanticCache, got {type(cache).__name__}")
    base = upstream.rstrip("/")
    metrics = _Metrics(cache)
    clients: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        clients.append(httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits))
        try:
            yield
        finally:
            await clients.pop().aclose()
            if close_cache:
                # Here, not after the server returns: uvicorn re-raises SIGTERM/SIGINT once it
                # has shut down, so code after it never runs.
                await asyncio.to_thread(cache.close)

    def forwarded(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}

    async def send_upstream(request: Request, path: str, body: bytes, stream: bool) -> httpx.Response | Response:
        client = clients[0]
        url = base + path + (f"?{request.url.query}" if request.url.query else "")
        upstream_request = client.build_request("POST", url, content=body, headers=forwarded(request))
        started = time.perf_counter()
        try:
            response = await client.send(upstream_request, stream=stream)
        except httpx.TimeoutException:
            metrics.upstream_errors.labels("timeout").inc()
            return _error(504, "the upstream API did not answer in time", "upstream_timeout")
        except httpx.HTTPError as err:
            metrics.upstream_errors.labels("unreachable").inc()
            logger.warning("bsc proxy: upstream %s unreachable: %s", base, type(err).__name__)
            return _error(502, "the upstream API could not be reached", "upstream_unreachable")
        metrics.upstream_latency.observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.upstream_errors.labels(str(response.status_code)).inc()
        return response

    def kept(response: httpx.Response) -> dict[str, str]:
        """Upstream headers passed back: rate limits, request ids, OpenAI's own."""
        return {
            k: v
            for k, v in response.headers.items()
            if k.lower() in ("retry-after", "x-request-id") or k.lower().startswith(("x-ratelimit", "openai-"))
        }

    def passed_back(response: httpx.Response, content: bytes, **headers: str) -> Response:
        keep = kept(response)
        if "content-type" in response.headers:
            keep["content-type"] = response.headers["content-type"]
        return Response(content, response.status_code, headers={**keep, **headers})

    async def chat(request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "the request body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "the request body must be a JSON object")
        namespace = _namespace(request, shared_namespaces)
        if isinstance(namespace, Response):
            return namespace
        ttl = _ttl(request)
        if isinstance(ttl, Response):
            return ttl
        control = request.headers.get("cache-control", "").lower()
        stream = bool(payload.get("stream"))
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        key: tuple[str, dict[str, Any]] | None = None
        prepared = None
        if "no-store" not in control:
            messages, model, params = split_request(payload)
            try:
                key = chat_scope(messages, model=model, **params)
                # The cache's own checks (an empty or over-long prompt, a temperature above the
                # limit): such requests go upstream uncached.
                prepared = cache._prepare(key[0], namespace, key[1])
                if prepared is None:
                    key = None
            except (TypeError, ValueError):
                key = None  # not a request the cache can key: forwarded as it is
        if key is not None and prepared is not None and "no-cache" not in control:
            hit = await cache._alookup_prepared(prepared)
            if hit is not None:
                completion = fresh(hit.response)
                headers = {"X-Bsc-Cache": "hit", "X-Bsc-Similarity": f"{hit.similarity:.4f}"}
                metrics.done("hit", started)
                if stream:
                    chunks = chunks_from_completion(completion, include_usage=include_usage)
                    return Response(_sse(chunks), 200, headers=headers, media_type="text/event-stream")
                return JSONResponse(completion, headers=headers)
        result = "miss" if key is not None else "bypass"
        response = await send_upstream(request, "/chat/completions", body, stream)
        if not isinstance(response, httpx.Response):
            metrics.done(result, started)
            response.headers["X-Bsc-Cache"] = result
            return response

        async def store(completion: Mapping[str, Any]) -> None:
            if key is None:
                return
            prompt, scope = key
            try:
                usage = usable_usage(completion.get("usage"))
                await cache.astore(prompt, dict(completion), namespace=namespace, ttl=ttl, usage=usage, **scope)
                metrics.stored.inc()
            except Exception as err:  # a good answer is still delivered when it cannot be stored
                logger.warning("bsc proxy: answer not cached: %s", err)

        if not stream or response.status_code != 200:
            try:
                content = await response.aread()
            except httpx.HTTPError:
                metrics.upstream_errors.labels("broken").inc()
                metrics.done(result, started)
                return _error(502, "the upstream API broke off its answer", "upstream_unreachable")
            finally:
                await response.aclose()
            if response.status_code == 200 and key is not None:
                try:
                    answer: Any = json.loads(content)
                except ValueError:
                    answer = None
                if isinstance(answer, dict) and answer.get("choices"):
                    await store(answer)
            metrics.done(result, started)
            return passed_back(response, content, **{"X-Bsc-Cache": result})

        async def relay() -> AsyncIterator[bytes]:
            """Passes the upstream's events through as they come and keeps their data. The answer
            is stored when the upstream sends ``[DONE]`` with every choice finished, before that
            last event is passed on: a client stops reading at ``[DONE]`` and its disconnect
            would cancel anything after it. (The store is shielded from that cancellation.)"""
            seen: list[dict[str, Any]] = []
            pending = b""
            done = False
            try:
                async for block in response.aiter_bytes():  # decoded, if the upstream compressed it
                    if key is not None and not done:
                        pending += block
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            if not line.startswith(b"data:"):
                                continue
                            data = line[5:].strip()
                            if data == b"[DONE]":
                                done = True
                            elif data:
                                with contextlib.suppress(ValueError):
                                    seen.append(json.loads(data))
                        if done:
                            completion = completion_from_chunks(seen)
                            if completion is not None:
                                await _shielded(store(completion))
                    yield block
            finally:
                await response.aclose()

        metrics.done(result, started)
        headers = {**kept(response), "X-Bsc-Cache": result, "Cache-Control": "no-cache"}
        media = response.headers.get("content-type", "text/event-stream")
        return StreamingResponse(relay(), 200, headers=headers, media_type=media)

    async def embeddings(request: Request) -> Response:
        response = await send_upstream(request, "/embeddings", await request.body(), stream=False)
        if not isinstance(response, httpx.Response):
            return response
        content = await response.aread()
        await response.aclose()
        return passed_back(response, content)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "entries": len(cache)})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.cache = cache
    app.state.metrics = metrics
    return app
