"""The proxy's surface beyond the cached chat route: pass-through routes, the Responses API,
the embeddings cache, per-request controls, and ``bsc serve``/``bsc inspect`` as a user runs
them. Real servers on 127.0.0.1 (the fake upstream and the proxy), driven by the real ``openai``
SDK and httpx."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bsc import SemanticCache, policy
from bsc._responses import events_from_response, sse
from bsc.cli import main as cli_main
from bsc.server import create_app
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"  # similarity ~0.91 with WordEmbedder
FARTHER = "Tell me the capital of France"  # similarity ~0.71: under the 0.8 threshold
UNRELATED = "How do I bake sourdough bread at home?"
KEY = "sk-test-surface-0123456789"
SUBPROCESS_TIMEOUT = 60


# -- fixtures and helpers -----------------------------------------------------------------------


class _Counting:
    """An ASGI wrapper counting the requests an app gets, by (method, path)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: Counter[tuple[str, str]] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen[(scope["method"], scope["path"])] += 1
        await self.app(scope, receive, send)


@dataclass
class Upstream:
    fake: FakeChatUpstream
    counts: Counter[tuple[str, str]]
    url: str  # the base URL, ending in /v1


@dataclass
class Proxy:
    url: str  # the server, without /v1
    cache: SemanticCache
    upstream: Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    fake = FakeChatUpstream()
    counting = _Counting(fake.app)
    with ServerThread(counting) as server:
        yield Upstream(fake, counting.seen, server.url + "/v1")


@contextlib.contextmanager
def running_proxy(up: Upstream, cache: SemanticCache | None = None, **kwargs: Any) -> Iterator[Proxy]:
    cache = cache if cache is not None else SemanticCache(WordEmbedder(), similarity_threshold=0.8)
    with ServerThread(create_app(cache, up.url, timeout=5.0, **kwargs)) as server:
        yield Proxy(server.url, cache, up)


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[Proxy]:
    with running_proxy(upstream) as p:
        yield p


def sdk(url: str, key: str = KEY, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, default_headers=headers or None)


def key_space(key: str = KEY) -> str:
    """The namespace the proxy keeps a key's entries in (docs/PROXY.md, the trust model)."""
    return "key-" + hashlib.sha256(f"Bearer {key}".encode()).hexdigest()[:24]


def stored_id(cache: SemanticCache, api: policy.API, body: dict[str, Any], key: str = KEY) -> int:
    """The id of the entry that answers ``body`` (``cache.lookup(...).id``)."""
    request = policy.parse_request(api, body)
    assert request.prompt is not None and request.scope is not None, request.bypass
    hit = cache.lookup(request.prompt, namespace=key_space(key), **request.scope)
    assert hit is not None
    return hit.id


def chat(c: openai.OpenAI, content: str, **kwargs: Any) -> Any:
    return c.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "m"), messages=[{"role": "user", "content": content}], **kwargs
    )


def chat_text(raw: Any) -> str:
    return raw.parse().choices[0].message.content  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def chat_body(content: str, model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def not_a_hit(response: Any) -> bool:
    return response.headers.get("x-bsc-cache") != "hit"


# -- 1. pass-through ------------------------------------------------------------------------


def test_models_completions_files_and_speech_pass_through_never_cached(proxy: Proxy) -> None:
    fake, c = proxy.upstream.fake, sdk(proxy.url)
    for round_ in (1, 2):
        raw = c.models.with_raw_response.list()
        assert not_a_hit(raw)
        assert [m.id for m in raw.parse().data] == ["fake-model", "fake-embedding"]

        raw = c.completions.with_raw_response.create(model="m", prompt=Q)
        assert not_a_hit(raw) and raw.parse().choices[0].text == f"echo: {Q}"

        upload = os.urandom(50_000) + b"\r\n--not-a-boundary\r\n"
        raw = c.files.with_raw_response.create(file=("batch.jsonl", upload), purpose="batch")
        assert not_a_hit(raw)
        uploaded = raw.parse()
        assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("batch.jsonl", len(upload), "batch")
        assert uploaded.model_extra is not None and uploaded.model_extra["sha256"] == hashlib.sha256(upload).hexdigest()

        with c.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=Q) as speech:
            assert not_a_hit(speech) and speech.headers["content-type"] == "audio/mpeg"
            pieces = list(speech.iter_bytes())
        assert b"".join(pieces) == FakeChatUpstream.SPEECH_BYTES
        assert fake.passthrough_requests == 4 * round_  # asked upstream every time
    counts = proxy.upstream.counts
    assert counts["GET", "/v1/models"] == counts["POST", "/v1/completions"] == 2
    assert counts["POST", "/v1/files"] == counts["POST", "/v1/audio/speech"] == 2
    assert len(proxy.cache) == 0 and fake.requests == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET"])
