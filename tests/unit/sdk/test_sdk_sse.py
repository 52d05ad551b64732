"""SSE decoding and stream state, without a server."""

from __future__ import annotations

import pytest

from openautoglm.sdk import APIResponseError, BadRequestError, Usage
from openautoglm.sdk._sse import SSEDecoder, StreamState


def feed_all(decoder: SSEDecoder, chunks: list[str]) -> list[str]:
    payloads = [payload for chunk in chunks for payload in decoder.feed(chunk)]
    return payloads + decoder.finish()


def test_events_are_delivered_whatever_the_chunking() -> None:
    wire = 'data: {"a": 1}\n\n: comment\n\nevent: message\ndata: x\r\n\r\ndata: [DONE]\n\n'
    expected = ['{"a": 1}', "x", "[DONE]"]

    for size in range(1, len(wire) + 1):
        chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
        assert feed_all(SSEDecoder(), chunks) == expected, size


def test_a_crlf_split_between_chunks_does_not_end_the_event_early() -> None:
    assert feed_all(SSEDecoder(), ["data: a\r", "\ndata: b\r", "\n\r\n"]) == ["a\nb"]


def test_data_keeps_unicode_line_separators_and_spaces_after_the_first() -> None:
    assert feed_all(SSEDecoder(), ["data:  two\u2028spaces\n\ndata:x\n\n"]) == [
        " two\u2028spaces",
        "x",
    ]


def test_an_unterminated_last_event_is_flushed() -> None:
    assert feed_all(SSEDecoder(), ["data: [DONE]"]) == ["[DONE]"]


def test_chat_state_reads_openai_chunks() -> None:
    state = StreamState("chat", "req-1")
    role = '{"id": "c1", "model": "m", "choices": [{"delta": {"role": "assistant"}}]}'
    content = '{"id": "c1", "choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}'
    finish = '{"id": "c1", "choices": [{"delta": {}, "finish_reason": "length"}]}'
    usage = '{"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'

    deltas = [state.apply(payload) for payload in (role, content, finish, usage, "[DONE]")]

    assert deltas == ["", "hi", "", "", ""]
    assert (state.text, state.id, state.model, state.finish_reason) == ("hi", "c1", "m", "length")
    assert state.usage == Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)
    assert state.is_done


def test_an_error_event_raises_with_the_request_id() -> None:
    state = StreamState("generate", "req-2")
    event = '{"error": {"message": "bad stop", "type": "invalid_request_error"}}'

    with pytest.raises(BadRequestError) as caught:
        state.apply(event)

    assert (caught.value.message, caught.value.request_id) == ("bad stop", "req-2")


@pytest.mark.parametrize("payload", ["{not json", "[1]"])
def test_garbage_events_are_refused(payload: str) -> None:
    with pytest.raises(APIResponseError):
        StreamState("generate", None).apply(payload)


def test_a_stream_with_a_finish_reason_but_no_done_is_complete() -> None:
    state = StreamState("generate", None)
    state.apply('{"text": "x", "finish_reason": "stop"}')

    state.check_complete()


def test_a_stream_without_finish_reason_or_done_is_incomplete() -> None:
    state = StreamState("generate", None)
    state.apply('{"text": "x"}')

    with pytest.raises(APIResponseError, match="ended before completion"):
        state.check_complete()
