"""Translation between the OpenAI and Anthropic wire formats (pure functions, no server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from router.prompt import routing_text
from serving import translate as t

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def collect(agen):
    async def run():
        return [e async for e in agen]

    return asyncio.run(run())


async def aiter_of(items):
    for item in items:
        yield item


def test_openai_request_to_anthropic_covers_system_turns_tools_and_images():
    body = {
        "model": "thrifty",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_completion_tokens": 300,
        "temperature": 1.5,
        "stop": "END",
        "user": "u-42",
        "stream": True,
    }
    out = t.openai_request_to_anthropic(body, model="claude-x")
    assert out["model"] == "claude-x"
    assert out["system"] == "Be brief.\n\nUse metric units."
    assert out["max_tokens"] == 300
    assert out["temperature"] == 1.0  # clamped to Anthropic's range
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-42"}
    assert out["stream"] is True
    assert out["tools"] == [{
        "name": "get_weather", "description": "Weather of a city",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]  # tool result and the next user turn merged
    first = out["messages"][0]["content"]
    assert first[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    assert first[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
        {"type": "text", "text": "Thanks!"},
    ]


def test_openai_request_default_max_tokens_and_untranslatable_requests():
    out = t.openai_request_to_anthropic({"messages": [{"role": "user", "content": "hi"}]}, model="m", default_max_tokens=123)
    assert out["max_tokens"] == 123 and "system" not in out
    with pytest.raises(t.TranslationError):
        t.openai_request_to_anthropic({"n": 2, "messages": [{"role": "user", "content": "hi"}]}, model="m")
    with pytest.raises(t.TranslationError):
        t.openai_request_to_anthropic(
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, model="m"
        )


def test_anthropic_request_to_openai_covers_system_turns_tools_and_images():
    body = {
        "model": "thrifty",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris? And this image:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather of a city", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
    }
    out = t.anthropic_request_to_openai(body, model="gpt-x", max_tokens_field="max_completion_tokens")
    assert out["model"] == "gpt-x" and out["max_completion_tokens"] == 256
    assert out["stop"] == ["END"] and out["temperature"] == 0.2 and "top_k" not in out
    assert out["user"] == "u-1"
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}, "description": "Weather of a city"}}]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False
    messages = out["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[0]["content"] == "Be brief."
    assert messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}
    assert messages[2]["content"] == "Checking."
    assert messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
    assert messages[4] == {"role": "user", "content": "And tomorrow?"}


@pytest.mark.parametrize(
    "anthropic_stop, openai_finish",
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)
def test_stop_reasons_map_both_ways(anthropic_stop, openai_finish):
    message = {"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": anthropic_stop,
               "usage": {"input_tokens": 5, "output_tokens": 2}}
    assert t.anthropic_response_to_openai(message, model="m")["choices"][0]["finish_reason"] == openai_finish
    if anthropic_stop not in ("stop_sequence",):
        completion = {"id": "c", "choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": openai_finish}]}
        assert t.openai_response_to_anthropic(completion, model="m")["stop_reason"] == anthropic_stop


def test_responses_translate_tool_calls_and_usage():
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
        "content": [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 5},
    }
    completion = t.anthropic_response_to_openai(message, model="claude-large")
    assert completion["model"] == "claude-large" and completion["object"] == "chat.completion"
    reply = completion["choices"][0]["message"]
    assert reply["content"] == "Let me check."
    assert reply["tool_calls"] == [{"id": "toolu_9", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    assert completion["usage"]["prompt_tokens"] == 25 and completion["usage"]["completion_tokens"] == 7

    back = t.openai_response_to_anthropic(
        {"id": "c1", "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": reply["tool_calls"]},
                                  "finish_reason": "tool_calls"}],
         "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}},
        model="oai-mini",
    )
    assert back["type"] == "message" and back["model"] == "oai-mini" and back["stop_reason"] == "tool_use"
    assert back["content"] == [{"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}]
    assert back["usage"] == {"input_tokens": 11, "output_tokens": 3}


def test_anthropic_stream_to_openai_chunks():
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " 1}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]
    chunks = collect(t.anthropic_stream_to_openai(aiter_of(events), model="claude-large", include_usage=True))
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "claude-large" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hi there"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["id"] == "toolu_1" and calls[0]["function"]["name"] == "f"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"a": 1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}


def test_openai_stream_to_anthropic_events_follow_the_sdk_sequence():
    def chunk(delta, finish=None, usage=None):
        c = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            c = {"id": "c1", "choices": [], "usage": usage}
        return c

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 2}'}}]}),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}),
    ]
    events = collect(t.openai_stream_to_anthropic(aiter_of(chunks), model="oai-mini"))
    kinds = [e["type"] for e in events]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert events[0]["message"]["model"] == "oai-mini" and events[0]["message"]["content"] == []
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
    assert events[6]["delta"] == {"type": "input_json_delta", "partial_json": '{"x": 2}'}
    assert events[8]["delta"]["stop_reason"] == "tool_use"
    assert events[8]["usage"] == {"input_tokens": 8, "output_tokens": 4}


def test_routing_text_is_the_same_for_both_formats():
    openai_body = {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Prove it."}]}
    anthropic_body = {"system": "Be exact.", "messages": [{"role": "user", "content": [{"type": "text", "text": "Prove it."}]}]}
    assert routing_text(openai_body) == routing_text(anthropic_body) == "Be exact.\n\nProve it.\n\nProve it."
    assert routing_text({"prompt": "just this"}) == "just this"
