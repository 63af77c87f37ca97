"""bsc.openai.CachedOpenAI around the real openai SDK, against a fake upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bsc import SemanticCache, policy
from bsc.openai import AsyncCachedOpenAI, CachedOpenAI
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"


@pytest.fixture
def upstream() -> Iterator[tuple[FakeChatUpstream, str]]:
    fake = FakeChatUpstream()
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/v1"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_paraphrase_is_answered_from_the_cache_with_the_sdks_types(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    cache = SemanticCache(WordEmbedder())
    client = CachedOpenAI(openai.OpenAI(base_url=url, api_key="k", max_retries=0), cache)
    first = client.chat.completions.create(model="m", messages=user(Q))
    second = client.chat.completions.create(model="m", messages=user(PARAPHRASE))
    assert isinstance(first, ChatCompletion) and isinstance(second, ChatCompletion)
    assert second.choices[0].message.content == first.choices[0].message.content == f"answer 1: {Q}"
    assert second.id != first.id and second.usage is not None and second.usage.total_tokens == 15
    assert client.chat.completions.create(model="other", messages=user(Q)).choices[0].message.content == (
        f"answer 2: {Q}"
    )
    assert fake.requests == 2
    assert cache.stats().tokens_saved == 15
    assert client.models is client._client.models  # everything else is the wrapped client's


def test_streams_are_stored_when_read_to_the_end_and_replayed(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    cache = SemanticCache(WordEmbedder())
    client = CachedOpenAI(openai.OpenAI(base_url=url, api_key="k", max_retries=0), cache)
    abandoned = client.chat.completions.create(model="m", messages=user("an abandoned stream"), stream=True)
    next(iter(abandoned))
    abandoned.close()
    assert len(cache) == 0  # not read to the end: not stored
    stream = client.chat.completions.create(model="m", messages=user(Q), stream=True)
    assert isinstance(stream, openai.Stream)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"answer 2: {Q}"
    assert len(cache) == 1
    # Streamed and non-streamed entries are interchangeable.
    plain = client.chat.completions.create(model="m", messages=user(PARAPHRASE))
    assert plain.choices[0].message.content == f"answer 2: {Q}"
    with client.chat.completions.create(
        model="m", messages=user(PARAPHRASE), stream=True, stream_options={"include_usage": True}
    ) as replay:
        assert isinstance(replay, openai.Stream)
        chunks = list(replay)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"answer 2: {Q}"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices == []
    assert fake.requests == 2


def test_requests_the_cache_cannot_key_go_straight_through(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    cache = SemanticCache(WordEmbedder(), max_temperature=0.5)
    client = CachedOpenAI(openai.OpenAI(base_url=url, api_key="k", max_retries=0), cache)
    tool_turn = [*user(Q), {"role": "assistant", "content": "calling"}]
    tool_turn.append({"role": "user", "content": Q})
    client.chat.completions.create(model="m", messages=tool_turn)
    client.chat.completions.create(model="m", messages=user(Q), temperature=0.9)  # above max_temperature
    client.chat.completions.create(model="m", messages=user(Q), temperature=0.9)
    assert fake.requests == 3 and len(cache) == 1  # only the keyable, cacheable one
    last_not_user = [*user(Q), {"role": "assistant", "content": "prefill"}]
    client.chat.completions.create(model="m", messages=last_not_user)
    assert fake.requests == 4 and len(cache) == 1
    with pytest.raises(TypeError, match=r"openai\.OpenAI"):
        CachedOpenAI(object())  # type: ignore[arg-type]


def test_upstream_errors_are_raised_and_not_cached(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    cache = SemanticCache(WordEmbedder())
    client = CachedOpenAI(openai.OpenAI(base_url=url, api_key="k", max_retries=0), cache)
    fake.fail(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=user(Q))
    assert len(cache) == 0


def test_the_async_client(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    cache = SemanticCache(WordEmbedder())
    client = CachedOpenAI(openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0), cache)
    assert isinstance(client, AsyncCachedOpenAI)

    async def run() -> None:
        first = await client.chat.completions.create(model="m", messages=user(Q))
        hit = await client.chat.completions.create(model="m", messages=user(PARAPHRASE))
        assert isinstance(hit, ChatCompletion) and hit.choices[0].message.content == first.choices[0].message.content
        stream = await client.chat.completions.create(model="m", messages=user("a streamed question"), stream=True)
        assert isinstance(stream, openai.AsyncStream)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == (
            "answer 2: a streamed question"
        )
        replay = await client.chat.completions.create(model="m", messages=user("a streamed question"), stream=True)
        assert isinstance(replay, openai.AsyncStream)
        assert "".join([c.choices[0].delta.content or "" async for c in replay if c.choices]) == (
            "answer 2: a streamed question"
        )
        results = await asyncio.gather(
            *(client.chat.completions.create(model="m", messages=user(Q)) for _ in range(20))
        )
        assert {r.choices[0].message.content for r in results} == {f"answer 1: {Q}"}
        await client.close()  # the wrapped client's, through the wrapper

    asyncio.run(run())
    assert fake.requests == 2


def test_chat_format_round_trips_tool_calls_legacy_functions_logprobs_and_choices() -> None:
    from bsc._chat import chunks_from_completion, completion_from_chunks

    logprobs = {"content": [{"token": "a", "logprob": -0.1, "bytes": None, "top_logprobs": []}]}
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "system_fingerprint": None,
        "service_tier": "default",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x" * 150},
                "finish_reason": "stop",
                "logprobs": logprobs,
            },
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            },
            {
                "index": 2,
                "message": {"role": "assistant", "content": None, "function_call": {"name": "g", "arguments": "[]"}},
                "finish_reason": "function_call",
                "logprobs": None,
            },
        ],
    }
    assert completion_from_chunks(chunks_from_completion(completion, include_usage=True)) == completion
    assert completion_from_chunks(chunks_from_completion(completion)[:-1]) is None  # unfinished: not stored


def test_sdk_markers_odd_usage_and_replayed_responses(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    cache = SemanticCache(WordEmbedder())
    client = CachedOpenAI(openai.OpenAI(base_url=url, api_key="k", max_retries=0), cache)
    client.chat.completions.create(model="m", messages=user(Q), temperature=openai.NOT_GIVEN)
    client.chat.completions.create(model="m", messages=user(Q), temperature=openai.NOT_GIVEN)
    assert fake.requests == 1  # NOT_GIVEN is not a value: the second call is a hit
    replay = client.chat.completions.create(model="m", messages=user(Q), stream=True)
    assert replay.response.status_code == 200 and replay.response.headers["x-bsc-cache"] == "hit"
    with pytest.raises(ValueError, match="empty"):
        cache.lookup("")  # the cache refuses it; the wrapper sends such a request upstream instead
    client.chat.completions.create(model="m", messages=user(" "))
    assert fake.requests == 2
    # The wrapper stores what the request policy prepared (bsc.policy), whatever the usage holds.
    request = policy.parse_request("chat", {"messages": user("odd usage"), "model": "m"})
    prepared = policy.prepare(cache, request, "default")
    assert isinstance(prepared, policy.Prepared)
    client._store(prepared, {"usage": {}, "choices": []})
    assert cache.lookup_chat(user("odd usage"), model="m") is not None  # cached without a token count