def test_the_echo_route_gets_method_query_headers_and_body_unchanged(proxy: Proxy, method: str) -> None:
    body = b"" if method == "GET" else os.urandom(300_000)  # larger than any one read
    query = "a=1&b=%20x&b=y&flag&q=%E2%9C%93&empty="
    headers = {
        "Authorization": f"Bearer {KEY}",
        "X-Custom-Thing": "Some  Value, with; odd=chars",
        "X-Request-Id": "req-123",
        "Accept": "application/x-test",
        "OpenAI-Organization": "org-abc",
        "Content-Type": "application/octet-stream",
    }
    for attempt in (1, 2):
        response = httpx.request(method, f"{proxy.url}/v1/echo/items/42?{query}", headers=headers, content=body or None)
        assert response.status_code == 200 and not_a_hit(response)
        echo = response.json()
        assert echo["method"] == method and echo["path"] == "/v1/echo/items/42" and echo["query"] == query
        seen = echo["headers"]
        for name, value in headers.items():
            assert seen[name.lower()] == value, name
        assert echo["body_size"] == len(body) and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert proxy.upstream.fake.passthrough_requests == attempt  # never cached
    assert len(proxy.cache) == 0


def test_a_pass_through_body_keeps_its_content_length(proxy: Proxy) -> None:
    """A body of known length reaches the upstream with that Content-Length, not re-framed as
    chunked (some upstreams refuse chunked uploads with 411)."""
    body = os.urandom(10_000)
    echo = httpx.put(f"{proxy.url}/v1/echo/upload", content=body).json()
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["headers"].get("content-length") == str(len(body))
    assert "transfer-encoding" not in echo["headers"]


def test_a_percent_encoded_path_is_passed_through_as_sent(proxy: Proxy) -> None:
    echo = httpx.get(f"{proxy.url}/v1/echo/files/a%2Fb%20c").json()
    assert echo["raw_path"] == "/v1/echo/files/a%2Fb%20c"


def test_hop_by_hop_and_bsc_headers_are_not_forwarded(proxy: Proxy) -> None:
    headers = {
        "Connection": "keep-alive, X-Hop-Listed",
        "X-Hop-Listed": "drop me",
        "Keep-Alive": "timeout=5, max=100",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Upgrade": "h2c",
        "Proxy-Connection": "keep-alive",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "X-Bsc-Namespace": "team-a",
        "X-Bsc-Admin-Token": "a-secret-admin-token-0123",
        "Cache-Control": "no-store",
        "X-End-To-End": "kept",
    }
    response = httpx.get(f"{proxy.url}/v1/echo/hop", headers=headers)
    assert response.status_code == 200
    seen = response.json()["headers"]
    assert seen["x-end-to-end"] == "kept"
    for name in ("keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authorization"):
        assert name not in seen, name
    for name in ("x-bsc-namespace", "x-bsc-admin-token", "cache-control"):
        assert name not in seen, name
    assert "x-hop-listed" not in seen.get("connection", "").lower()
    assert "x-hop-listed" not in seen  # named in Connection: hop-by-hop (RFC 9110 7.6.1)


