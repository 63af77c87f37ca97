"""The OpenAI Responses API wire format (``bsc._responses``) and the fake upstream's Responses
and pass-through routes (``bsc.testing.FakeChatUpstream``), checked against the real SDK."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bsc._responses import (
    CHUNK_CHARS,
    events_from_response,
    fresh,
    output_text,
    response_from_events,
    responses_scope,
    sse,
)
from bsc.semantic import chat_scope
from bsc.testing import FakeChatUpstream, ServerThread

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
LONG = "The quick brown fox jumps over the lazy dog. " * 5  # 225 characters: four deltas


def _usage() -> dict[str, Any]:
    return {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 34,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 46,
    }


def _response(output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {
        "id": "resp_123",
        "object": "response",
        "created_at": 1700000000,
        "completed_at": 1700000001,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": "Be brief.",
        "model": "gpt-test",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "usage": _usage(),
        "metadata": {},
    }
    body.update(extra)
    return body


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": [], **extra}


def _message(*parts: dict[str, Any], item_id: str = "msg_1") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": list(parts)}


def _call(arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    return {
        "id": f"fc_{call_id}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": "get_weather",
        "arguments": arguments,
    }


REASONING = {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Thought."}]}
WEB_SEARCH = {
    "id": "ws_1",
    "type": "web_search_call",
    "status": "completed",
    "action": {"type": "search", "query": "q"},
}

RESPONSES = {
    "text": _response([_message(_text("Hello there!"))]),
    "long text": _response([_message(_text(LONG))]),
    "empty text": _response([_message(_text(""))]),
    "multi-part": _response([_message(_text("Part one. "), _text(LONG))]),
    "annotated": _response(
        [
            _message(
                _text(
                    "See the docs.",
                    annotations=[
                        {"type": "url_citation", "start_index": 4, "end_index": 8, "title": "Docs", "url": "https://x"}
                    ],
                )
            )
        ]
    ),
    "refusal": _response([_message({"type": "refusal", "refusal": "I can't help with that. " * 4})]),
    "function_call": _response([_call(json.dumps({"city": "Paris", "unit": "celsius", "days": list(range(20))}))]),
    "parallel calls": _response([_call('{"city": "Paris"}', "call_1"), _call('{"city": "Rome"}', "call_2")]),
    "custom tool call": _response(
        [{"id": "ctc_1", "type": "custom_tool_call", "call_id": "c1", "name": "shell", "input": "ls -la " * 20}]
    ),
    "multiple items": _response([REASONING, WEB_SEARCH, _message(_text(LONG), item_id="msg_2"), _call("{}")]),
    "empty output": _response([]),
}


# -- responses_scope -------------------------------------------------------------------------


def test_scope_prompt_from_str_input() -> None:
    prompt, scope = responses_scope({"model": "gpt-test", "input": "What is BM25?"})
    assert prompt == "What is BM25?"
    assert scope["api"] == "responses"
    assert scope["model"] == "gpt-test"
    assert set(scope) == {"api", "model", "context"}
    assert len(scope["context"]) == 32


def test_scope_prompt_from_last_user_message() -> None:
    body = {
        "model": "gpt-test",
        "input": [
            {"role": "user", "content": "first question"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "first answer"}]},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "line one"}, {"type": "input_text", "text": "line two"}],
            },
        ],
    }
    prompt, _ = responses_scope(body)
    assert prompt == "line one\nline two"


def test_equivalent_forms_of_one_user_input_share_a_scope() -> None:
    forms = [
        "hello",
        [{"role": "user", "content": "hello"}],
        [{"type": "message", "role": "user", "content": "hello"}],
        [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
    ]
    results = [responses_scope({"model": "m", "input": form}) for form in forms]
    assert all(result == results[0] for result in results)
    assert results[0][0] == "hello"


def test_neutral_parameters_do_not_change_the_scope() -> None:
    base = {"model": "m", "input": "hi", "temperature": 0.2}
    neutral = {
        **base,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "user": "u1",
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "flex",
        "safety_identifier": "s",
        "prompt_cache_key": "pk",
        "background": False,
        "previous_response_id": None,
        "max_output_tokens": None,
    }
    assert responses_scope(neutral) == responses_scope(base)


@pytest.mark.parametrize(
    "change",
    [
        {"instructions": "Answer in French."},
        {"input": [{"role": "user", "content": "earlier"}, {"role": "user", "content": "hi"}]},
        {"input": [{"role": "user", "content": "hi", "id": "msg_9"}]},
        {"tools": [{"type": "function", "name": "f", "parameters": {}}]},
        {"tool_choice": "required"},
        {"temperature": 0.9},
        {"top_p": 0.5},
        {"model": "other-model"},
        {"text": {"format": {"type": "json_object"}}},
        {"reasoning": {"effort": "high"}},
        {"max_output_tokens": 16},
        {"truncation": "auto"},
        {"parallel_tool_calls": False},
        {"include": ["reasoning.encrypted_content"]},
        {"top_logprobs": 3},
        {"max_tool_calls": 2},
        {"seed": 7},
    ],
)
def test_parameters_that_change_the_answer_change_the_scope(change: dict[str, Any]) -> None:
    base = {"model": "m", "input": "hi", "temperature": 0.2}
    prompt, scope = responses_scope(base)
    changed_prompt, changed = responses_scope({**base, **change})
    assert changed_prompt == prompt == "hi"
    assert changed != scope


def test_temperature_and_parameters_are_kept_by_name() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    _, scope = responses_scope({"model": "m", "input": "hi", "temperature": 1.5, "tools": tools, "seed": 1})
    assert scope["temperature"] == 1.5
    assert scope["tools"] == tools
    assert scope["seed"] == 1
    assert "input" not in scope
    assert "instructions" not in scope


def test_chat_and_responses_scopes_differ() -> None:
    chat_prompt, chat = chat_scope([{"role": "user", "content": "hi"}], model="m")
    prompt, responses = responses_scope({"model": "m", "input": "hi"})
    assert chat_prompt == prompt
    assert chat != responses


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "", "input": "hi"}, "model"),
        ({"model": 3, "input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": None}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 42}, "input"),
        ({"model": "m", "input": [{"role": "assistant", "content": "hi"}]}, "user message"),
        ({"model": "m", "input": [{"role": "system", "content": "hi"}]}, "user message"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}]}, "user message"),
        ({"model": "m", "input": ["hi"]}, "user message"),
        ({"model": "m", "input": [{"type": "item_reference", "role": "user", "id": "x"}]}, "user message"),
        ({"model": "m", "input": [{"role": "user", "content": None}]}, "content"),
        (
            {
                "model": "m",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "what is this?"},
                            {"type": "input_image", "image_url": "https://x/y.png"},
                        ],
                    }
                ],
            },
            "input_image",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input_file",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "input_audio",
        ),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "no text"),
        ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "m", "input": "hi", "background": True}, "background"),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "hi", "conversation": {"id": "conv_1"}}, "conversation"),
        ({"model": "m", "input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
def test_uncacheable_requests_raise_value_error(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        responses_scope(body)


@pytest.mark.parametrize("name", ["api", "context", "ttl", "tags", "usage", "cost"])
def test_reserved_names_raise_type_error(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        responses_scope({"model": "m", "input": "hi", name: 1})


def test_non_json_parameters_raise_type_error() -> None:
    with pytest.raises(TypeError, match="JSON"):
        responses_scope({"model": "m", "input": "hi", "seed": object()})


# -- events ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_round_trip(name: str) -> None:
    response = RESPONSES[name]
    original = copy.deepcopy(response)
    events = events_from_response(response)
    assert response_from_events(events) == original
    assert response == original  # not modified
    assert response_from_events(json.loads(json.dumps(events))) == original


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_every_event_validates_with_the_sdk(name: str) -> None:
    events = events_from_response(RESPONSES[name])
    SDKResponse.model_validate(RESPONSES[name])
    for event in events:
        parsed = EVENT.validate_python(event)
        assert parsed.type == event["type"]
        assert parsed.to_dict() == event  # every field known to the SDK, none lost
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_event_order_for_a_message() -> None:
    events = events_from_response(RESPONSES["long text"])
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == LONG
    assert all(len(d) <= CHUNK_CHARS for d in deltas)
    assert len(deltas[0]) == CHUNK_CHARS
    for event in events[2:-1]:
        assert event["output_index"] == 0
    for event in events[3:-2]:
        assert event["item_id"] == "msg_1"
        assert event["content_index"] == 0
    created = events[0]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert created["usage"] is None
    assert created["id"] == "resp_123"
    added = events[2]["item"]
    assert added["status"] == "in_progress"
    assert added["content"] == []
    assert events[3]["part"]["text"] == ""
    assert events[-3]["part"] == _text(LONG)
    assert events[-2]["item"] == RESPONSES["long text"]["output"][0]
    assert events[-1]["response"] == RESPONSES["long text"]


def test_event_order_for_refusal_call_and_other_items() -> None:
    refusal = [e["type"] for e in events_from_response(RESPONSES["refusal"])]
    assert refusal[3:8] == [
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
    ]
    events = events_from_response(RESPONSES["multiple items"])
    kinds = [(e["type"], e.get("output_index")) for e in events]
    assert kinds[2:4] == [("response.output_item.added", 0), ("response.output_item.done", 0)]
    assert kinds[4:6] == [("response.output_item.added", 1), ("response.output_item.done", 1)]
    call = [e for e in events if e.get("output_index") == 3]
    assert [e["type"] for e in call] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert call[0]["item"]["arguments"] == ""
    assert call[1]["delta"] == "{}"
    assert call[2]["arguments"] == "{}"
    assert call[2]["item_id"] == "fc_call_1"
    long_call = events_from_response(RESPONSES["function_call"])
    arguments = [e["delta"] for e in long_call if e["type"] == "response.function_call_arguments.delta"]
    assert len(arguments) > 1
    assert "".join(arguments) == RESPONSES["function_call"]["output"][0]["arguments"]


def test_empty_output_is_just_the_lifecycle() -> None:
    events = events_from_response(RESPONSES["empty output"])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]


@pytest.mark.parametrize("ending", ["response.failed", "response.incomplete", "error"])
def test_streams_that_do_not_complete(ending: str) -> None:
    events = events_from_response(RESPONSES["text"])
    assert response_from_events(events[:-1]) is None
    assert response_from_events([]) is None
    failure: dict[str, Any]
    if ending == "error":
        failure = {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 99}
    else:
        status = "failed" if ending == "response.failed" else "incomplete"
        failure = {"type": ending, "sequence_number": 99, "response": {**RESPONSES["text"], "status": status}}
    EVENT.validate_python(failure)
    assert response_from_events([*events[:-1], failure]) is None
    assert response_from_events([*events[:-1], failure, events[-1]]) is None


def test_a_completed_event_with_another_status_is_not_an_answer() -> None:
    events = events_from_response({**RESPONSES["text"], "status": "incomplete"})
    assert response_from_events(events) is None


def test_a_completed_event_without_output_takes_the_done_items() -> None:
    events = events_from_response(RESPONSES["multiple items"])
    events[-1] = {**events[-1], "response": {**events[-1]["response"], "output": None}}
    assert response_from_events(events) == RESPONSES["multiple items"]


def test_sse_body() -> None:
    events = events_from_response(RESPONSES["text"])
    body = sse(events)
    blocks = body.decode().split("\n\n")
    assert blocks[-1] == ""
    assert b"[DONE]" not in body
    assert len(blocks) - 1 == len(events)
    for block, event in zip(blocks[:-1], events, strict=True):
        kind, data = block.split("\n")
        assert kind == f"event: {event['type']}"
        assert data.startswith("data: {")
        assert json.loads(data.removeprefix("data: ")) == event
        assert ": " not in data.removeprefix("data: ").replace("Hello there!", "")  # compact


def test_sse_keeps_newlines_and_unicode_in_one_data_line() -> None:
    response = _response([_message(_text("line 1\n\nline 2 — ünïcode ✓"))])
    body = sse(events_from_response(response))
    assert "ünïcode".encode() in body
    assert response_from_events(_parse_sse(body)) == response


def test_output_text() -> None:
    assert output_text(RESPONSES["text"]) == "Hello there!"
    assert output_text(RESPONSES["multi-part"]) == "Part one. " + LONG
    assert output_text(RESPONSES["multiple items"]) == LONG
    assert output_text(RESPONSES["empty text"]) == ""
    assert output_text(RESPONSES["function_call"]) is None
    assert output_text(RESPONSES["refusal"]) is None
    assert output_text(RESPONSES["empty output"]) is None
    assert output_text({}) is None


def test_fresh() -> None:
    renewed = fresh(RESPONSES["text"])
    assert renewed["id"].startswith("resp_bsc_")
    assert renewed["id"] != fresh(RESPONSES["text"])["id"]
    assert renewed["created_at"] > RESPONSES["text"]["created_at"]
    assert renewed["output"] == RESPONSES["text"]["output"]
    assert RESPONSES["text"]["id"] == "resp_123"


def _parse_sse(body: bytes) -> list[dict[str, Any]]:
    events = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


# -- the SDK reading a replayed stream -------------------------------------------------------


@pytest.fixture
def replay() -> Iterator[tuple[str, dict[str, Any]]]:
    """A server answering every ``POST /v1/responses`` with the replay of one response."""
    response = RESPONSES["multiple items"]
    seen: dict[str, Any] = {}

    async def answer(request: Request) -> Response:
        seen["body"] = json.loads(await request.body())
        return Response(sse(events_from_response(response)), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/responses", answer, methods=["POST"])])
    with ServerThread(app) as server:
        yield server.url + "/v1", seen


def test_sdk_reads_a_replayed_stream(replay: tuple[str, dict[str, Any]]) -> None:
    url, seen = replay
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    events = list(client.responses.create(model="gpt-test", input="hi", stream=True))
    assert seen["body"]["stream"] is True
    assert events[0].type == "response.created"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == LONG
    assert len(deltas) == 4
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.id == "resp_123"
    assert completed.response.output_text == LONG
    assert completed.response.usage is not None
    assert completed.response.usage.total_tokens == 46
    assert response_from_events([e.to_dict() for e in events]) == RESPONSES["multiple items"]


def test_sdk_stream_helper_accumulates_a_replayed_stream(replay: tuple[str, dict[str, Any]]) -> None:
    url, _ = replay
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    with client.responses.stream(model="gpt-test", input="hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == LONG
    assert final.output_text == LONG
    assert [item.type for item in final.output] == ["reasoning", "web_search_call", "message", "function_call"]


# -- the fake upstream -----------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[tuple[FakeChatUpstream, str]]:
    fake = FakeChatUpstream()
    with ServerThread(fake.app) as server:
        yield fake, server.url


def test_fake_responses_plain(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-one", max_retries=0)
    first = client.responses.create(model="gpt-test", input="What is BM25?", instructions="Be brief.")
    assert first.id == "resp_fake_1"
    assert first.status == "completed"
    assert first.output_text == "answer 1: What is BM25?"
    assert first.instructions == "Be brief."
    assert first.usage is not None
    assert first.usage.input_tokens == 10
    assert first.usage.total_tokens == 15
    second = client.responses.create(
        model="gpt-test",
        input=[
            {"role": "user", "content": "earlier"},
            {"role": "user", "content": [{"type": "input_text", "text": "later"}]},
        ],
    )
    assert second.output_text == "answer 2: later"
    assert fake.requests == 2
    assert fake.last_authorization == "Bearer sk-one"
    assert fake.last_request_headers["authorization"] == "Bearer sk-one"
    raw = httpx.post(url + "/v1/responses", json={"model": "m", "input": "x"}).json()
    SDKResponse.model_validate(raw)
    assert raw["output"][0]["content"][0]["text"] == "answer 3: x"


def test_fake_responses_streamed(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    stream = client.responses.create(model="gpt-test", input="stream me " * 20, stream=True)
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "answer 1: " + "stream me " * 20
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == text
    with httpx.stream("POST", url + "/v1/responses", json={"model": "m", "input": "x", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read()
    assert b"event: response.completed\n" in body
    completed = response_from_events(_parse_sse(body))
    assert completed is not None
    assert output_text(completed) == "answer 2: x"
    assert fake.requests == 2


def test_fake_responses_faults(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    fake.fail(503, {"error": {"message": "overloaded", "type": "server_error"}})
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.InternalServerError, match="overloaded"):
        client.responses.create(model="gpt-test", input="hi")
    assert fake.requests == 0
    assert client.responses.create(model="gpt-test", input="hi").output_text == "answer 1: hi"


def test_fake_models_and_completions(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    assert [m.id for m in client.models.list()] == ["fake-model", "fake-embedding"]
    completion = client.completions.create(model="fake-model", prompt="Say this")
    assert completion.choices[0].text == "echo: Say this"
    assert completion.object == "text_completion"
    assert fake.passthrough_requests == 2
    assert fake.requests == 0
    fake.fail(429, {"error": {"message": "slow down", "type": "rate_limit"}})
    with pytest.raises(openai.RateLimitError):
        client.models.list()


def test_fake_files_upload(upstream: tuple[FakeChatUpstream, str]) -> None:
    _, url = upstream
    content = bytes(range(256)) * 40 + b'{"a": 1}\n'
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    uploaded = client.files.create(file=("batch.jsonl", content), purpose="batch")
    assert uploaded.filename == "batch.jsonl"
    assert uploaded.bytes == len(content)
    assert uploaded.purpose == "batch"
    raw = httpx.post(url + "/v1/files", files={"file": ("x.bin", content)}, data={"purpose": "assistants"}).json()
    assert raw["sha256"] == hashlib.sha256(content).hexdigest()
    assert raw["purpose"] == "assistants"
    assert httpx.post(url + "/v1/files", data={"purpose": "batch"}).status_code == 400


def test_fake_speech_streams_bytes(upstream: tuple[FakeChatUpstream, str]) -> None:
    _, url = upstream
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    assert speech.content == FakeChatUpstream.SPEECH_BYTES
    assert len(speech.content) == 64 * 1024
    with httpx.stream("POST", url + "/v1/audio/speech", json={"input": "hi"}) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        chunks = list(response.iter_raw())
    assert b"".join(chunks) == FakeChatUpstream.SPEECH_BYTES


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_fake_echo(upstream: tuple[FakeChatUpstream, str], method: str) -> None:
    fake, url = upstream
    body = b"" if method == "GET" else b"\x00binary\xffbody" * 100
    response = httpx.request(
        method,
        url + "/v1/echo/a/b%20c",
        params=[("x", "1"), ("y", "two words")],
        headers={"X-Custom": "Value", "Authorization": "Bearer e"},
        content=body,
    )
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["method"] == method
    assert echoed["path"] == "/v1/echo/a/b c"
    assert echoed["raw_path"] == "/v1/echo/a/b%20c"
    assert echoed["query"] == "x=1&y=two+words"
    assert echoed["headers"]["x-custom"] == "Value"
    assert echoed["headers"]["authorization"] == "Bearer e"
    assert echoed["body_size"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert fake.last_request_headers["x-custom"] == "Value"


def test_fake_chat_still_answers(upstream: tuple[FakeChatUpstream, str]) -> None:
    fake, url = upstream
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "answer 1: hi"
    reply = client.responses.create(model="m", input="hi")
    assert reply.output_text == "answer 2: hi"
    assert fake.last_request_headers["authorization"] == "Bearer k"
