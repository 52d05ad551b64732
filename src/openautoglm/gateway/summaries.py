"""Summaries of conversation turns that no longer fit a context window (``summary_model``)."""

from __future__ import annotations

from collections.abc import Sequence

from openautoglm.backends.base import collect
from openautoglm.contexts.model import Turn
from openautoglm.core.ids import new_object_id
from openautoglm.core.types import GenerationRequest, Message, SamplingParams
from openautoglm.gateway.conversation import SUMMARY_ALLOWANCE_TOKENS
from openautoglm.routing.catalog import ModelCatalog

SUMMARY_INSTRUCTION = (
    "Summarise the following earlier part of a conversation in a few sentences, keeping names, "
    "numbers and decisions. Answer with the summary only."
)


class Summariser:
    """Asks ``model`` for a few sentences on dropped turns."""

    def __init__(self, catalog: ModelCatalog, model: str) -> None:
        self._catalog = catalog
        self.model = model

    async def __call__(self, turns: Sequence[Turn]) -> str:
        transcript = "\n".join(f"{turn.role}: {turn.content}" for turn in turns)
        request = GenerationRequest(
            request_id=new_object_id("sum"),
            model=self.model,
            kind="chat",
            messages=(
                Message(role="system", content=SUMMARY_INSTRUCTION),
                Message(role="user", content=transcript),
            ),
            params=SamplingParams(temperature=0, max_tokens=SUMMARY_ALLOWANCE_TOKENS // 2),
        )
        instance = self._catalog.get(self.model).pick()
        return (await collect(instance.backend.generate(request))).text.strip()