def test_hop_by_hop_answer_headers_are_not_passed_back() -> None:
    async def models(request: Request) -> Response:
        headers = {"connection": "x-answer-hop", "x-answer-hop": "1", "keep-alive": "timeout=5", "x-kept": "yes"}
        return Response(b'{"object": "list", "data": []}', headers=headers, media_type="application/json")

    cache = SemanticCache(WordEmbedder())
    answering = Starlette(routes=[Route("/v1/models", models, methods=["GET"])])
    with ServerThread(answering) as up, ServerThread(create_app(cache, up.url + "/v1")) as px:
        response = httpx.get(px.url + "/v1/models")
    assert response.status_code == 200 and response.json() == {"object": "list", "data": []}
    assert response.headers["x-kept"] == "yes" and "keep-alive" not in response.headers
    assert "x-answer-hop" not in response.headers  # named in the upstream's Connection header


def test_pass_through_answers_carry_one_date_and_server_header(proxy: Proxy) -> None:
    response = httpx.get(f"{proxy.url}/v1/models")
    assert response.status_code == 200
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("server")) <= 1


def _gzip_upstream(payload: bytes) -> Starlette:
    zipped = gzip.compress(payload)

    async def whole(request: Request) -> Response:
        headers = {"content-encoding": "gzip", "content-type": "application/json", "x-upstream": "zipped"}
        return Response(zipped, headers=headers)

    async def streamed(request: Request) -> Response:
        async def pieces() -> Any:
            for start in range(0, len(zipped), 1000):
                yield zipped[start : start + 1000]
                await asyncio.sleep(0)

        return StreamingResponse(pieces(), headers={"content-encoding": "gzip"}, media_type="application/json")

    return Starlette(
        routes=[Route("/v1/models", whole, methods=["GET"]), Route("/v1/echo/stream", streamed, methods=["POST"])]
    )


def test_a_gzip_upstream_answer_on_a_pass_through_route_arrives_intact() -> None:
    models = {
        "object": "list",
        "data": [{"id": f"model-{i}", "object": "model", "created": i, "owned_by": "x" * 50} for i in range(400)],
    }
    payload = json.dumps(models).encode()
    cache = SemanticCache(WordEmbedder())
    with ServerThread(_gzip_upstream(payload)) as up, ServerThread(create_app(cache, up.url + "/v1")) as px:
        listed = sdk(px.url).models.list()
        assert [m.id for m in listed.data] == [f"model-{i}" for i in range(400)]
        for method, route in (("GET", "/v1/models"), ("POST", "/v1/echo/stream")):
            response = httpx.request(method, px.url + route)
            assert response.status_code == 200, route
            assert response.headers["content-encoding"] == "gzip"
            assert response.content == payload  # decoded by httpx from the relayed gzip bytes
            with httpx.stream(method, px.url + route) as raw:
                compressed = b"".join(raw.iter_raw())
            assert gzip.decompress(compressed) == payload
        assert httpx.get(px.url + "/v1/models").headers["x-upstream"] == "zipped"
        assert httpx.get(px.url + "/v1/models", headers={"Accept-Encoding": "identity"}).content == payload


# -- 2. the Responses API -----------------------------------------------------------------------


def responses_body(text: str, **kwargs: Any) -> dict[str, Any]:
    return {"model": kwargs.pop("model", "m"), "input": text, **kwargs}


def test_responses_miss_then_a_paraphrase_hit(proxy: Proxy) -> None:
    c = sdk(proxy.url)
    first = c.responses.with_raw_response.create(model="m", input=Q)
    assert first.headers["x-bsc-cache"] == "miss" and "x-bsc-entry" not in first.headers
    assert first.parse().output_text == f"answer 1: {Q}"
    second = c.responses.with_raw_response.create(model="m", input=PARAPHRASE)
    assert second.headers["x-bsc-cache"] == "hit"
    assert 0.8 <= float(second.headers["x-bsc-similarity"]) < 1.0
    assert int(second.headers["x-bsc-entry"]) == stored_id(proxy.cache, "responses", responses_body(Q))
    assert second.parse().output_text == f"answer 1: {Q}"
    assert c.responses.create(model="m", input=Q).output_text == f"answer 1: {Q}"
    assert proxy.upstream.fake.requests == 1


