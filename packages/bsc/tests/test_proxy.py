"""The caching proxy, with real servers on 127.0.0.1: a fake OpenAI-compatible upstream and the
proxy itself (uvicorn), driven by the real ``openai`` SDK pointed at the proxy."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bsc import SemanticCache
from bsc.cli import main as cli_main
from bsc.semantic import describe_file
from bsc.server import create_app
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"
UNRELATED = "How do I bake sourdough bread at home?"
KEY = "sk-test-secret-0123456789"


@pytest.fixture
def upstream() -> Iterator[tuple[FakeChatUpstream, str]]:
    fake = FakeChatUpstream()
    with ServerThread(fake.app) as server:
        yield fake, server.url


@pytest.fixture
def proxy(upstream: tuple[FakeChatUpstream, str]) -> Iterator[tuple[str, SemanticCache]]:
    cache = SemanticCache(WordEmbedder(), similarity_threshold=0.8)
    with ServerThread(create_app(cache, upstream[1] + "/v1", timeout=1.0)) as server:
        yield server.url, cache


def client(url: str, key: str = KEY, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, default_headers=headers or None)


def ask(c: openai.OpenAI, content: str, **kwargs: Any) -> tuple[str, Any]:
    messages = kwargs.pop("messages", None) or [{"role": "user", "content": content}]
    raw = c.chat.completions.with_raw_response.create(model=kwargs.pop("model", "m"), messages=messages, **kwargs)
    return raw.headers.get("x-bsc-cache"), raw


def text(raw: Any) -> str:
    return raw.parse().choices[0].message.content  # type: ignore[no-any-return]


def test_a_paraphrase_hits_and_an_unrelated_prompt_misses(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    fake, _ = upstream
    c = client(proxy[0])
    state, raw = ask(c, Q)
    assert state == "miss" and text(raw) == f"answer 1: {Q}"
    state, raw = ask(c, PARAPHRASE)
    assert state == "hit" and text(raw) == f"answer 1: {Q}"
    assert 0.8 <= float(raw.headers["x-bsc-similarity"]) <= 1.0
    assert raw.parse().id.startswith("chatcmpl-bsc-")
    state, raw = ask(c, UNRELATED)
    assert state == "miss" and text(raw) == f"answer 2: {UNRELATED}"
    assert fake.requests == 2


def test_other_keys_namespaces_models_and_system_prompts_miss(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    url = proxy[0]
    ask(client(url), Q)
    assert ask(client(url), Q)[0] == "hit"
    assert ask(client(url, key="sk-other"), Q)[0] == "miss"  # another API key
    assert ask(client(url, **{"X-Bsc-Namespace": "team-a"}), Q)[0] == "miss"
    assert ask(client(url, **{"X-Bsc-Namespace": "team-a"}), Q)[0] == "hit"
    # A namespace lives within one API key: guessing its name gives another key nothing.
    assert ask(client(url, key="sk-third", **{"X-Bsc-Namespace": "team-a"}), Q)[0] == "miss"
    assert ask(client(url), Q, model="other-model")[0] == "miss"
    system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": Q}]
    assert ask(client(url), Q, messages=system)[0] == "miss"
    assert ask(client(url), Q, messages=system)[0] == "hit"
    bad = httpx.post(url + "/v1/chat/completions", json={}, headers={"X-Bsc-Namespace": "bad space"})
    assert bad.status_code == 400 and "X-Bsc-Namespace" in bad.json()["error"]["message"]


def test_shared_namespaces_span_api_keys(upstream: tuple[FakeChatUpstream, str]) -> None:
    cache = SemanticCache(WordEmbedder())
    with ServerThread(create_app(cache, upstream[1] + "/v1", shared_namespaces=True)) as server:
        assert ask(client(server.url, key="sk-1", **{"X-Bsc-Namespace": "team-a"}), Q)[0] == "miss"
        assert ask(client(server.url, key="sk-2", **{"X-Bsc-Namespace": "team-a"}), Q)[0] == "hit"
        assert ask(client(server.url, key="sk-2"), Q)[0] == "miss"  # without the header: per key


def test_requests_the_cache_cannot_take_go_upstream_uncached(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    url = proxy[0]
    for content in ["", "   ", [{"type": "image_url", "image_url": {"url": "data:x"}}], "x" * 100_001]:
        response = httpx.post(
            url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": content}]}
        )
        assert response.status_code == 200 and response.headers["x-bsc-cache"] == "bypass"
    odd = {"model": "m", "stream": True, "stream_options": "x", "messages": [{"role": "user", "content": Q}]}
    assert httpx.post(url + "/v1/chat/completions", json=odd).status_code == 200
    assert len(proxy[1]) <= 1


def test_a_stream_is_stored_when_complete_and_replayed(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    fake, _ = upstream
    c = client(proxy[0])
    stream = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": Q}], stream=True, stream_options={"include_usage": True}
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == f"answer 1: {Q}"
    deadline = time.monotonic() + 5
    while len(proxy[1]) == 0 and time.monotonic() < deadline:  # stored after the last event is sent
        time.sleep(0.01)
    assert ask(c, PARAPHRASE)[0] == "hit"  # a streamed answer serves a non-streamed request
    replay = c.chat.completions.with_raw_response.create(
        model="m",
        messages=[{"role": "user", "content": PARAPHRASE}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert replay.headers["x-bsc-cache"] == "hit"
    chunks = list(replay.parse())
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == f"answer 1: {Q}"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert fake.requests == 1


def test_upstream_errors_pass_through_and_are_not_cached(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    fake, _ = upstream
    c = client(proxy[0])
    fake.fail(500)
    with pytest.raises(openai.InternalServerError) as info:
        ask(c, Q)
    assert info.value.status_code == 500
    fake.fail(429, {"error": {"message": "slow down", "type": "rate_limit"}})
    with pytest.raises(openai.RateLimitError, match="slow down"):
        ask(c, Q)
    fake.fail(delay=3.0)  # longer than the proxy's 1 s upstream timeout
    with pytest.raises(openai.APIStatusError) as info:
        ask(c, Q)
    assert info.value.status_code == 504
    assert len(proxy[1]) == 0
    state, raw = ask(c, Q, stream=False)
    assert state == "miss" and text(raw).startswith("answer 1")  # nothing was cached from the errors
    metrics = httpx.get(proxy[0] + "/metrics").text
    assert 'bsc_proxy_upstream_errors_total{status="500"} 1.0' in metrics
    assert 'bsc_proxy_upstream_errors_total{status="timeout"} 1.0' in metrics


def test_an_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = SemanticCache(WordEmbedder())
    with ServerThread(create_app(cache, f"http://127.0.0.1:{port}/v1")) as server:
        response = httpx.post(
            server.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": Q}]}
        )
    assert response.status_code == 502 and response.headers["x-bsc-cache"] == "miss"


def test_bypass_refresh_and_ttl_headers(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    url, cache = proxy
    assert ask(client(url, **{"Cache-Control": "no-store"}), Q)[0] == "bypass"
    assert len(cache) == 0  # no-store: not stored either
    assert ask(client(url), Q)[0] == "miss"
    state, raw = ask(client(url, **{"Cache-Control": "no-cache"}), Q)
    assert state == "miss" and text(raw).startswith("answer 3")  # asked upstream again ...
    assert text(ask(client(url), Q)[1]).startswith("answer 3")  # ... and the new answer replaced the old
    assert ask(client(url), Q, temperature=1.5)[0] == "bypass"  # above max_temperature
    assert ask(client(url, **{"X-Bsc-TTL": "0.3"}), UNRELATED)[0] == "miss"
    assert ask(client(url), UNRELATED)[0] == "hit"
    time.sleep(0.35)
    assert ask(client(url), UNRELATED)[0] == "miss"  # expired
    bad = httpx.post(url + "/v1/chat/completions", json={}, headers={"X-Bsc-TTL": "-1"})
    assert bad.status_code == 400
    assert httpx.post(url + "/v1/chat/completions", content=b"{not json").status_code == 400


def test_the_api_key_is_forwarded_but_never_stored_or_logged(
    tmp_path: Path,
    upstream: tuple[FakeChatUpstream, str],
    proxy: tuple[str, SemanticCache],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, _ = upstream
    with caplog.at_level(logging.DEBUG):
        ask(client(proxy[0]), Q)
        ask(client(proxy[0]), PARAPHRASE)
    assert fake.last_authorization == f"Bearer {KEY}"
    assert KEY not in caplog.text
    proxy[1].save(tmp_path / "proxy.bsc")
    assert KEY.encode() not in (tmp_path / "proxy.bsc").read_bytes()


def test_embeddings_health_and_metrics(
    upstream: tuple[FakeChatUpstream, str], proxy: tuple[str, SemanticCache]
) -> None:
    c = client(proxy[0])
    result = c.embeddings.create(model="e", input=["abc", "hello"])
    assert [d.embedding for d in result.data] == [[3.0, 1.0], [5.0, 1.0]]
    ask(c, Q)
    ask(c, PARAPHRASE)
    assert httpx.get(proxy[0] + "/healthz").json() == {"status": "ok", "entries": 1}
    metrics = httpx.get(proxy[0] + "/metrics").text
    assert 'bsc_proxy_requests_total{cache="hit"} 1.0' in metrics
    assert 'bsc_proxy_requests_total{cache="miss"} 1.0' in metrics
    assert "bsc_proxy_request_seconds_bucket" in metrics and "bsc_cache_entries 1.0" in metrics


def test_bsc_serve_with_the_default_embedder_and_an_unchanged_sdk(
    tmp_path: Path, upstream: tuple[FakeChatUpstream, str]
) -> None:
    """The seed's proxy use case: `bsc serve` in its own process, the local embedder, and the
    openai SDK whose only change is its base_url."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache_file = tmp_path / "served.bsc"
    command = [sys.executable, "-m", "bsc", "serve", "--upstream", upstream[1] + "/v1", "--port", str(port)]
    command += ["--persist", str(cache_file), "--log-level", "warning"]  # rescoring and the gate: the defaults
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "bsc serve did not start"
            time.sleep(0.1)
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        first = sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "How do I learn Python 3?"}]
        )
        second = sdk.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "What is the best way to learn Python 3?"}]
        )
        assert second.headers["x-bsc-cache"] == "hit"
        assert second.parse().choices[0].message.content == first.choices[0].message.content
        third = sdk.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "How do I learn Python 2?"}]
        )
        assert third.headers["x-bsc-cache"] == "miss"  # the content gate (on by default): the numbers differ
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert cache_file.exists()  # saved on shutdown
    settings = describe_file(cache_file)
    assert settings["rescore"] is True and settings["content_gate"]["numbers"] is True
    assert cli_main(["inspect", str(cache_file), "--json"]) == 0


