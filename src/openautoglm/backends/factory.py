"""Building a backend from an instance's settings. Heavy backends are imported only when used."""

from __future__ import annotations

from openautoglm.backends.base import Backend
from openautoglm.config.settings import InstanceConfig
from openautoglm.core.errors import InvalidRequestError


def build_backend(config: InstanceConfig, model_name: str) -> Backend:
    """A backend for one instance of ``model_name``; nothing is loaded until ``start()``."""
    if config.backend == "echo":
        from openautoglm.backends.echo import EchoBackend

        return EchoBackend(config)
    if config.backend == "openai":
        from openautoglm.backends.openai_upstream import OpenAIUpstreamBackend

        return OpenAIUpstreamBackend(config, model_name)
    if config.backend == "llamacpp":
        from openautoglm.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config, model_name)
    if config.backend == "transformers" and config.batching and not config.vision:
        from openautoglm.backends.batching import BatchingTransformersBackend

        return BatchingTransformersBackend(config, model_name)
    if config.backend == "transformers":
        from openautoglm.backends.transformers_local import TransformersBackend

        return TransformersBackend(config, model_name)
    if config.backend == "vllm":
        from openautoglm.backends.vllm_server import VllmBackend

        return VllmBackend(config, model_name)
    if config.backend == "encoder":
        from openautoglm.backends.encoder import EncoderBackend

        return EncoderBackend(config, model_name)
    raise InvalidRequestError(f"unknown backend '{config.backend}' for model '{model_name}'")