def test_responses_streamed_miss_then_streamed_replay(proxy: Proxy) -> None:
    c = sdk(proxy.url)
    raw = c.responses.with_raw_response.create(model="m", input=Q, stream=True)
    assert raw.headers["x-bsc-cache"] == "miss"
    events = list(raw.parse())
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert events[-1].response.output_text == f"answer 1: {Q}"
    wait_for(lambda: len(proxy.cache) == 1)

    replay = c.responses.with_raw_response.create(model="m", input=PARAPHRASE, stream=True)
    assert replay.headers["x-bsc-cache"] == "hit"
    assert int(replay.headers["x-bsc-entry"]) == stored_id(proxy.cache, "responses", responses_body(Q))
    replayed = list(replay.parse())
    assert [e.type for e in replayed] == types
    deltas = "".join(e.delta for e in replayed if e.type == "response.output_text.delta")
    assert deltas == f"answer 1: {Q}"
    assert replayed[-1].response.output_text == f"answer 1: {Q}"
    assert replayed[-1].response.status == "completed"
    # The SDK's own stream helper reads the replay, and a non-streamed request hits the same entry.
    with c.responses.stream(model="m", input=PARAPHRASE) as stream:
        assert stream.get_final_response().output_text == f"answer 1: {Q}"
    assert c.responses.create(model="m", input=PARAPHRASE).output_text == f"answer 1: {Q}"
    assert proxy.upstream.fake.requests == 1


