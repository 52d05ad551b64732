"""Loading a Hugging Face causal LM (HF folder or GGUF) and turning requests into token ids.

Shared by the one-at-a-time ``transformers`` path and the continuous-batching engine. Nothing is
downloaded (``local_files_only``); torch and transformers are imported only by :func:`load_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openautoglm.config.settings import ConfigError, InstanceConfig
from openautoglm.core.errors import BackendFailure, InvalidRequestError
from openautoglm.core.types import GenerationRequest

DEFAULT_MAX_NEW_TOKENS = 256  # when a request sets no max_tokens


def resolve_weights(config: InstanceConfig) -> tuple[Path, str | None]:
    """The folder to load from and, for GGUF weights, the file name inside it."""
    if not config.model_path:
        raise ConfigError(f"backend '{config.backend}' needs model_path")
    path = Path(config.model_path).expanduser()
    if path.is_file():
        return path.parent, path.name
    if not path.is_dir():
        raise ConfigError(f"model_path {path} does not exist")
    if config.gguf_file:
        if not (path / config.gguf_file).is_file():
            raise ConfigError(f"gguf_file {config.gguf_file} not found in {path}")
        return path, config.gguf_file
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return path, ggufs[0]
    return path, None


@dataclass(slots=True)
class LoadedModel:
    """A model and its tokenizer, on their device, in eval mode."""

    torch: Any
    model: Any
    tokenizer: Any
    context_length: int

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def eos_ids(self) -> frozenset[int]:
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return frozenset(eos) if isinstance(eos, list) else frozenset({eos})

    def encode(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids (chat template for chat requests); refuses an empty prompt."""
        if request.kind == "chat":
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text}
                for m in request.messages
            ]
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_dict=True
            )
        else:
            encoded = self.tokenizer(request.prompt)
        ids = [int(token) for token in encoded["input_ids"]]
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


def load_model(config: InstanceConfig) -> LoadedModel:
    """Load weights and tokenizer (blocking: call it in a worker thread)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BackendFailure(
            f"backend 'transformers' needs torch and transformers ({exc.name} is missing): "
            "install openautoglm[local]"
        ) from exc
    folder, gguf_file = resolve_weights(config)
    options: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        options["gguf_file"] = gguf_file
    auto_model: Any = AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **options)
        model = auto_model.from_pretrained(str(folder), **options)
    except (OSError, ValueError, ImportError) as exc:  # a missing accelerate is a ValueError
        raise BackendFailure(f"cannot load model from {folder}: {exc}") from exc
    model.to(config.device).eval()
    positions = getattr(model.config, "max_position_embeddings", None)
    context_length = config.context_length or positions or config.n_ctx
    return LoadedModel(torch, model, tokenizer, int(context_length))