def test_bsc_inspect_lists_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = SemanticCache(WordEmbedder())
    cache.store(Q, "Paris", namespace="geo", tags=["t"])
    cache.store(UNRELATED, {"steps": 3}, namespace="food", ttl=60)
    cache.save(tmp_path / "c.bsc")
    assert cli_main(["inspect", str(tmp_path / "c.bsc"), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["namespace"], e["prompt"], e["response"]) for e in entries] == [
        ("food", UNRELATED, {"steps": 3}),
        ("geo", Q, "Paris"),
    ]
    assert entries[0]["expires_at"] is not None and entries[1]["tags"] == ["t"]
    assert cli_main(["inspect", str(tmp_path / "c.bsc"), "--namespace", "geo"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "steps" not in out and "1 entries" in out


def test_a_compressed_upstream_stream_is_relayed_decoded_and_stored() -> None:
    import gzip

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from bsc._chat import chunks_from_completion

    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "zipped"}, "finish_reason": "stop"}],
    }
    events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks_from_completion(completion)) + "data: [DONE]\n\n"

    async def chat(request: Any) -> Response:
        headers = {"content-encoding": "gzip", "content-type": "text/event-stream"}
        return Response(gzip.compress(events.encode()), headers=headers)

    cache = SemanticCache(WordEmbedder())
    zipped = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with ServerThread(zipped) as up, ServerThread(create_app(cache, up.url + "/v1")) as proxy:
        stream = client(proxy.url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": Q}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "zipped"
        deadline = time.monotonic() + 5
        while len(cache) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ask(client(proxy.url), Q)[0] == "hit"


@pytest.mark.parametrize(
    ("upstream", "kwargs", "error"),
    [
        ("not a url", {}, ValueError),
        ("ftp://127.0.0.1/v1", {}, ValueError),
        (None, {}, TypeError),
        ("http://127.0.0.1:1/v1", {"timeout": -1}, ValueError),
        ("http://127.0.0.1:1/v1", {"timeout": float("nan")}, ValueError),
    ],
)
def test_create_app_refuses_bad_settings(upstream: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        create_app(SemanticCache(WordEmbedder()), upstream, **kwargs)
    with pytest.raises(TypeError, match="SemanticCache"):
        create_app(object(), "http://127.0.0.1:1/v1")  # type: ignore[arg-type]