def _slow_responses_upstream(answer: dict[str, Any], *, complete: bool) -> Starlette:
    """A Responses upstream that streams ``answer``'s events and pauses before the last one,
    ``response.completed`` (``complete=False``: after the pause the stream ends without it)."""
    events = sse(events_from_response(answer)).split(b"\n\n")[:-1]
    assert b"response.completed" in events[-1]

    async def respond(request: Request) -> Response:
        async def pieces() -> Any:
            for event in events[:-1]:
                yield event + b"\n\n"
            await asyncio.sleep(0.6)
            if complete:
                yield events[-1] + b"\n\n"

        return StreamingResponse(pieces(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/responses", respond, methods=["POST"])])


def _a_response(text: str) -> dict[str, Any]:
    return {
        "id": "resp_slow",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "m",
        "output": [
            {
                "id": "msg_slow",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


def test_a_responses_stream_is_stored_once_complete_and_only_then() -> None:
    body = {**responses_body(Q), "stream": True}
    for complete in (False, True):
        cache = SemanticCache(WordEmbedder())
        upstream = _slow_responses_upstream(_a_response("Paris."), complete=complete)
        with ServerThread(upstream) as up, ServerThread(create_app(cache, up.url + "/v1")) as px:
            with httpx.stream("POST", px.url + "/v1/responses", json=body) as response:
                assert response.headers["x-bsc-cache"] == "miss"
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith("data:") and "response.output_item.done" in line:
                        break  # every event but response.completed has been relayed
                time.sleep(0.2)
                assert len(cache) == 0  # not before the stream has completed
                rest = list(lines)
            assert any("response.completed" in line for line in rest) is complete
            if complete:
                wait_for(lambda cache=cache: len(cache) == 1)
                assert "bsc_proxy_stored_total 1.0" in httpx.get(px.url + "/metrics").text  # stored once
                hit = httpx.post(px.url + "/v1/responses", json=responses_body(PARAPHRASE))
                assert hit.headers["x-bsc-cache"] == "hit"
                assert hit.json()["output"][0]["content"][0]["text"] == "Paris."
            else:
                time.sleep(0.1)
                assert len(cache) == 0  # an incomplete stream is never stored


def test_chat_and_responses_entries_never_answer_each_other(proxy: Proxy) -> None:
    c = sdk(proxy.url)
    assert chat(c, Q).headers["x-bsc-cache"] == "miss"
    assert c.responses.with_raw_response.create(model="m", input=Q).headers["x-bsc-cache"] == "miss"
    chat_hit = chat(c, Q)
    responses_hit = c.responses.with_raw_response.create(model="m", input=Q)
    assert chat_hit.headers["x-bsc-cache"] == responses_hit.headers["x-bsc-cache"] == "hit"
    assert chat_text(chat_hit) == f"answer 1: {Q}"
    assert responses_hit.parse().output_text == f"answer 2: {Q}"
    assert chat_hit.headers["x-bsc-entry"] != responses_hit.headers["x-bsc-entry"]
    assert int(chat_hit.headers["x-bsc-entry"]) == stored_id(proxy.cache, "chat", chat_body(Q))
    assert int(responses_hit.headers["x-bsc-entry"]) == stored_id(proxy.cache, "responses", responses_body(Q))
    assert proxy.upstream.fake.requests == 2


IMAGE = "data:image/png;base64," + (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": Q, "previous_response_id": "resp_earlier"},
        {"input": Q, "background": True},
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": Q}, {"type": "input_image", "image_url": IMAGE}],
                }
            ]
        },
    ],
    ids=["previous_response_id", "background", "input_image"],
)
def test_responses_that_depend_on_unseen_state_bypass(proxy: Proxy, kwargs: dict[str, Any]) -> None:
    c = sdk(proxy.url)
    for n in (1, 2):
        raw = c.responses.with_raw_response.create(model="m", **kwargs)
        assert raw.headers["x-bsc-cache"] == "bypass"
        assert raw.parse().output_text.startswith(f"answer {n}: ")
        assert proxy.upstream.fake.requests == n
    assert len(proxy.cache) == 0


def test_responses_with_other_instructions_tools_model_or_temperature_miss(proxy: Proxy) -> None:
    c = sdk(proxy.url)
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}, "strict": False}
    base: dict[str, Any] = {"model": "m", "instructions": "Be brief.", "tools": [tool], "temperature": 0.2}
    assert c.responses.with_raw_response.create(input=Q, **base).headers["x-bsc-cache"] == "miss"
    assert c.responses.with_raw_response.create(input=PARAPHRASE, **base).headers["x-bsc-cache"] == "hit"
    other_tool = {**tool, "name": "search"}
    changes = [{"instructions": "Be verbose."}, {"tools": [other_tool]}, {"model": "m2"}, {"temperature": 0.7}]
    for change in changes:
        raw = c.responses.with_raw_response.create(input=Q, **{**base, **change})
        assert raw.headers["x-bsc-cache"] == "miss", change
    assert proxy.upstream.fake.requests == 1 + len(changes)


# -- 3. embeddings ----------------------------------------------------------------------------


def embed(url: str, body: dict[str, Any], key: str = KEY, **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}", **headers})


EMBEDDINGS_POST = ("POST", "/v1/embeddings")


