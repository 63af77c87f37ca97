"""Edges of the proxy found in review: paths that would leave the upstream, upstream answers of
the wrong shape, streams the upstream breaks off, stateful Responses requests, duplicate
headers and JSON keys, and admin deletes that reach the embeddings cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bsc import SemanticCache, policy
from bsc.server import create_app
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

Q = "What is the capital of France?"
TOKEN = "admin-token-0123456789"


def chat(content: str = Q, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def raw_request(url: str, request_line: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.fixture(scope="module")
def seen_paths() -> Iterator[tuple[list[str], str]]:
    """An upstream that records every path it is asked for (its base path is /base/v1)."""
    paths: list[str] = []

    async def anything(request: Request) -> Response:
        paths.append(request.scope["raw_path"].decode())
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])
    with ServerThread(app) as server:
        yield paths, server.url


def test_a_pass_through_path_never_leaves_the_upstream_base(seen_paths: tuple[list[str], str]) -> None:
    paths, upstream = seen_paths
    cache = SemanticCache(WordEmbedder())
    with ServerThread(create_app(cache, upstream + "/base/v1")) as proxy:
        for line in [
            "GET /v1/../../secret HTTP/1.1",
            "GET /v1/%2e%2e/secret HTTP/1.1",
            "GET /v1/a/..%2F..%2F..%2Fsecret HTTP/1.1",
            "GET /v1/./models HTTP/1.1",
        ]:
            paths.clear()
            answer = raw_request(proxy.url, line)
            assert answer.split(b" ", 2)[1] in (b"400", b"404"), (line, answer[:200])
            assert paths == [], line  # nothing reached the upstream
        paths.clear()
        answer = raw_request(proxy.url, "GET /v1/files/a%2Fb?x=1 HTTP/1.1")
        assert answer.startswith(b"HTTP/1.1 200") and paths == ["/base/v1/files/a%2Fb"]


def test_a_pass_through_path_cannot_name_another_host(seen_paths: tuple[list[str], str]) -> None:
    paths, upstream = seen_paths
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = SemanticCache(WordEmbedder())
    # An upstream without a path: the raw path is what follows its host.
    with ServerThread(create_app(cache, f"http://127.0.0.1:{port}")) as proxy:
        host = upstream.removeprefix("http://")
        paths.clear()
        answer = raw_request(proxy.url, f"GET /v1%2F@{host}/internal HTTP/1.1")
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert paths == []


@pytest.fixture
def odd_upstream() -> Iterator[tuple[dict[str, Any], str]]:
    """An upstream whose answers a test sets: ``state["json"]`` for plain answers,
    ``state["events"]`` (raw bytes) for streams, ``state["cut"]`` to break a stream off."""
    state: dict[str, Any] = {"json": None, "events": b"", "cut": False, "asked": 0}

    async def answer(request: Request) -> Response:
        state["asked"] += 1
        body = json.loads(await request.body())
        if not body.get("stream"):
            return JSONResponse(state["json"])

        async def events() -> Any:
            yield state["events"]
            if state["cut"]:
                raise RuntimeError("upstream died")  # uvicorn aborts the connection mid-body

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", answer, methods=["POST"]),
            Route("/v1/responses", answer, methods=["POST"]),
        ]
    )
    with ServerThread(app) as server:
        yield state, server.url


def test_answers_of_the_wrong_shape_are_not_stored(odd_upstream: tuple[dict[str, Any], str]) -> None:
    state, upstream = odd_upstream
    cache = SemanticCache(WordEmbedder())
    with ServerThread(create_app(cache, upstream + "/v1")) as proxy:
        for route, bad in [
            ("/v1/chat/completions", {"object": "chat.completion", "choices": "abc"}),
            ("/v1/chat/completions", {"object": "chat.completion", "choices": [{"message": "x"}]}),
            ("/v1/responses", {"object": "response", "status": "completed", "output": ["x"]}),
        ]:
            state["json"] = bad
            body = chat() if route.endswith("completions") else {"model": "m", "input": Q}
            assert httpx.post(proxy.url + route, json=body).status_code == 200
            assert httpx.post(proxy.url + route, json={**body, "stream": True}).status_code == 200
        assert len(cache) == 0
    assert policy.storable("chat", {"choices": [{"message": {"content": 3}}]}) is None


def test_an_entry_that_cannot_be_replayed_is_a_miss(odd_upstream: tuple[dict[str, Any], str]) -> None:
    state, upstream = odd_upstream
    cache = SemanticCache(WordEmbedder())
    request = policy.parse_request("chat", chat())
    prepared = policy.prepare(cache, request, "anonymous")
    assert isinstance(prepared, policy.Prepared)
    cache.store(
        prepared.prompt, {"choices": "abc"}, namespace="anonymous", **prepared.scope
    )  # stored by another program
    state["events"] = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    with ServerThread(create_app(cache, upstream + "/v1")) as proxy:
        answer = httpx.post(proxy.url + "/v1/chat/completions", json=chat(stream=True))
    assert answer.status_code == 200 and answer.headers["x-bsc-cache"] == "miss" and b"hi" in answer.content


def test_malformed_stream_events_are_relayed_and_not_stored(odd_upstream: tuple[dict[str, Any], str]) -> None:
    state, upstream = odd_upstream
    cache = SemanticCache(WordEmbedder())
    with ServerThread(create_app(cache, upstream + "/v1")) as proxy:
        for route, events in [
            ("/v1/responses", b'data: {"type":["x"]}\n\ndata: {"type":"response.completed","response":[1]}\n\n'),
            (
                "/v1/chat/completions",
                b'data: {"choices":[{"index":[1]}]}\n\ndata: {"choices":["x"]}\n\ndata: [DONE]\n\n',
            ),
        ]:
            state["events"] = events
            body = {"model": "m", "input": Q, "stream": True} if "responses" in route else chat(stream=True)
            answer = httpx.post(proxy.url + route, json=body)
            assert answer.status_code == 200 and answer.content == events
    assert len(cache) == 0


def test_a_stream_the_upstream_breaks_off_ends_in_an_error_the_sdk_raises(
    odd_upstream: tuple[dict[str, Any], str],
) -> None:
    state, upstream = odd_upstream
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": {"content": "half"}}]
    state["events"] = f"data: {json.dumps(chunk)}\n\n".encode()
    state["cut"] = True
    cache = SemanticCache(WordEmbedder())
    with ServerThread(create_app(cache, upstream + "/v1")) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        stream = client.chat.completions.create(model="m", messages=chat()["messages"], stream=True)
        with pytest.raises(openai.APIError, match="broke off"):
            list(stream)
    assert len(cache) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": Q}]},
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]},
                {"role": "user", "content": Q},
            ],
        },
        {"model": "m", "input": Q, "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]},
        {"model": "m", "input": Q, "tools": [{"type": "mcp", "server_label": "x", "server_url": "http://x"}]},
        {"model": "m", "input": Q, "tools": [{"type": "code_interpreter", "container": "cntr_1"}]},
    ],
)
def test_responses_that_read_server_state_bypass(body: dict[str, Any]) -> None:
    fake = FakeChatUpstream()
    cache = SemanticCache(WordEmbedder())
    with ServerThread(fake.app) as up, ServerThread(create_app(cache, up.url + "/v1")) as proxy:
        for _ in range(2):
            answer = httpx.post(proxy.url + "/v1/responses", json=body)
            assert answer.status_code == 200 and answer.headers["x-bsc-cache"] == "bypass"
    assert fake.requests == 2 and len(cache) == 0


def test_duplicate_credentials_headers_and_keys_are_refused() -> None:
    fake = FakeChatUpstream()
    cache = SemanticCache(WordEmbedder())
    with ServerThread(fake.app) as up, ServerThread(create_app(cache, up.url + "/v1")) as proxy:
        url = proxy.url + "/v1/chat/completions"
        for headers in [
            [("Authorization", "Bearer victim"), ("Authorization", "Bearer attacker")],
            [("api-key", "a"), ("api-key", "b")],
            [("X-Bsc-Namespace", "a"), ("X-Bsc-Namespace", "b")],
            [("X-Bsc-TTL", "10"), ("X-Bsc-TTL", "20")],
        ]:
            answer = httpx.post(url, json=chat(), headers=headers)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "duplicate_header", headers
        repeated = b'{"model":"m","model":"other","messages":[{"role":"user","content":"hi"}]}'
        answer = httpx.post(url, content=repeated)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "duplicate_key"
        # Both credential headers: a space of its own, neither key's alone.
        both = {"Authorization": "Bearer k1", "api-key": "k2"}
        assert httpx.post(url, json=chat(), headers=both).headers["x-bsc-cache"] == "miss"
        assert httpx.post(url, json=chat(), headers={"Authorization": "Bearer k1"}).headers["x-bsc-cache"] == "miss"
        assert httpx.post(url, json=chat(), headers={"api-key": "k2"}).headers["x-bsc-cache"] == "miss"
        assert httpx.post(url, json=chat(), headers=both).headers["x-bsc-cache"] == "hit"
    assert fake.requests == 3


def test_deleting_a_namespace_drops_its_embeddings_answers() -> None:
    fake = FakeChatUpstream()
    cache = SemanticCache(WordEmbedder())
    with ServerThread(fake.app) as up, ServerThread(create_app(cache, up.url + "/v1", admin_token=TOKEN)) as proxy:
        body = {"model": "e", "input": "abc"}
        for ns, expected in [("team-a", "miss"), ("team-a", "hit"), ("team-b", "miss")]:
            got = httpx.post(proxy.url + "/v1/embeddings", json=body, headers={"X-Bsc-Namespace": ns})
            assert got.headers["x-bsc-cache"] == expected
        deleted = httpx.delete(proxy.url + "/admin/namespaces/anonymous:team-a", headers={"X-Bsc-Admin-Token": TOKEN})
        assert deleted.status_code == 200
        for ns, expected in [("team-a", "miss"), ("team-b", "hit")]:
            got = httpx.post(proxy.url + "/v1/embeddings", json=body, headers={"X-Bsc-Namespace": ns})
            assert got.headers["x-bsc-cache"] == expected, ns


def test_admin_token_env_without_the_variable_is_refused_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BSC_ADMIN_TOKEN"}
    command = [sys.executable, "-m", "bsc", "serve", "--upstream", "http://127.0.0.1:1/v1", "--admin-token", "env"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "BSC_ADMIN_TOKEN" in done.stderr
    assert done.stderr.count("\n") == 1


class FlakyEmbedder(WordEmbedder):
    """An embedding backend that goes down while ``down`` is set."""

    down = False

    def embed_texts(self, texts: list[str]) -> Any:
        if self.down:
            import bsc_backends

            raise bsc_backends.BackendUnavailableError("the embedding server did not answer")
        return super().embed_texts(texts)


def test_an_embedder_outage_degrades_to_the_upstream_not_to_a_500(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeChatUpstream()
    embedder = FlakyEmbedder()
    cache = SemanticCache(embedder)
    with (
        ServerThread(fake.app) as up,
        ServerThread(create_app(cache, up.url + "/v1", timeout=10.0)) as proxy,
        httpx.Client(base_url=proxy.url, timeout=30) as http,
    ):
        assert http.post("/v1/chat/completions", json=chat()).headers["x-bsc-cache"] == "miss"
        embedder.down = True
        paraphrase = http.post("/v1/chat/completions", json=chat(Q + " please"))
        assert paraphrase.status_code == 200 and paraphrase.headers["x-bsc-cache"] == "miss"
        assert "cache lookup failed, asking upstream" in caplog.text
        exact = http.post("/v1/chat/completions", json=chat())  # the exact path needs no embedding
        assert exact.headers["x-bsc-cache"] == "hit"
        embedder.down = False
        assert http.post("/v1/chat/completions", json=chat(Q + " please")).headers["x-bsc-cache"] == "hit"