def test_an_identical_embeddings_request_is_a_byte_identical_hit(proxy: Proxy) -> None:
    counts = proxy.upstream.counts
    body = {"model": "e", "input": ["abc", "hello"], "encoding_format": "float"}
    first = embed(proxy.url, body)
    assert first.status_code == 200 and first.headers["x-bsc-cache"] == "miss"
    second = embed(proxy.url, body)
    assert second.headers["x-bsc-cache"] == "hit" and second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert counts[EMBEDDINGS_POST] == 1  # not asked again
    sdk_answer = sdk(proxy.url).embeddings.create(model="e", input=["abc", "hello"], encoding_format="float")
    assert [d.embedding for d in sdk_answer.data] == [[3.0, 1.0], [5.0, 1.0]]
    assert counts[EMBEDDINGS_POST] == 1  # the SDK's request is the same request
    variants = [
        {**body, "model": "e2"},
        {**body, "input": ["abc", "hello!"]},
        {**body, "dimensions": 2},
        {**body, "encoding_format": "base64"},
    ]
    for n, variant in enumerate(variants, start=2):
        response = embed(proxy.url, variant)
        assert response.headers["x-bsc-cache"] == "miss", variant
        assert counts[EMBEDDINGS_POST] == n
    assert embed(proxy.url, body, key="sk-another-key").headers["x-bsc-cache"] == "miss"
    assert counts[EMBEDDINGS_POST] == 2 + len(variants)
    assert embed(proxy.url, body).headers["x-bsc-cache"] == "hit"


def test_embeddings_cache_off_never_hits(upstream: Upstream) -> None:
    body = {"model": "e", "input": "abc"}
    with running_proxy(upstream, cache_embeddings=False) as px:
        for n in (1, 2, 3):
            response = embed(px.url, body)
            assert response.status_code == 200 and not_a_hit(response)
            assert upstream.counts[EMBEDDINGS_POST] == n


def test_embeddings_with_no_store_bypass(proxy: Proxy) -> None:
    body = {"model": "e", "input": "abc"}
    counts = proxy.upstream.counts
    for n in (1, 2):
        response = embed(proxy.url, body, **{"Cache-Control": "no-store"})
        assert response.headers["x-bsc-cache"] == "bypass"
        assert counts[EMBEDDINGS_POST] == n
    assert embed(proxy.url, body).headers["x-bsc-cache"] == "miss"  # no-store stored nothing
    assert embed(proxy.url, body, **{"Cache-Control": "no-store"}).headers["x-bsc-cache"] == "bypass"
    assert counts[EMBEDDINGS_POST] == 4


# -- 4. per-request controls ------------------------------------------------------------------


def test_cache_control_max_age(proxy: Proxy) -> None:
    c = sdk(proxy.url)
    assert chat(c, Q).headers["x-bsc-cache"] == "miss"
    time.sleep(1.2)
    fresh_enough = chat(sdk(proxy.url, **{"Cache-Control": "max-age=60"}), Q)
    assert fresh_enough.headers["x-bsc-cache"] == "hit" and chat_text(fresh_enough) == f"answer 1: {Q}"
    too_old = chat(sdk(proxy.url, **{"Cache-Control": "max-age=1"}), PARAPHRASE)
    assert too_old.headers["x-bsc-cache"] == "miss" and chat_text(too_old) == f"answer 2: {PARAPHRASE}"
    bad = httpx.post(proxy.url + "/v1/chat/completions", json=chat_body(Q), headers={"Cache-Control": "max-age=abc"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_header"
    assert proxy.upstream.fake.requests == 2


def test_a_stricter_threshold_header(proxy: Proxy) -> None:
    c, strict = sdk(proxy.url), sdk(proxy.url, **{"X-Bsc-Threshold": "0.999"})
    assert chat(c, Q).headers["x-bsc-cache"] == "miss"
    entry = stored_id(proxy.cache, "chat", chat_body(Q))
    exact = chat(strict, Q)
    assert exact.headers["x-bsc-cache"] == "hit" and int(exact.headers["x-bsc-entry"]) == entry
    assert float(exact.headers["x-bsc-similarity"]) == 1.0
    assert chat(strict, PARAPHRASE).headers["x-bsc-cache"] == "miss"
    assert chat(c, "what IS the capital city of France ??").headers["x-bsc-cache"] == "hit"  # stored by the miss
    lax = httpx.post(proxy.url + "/v1/chat/completions", json=chat_body(Q), headers={"X-Bsc-Threshold": "0.5"})
    assert lax.status_code == 400 and lax.json()["error"]["code"] == "invalid_threshold"
    assert proxy.upstream.fake.requests == 2


def test_a_laxer_threshold_header_when_the_server_allows_it(upstream: Upstream) -> None:
    with running_proxy(upstream, allow_lax_threshold=True) as px:
        c = sdk(px.url)
        assert chat(c, Q).headers["x-bsc-cache"] == "miss"
        lax = chat(sdk(px.url, **{"X-Bsc-Threshold": "0.6"}), FARTHER)
        assert lax.headers["x-bsc-cache"] == "hit" and chat_text(lax) == f"answer 1: {Q}"
        assert 0.6 <= float(lax.headers["x-bsc-similarity"]) < 0.8
        assert int(lax.headers["x-bsc-entry"]) == stored_id(px.cache, "chat", chat_body(Q))
        assert chat(c, FARTHER).headers["x-bsc-cache"] == "miss"  # not at the server's own threshold
        assert upstream.fake.requests == 2


def test_every_hit_names_its_entry(proxy: Proxy) -> None:
    c = sdk(proxy.url)
    chat(c, Q)
    c.responses.create(model="m", input=UNRELATED)
    chat_id = stored_id(proxy.cache, "chat", chat_body(Q))
    responses_id = stored_id(proxy.cache, "responses", responses_body(UNRELATED))
    hits = [
        (chat(c, Q), chat_id),
        (chat(c, PARAPHRASE), chat_id),
        (chat(c, PARAPHRASE, stream=True), chat_id),
        (c.responses.with_raw_response.create(model="m", input=UNRELATED), responses_id),
        (c.responses.with_raw_response.create(model="m", input=UNRELATED, stream=True), responses_id),
    ]
    for raw, entry in hits:
        assert raw.headers["x-bsc-cache"] == "hit" and int(raw.headers["x-bsc-entry"]) == entry
    assert proxy.upstream.fake.requests == 2


# -- 5. bsc serve: start-up and shutdown ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bsc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bsc", "serve", *args]


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "under-a-file"])
def test_serve_refuses_a_persist_path_it_cannot_write(tmp_path: Path, where: str) -> None:
    (tmp_path / "regular").write_text("x")
    path = {
        "missing-dir": tmp_path / "nowhere" / "c.bsc",
        "a-directory": tmp_path,
        "under-a-file": tmp_path / "regular" / "c.bsc",
    }[where]
    port = free_port()
    done = subprocess.run(
        bsc_command("--upstream", "http://127.0.0.1:1/v1", "--port", str(port), "--persist", str(path)),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsc serve: error:") and str(path) in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "bsc serve: http" not in done.stdout
    assert not path.is_file()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--port", "99999"], "--port"),
        (["--port", "0"], "--port"),
        (["--port", "abc"], "--port"),
        (["--host", "bad host!"], "--host"),
        (["--admin-token", "short"], "--admin-token"),
    ],
)
def test_serve_refuses_bad_arguments(capsys: pytest.CaptureFixture[str], args: list[str], option: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["serve", "--upstream", "http://127.0.0.1:1/v1", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


def start_serve(tmp_path: Path, upstream_url: str, persist: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = bsc_command("--upstream", upstream_url, "--port", str(port), "--persist", str(persist))
    with log.open("wb") as out:
        server = subprocess.Popen([*command, "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            pytest.fail(f"bsc serve did not start: {log.read_text()}")
        time.sleep(0.1)


def test_serve_exits_nonzero_when_the_final_save_fails_and_zero_after_a_clean_shutdown(
    tmp_path: Path, upstream: Upstream
) -> None:
    doomed_dir, kept_dir = tmp_path / "doomed", tmp_path / "kept"
    doomed_dir.mkdir()
    kept_dir.mkdir()
    doomed, kept = doomed_dir / "c.bsc", kept_dir / "c.bsc"
    doomed_log, kept_log = tmp_path / "doomed.log", tmp_path / "kept.log"
    servers = []
    try:
        for persist, log in ((doomed, doomed_log), (kept, kept_log)):
            servers.append(start_serve(tmp_path, upstream.url, persist, log))
        for _, url in servers:
            answer = sdk(url).chat.completions.create(model="m", messages=[{"role": "user", "content": Q}])
            assert answer.choices[0].message.content is not None
            assert httpx.get(url + "/healthz").json()["entries"] == 1
        shutil.rmtree(doomed_dir)
        for server, _ in servers:
            server.send_signal(signal.SIGTERM)
        codes = [server.wait(timeout=SUBPROCESS_TIMEOUT) for server, _ in servers]
    finally:
        for server, _ in servers:
            if server.poll() is None:
                server.kill()
                server.wait()
    doomed_output, kept_output = doomed_log.read_text(), kept_log.read_text()
    assert codes[0] != 0, doomed_output
    assert str(doomed) in doomed_output and "Traceback" not in doomed_output
    assert codes[1] == 0, kept_output
    assert kept.is_file() and "error" not in kept_output.lower()
    assert cli_main(["inspect", str(kept), "--json"]) == 0


def test_metrics_count_failed_background_saves(tmp_path: Path, upstream: Upstream) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    cache = SemanticCache(WordEmbedder(), persist_path=folder / "c.bsc", persist_interval=0.2)
    try:
        with running_proxy(upstream, cache) as px:
            assert "bsc_cache_save_errors 0.0" in httpx.get(px.url + "/metrics").text
            shutil.rmtree(folder)
            chat(sdk(px.url), Q)

            def failed() -> bool:
                for line in httpx.get(px.url + "/metrics").text.splitlines():
                    if line.startswith("bsc_cache_save_errors "):
                        return float(line.split()[1]) >= 1
                raise AssertionError("no bsc_cache_save_errors in /metrics")

            wait_for(failed, timeout=10)
    finally:
        folder.mkdir(exist_ok=True)
        cache.close()  # saves to the directory made again


def test_one_failed_final_save_counts_once(tmp_path: Path, upstream: Upstream) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    cache = SemanticCache(WordEmbedder(), persist_path=folder / "c.bsc", persist_every=None, persist_interval=None)
    app = create_app(cache, upstream.url, close_cache=True)
    with ServerThread(app) as server:
        chat(sdk(server.url), Q)
        shutil.rmtree(folder)
    # The server's shutdown made the one final save, which failed.
    assert app.state.proxy.final_save_failed >= 1
    metrics = generate_latest(app.state.metrics.registry).decode()
    assert "bsc_cache_save_errors 1.0" in metrics


# -- 6. bsc inspect -----------------------------------------------------------------------------


def test_inspect_prints_each_answer_text(
    tmp_path: Path, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "answers.bsc"
    cache = SemanticCache(WordEmbedder(), persist_path=path)
    with running_proxy(upstream, cache) as px:
        c = sdk(px.url)
        assert chat_text(chat(c, Q)) == f"answer 1: {Q}"
        assert c.responses.create(model="m", input="Bake bread?").output_text == "answer 2: Bake bread?"
    cache.close()
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"-> 'answer 1: {Q}'" in out
    assert "-> 'answer 2: Bake bread?'" in out
    for blob in ("chatcmpl", "choices", "resp_fake", "output_text", "{"):
        assert blob not in out, blob
    assert "2 entries" in out


# -- 7. import hints ----------------------------------------------------------------------------


def test_serve_without_the_server_extra_prints_how_to_install_it() -> None:
    code = textwrap.dedent(
        """
        import sys

        class NoUvicorn:
            def find_spec(self, name, path=None, target=None):
                if name == "uvicorn" or name.startswith("uvicorn."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoUvicorn())
        from bsc.cli import main

        sys.exit(main(["serve", "--upstream", "http://127.0.0.1:1/v1"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert 'pip install "bsc[server]"' in done.stderr and "uv " in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
