"""The context stage: a call with a ``context_id`` sees the conversation so far and extends it.

Semantics (documented for clients): calls on one context are serialised — a second call waits
for the first to finish (FIFO, within a replica; across replicas the store keeps each call's pair
of turns adjacent and orders calls by commit). The history is fitted into the model's context
length minus the answer's ``max_tokens``: the system prompt stays, the oldest exchanges go first,
an exchange is never split. Only a finished answer is stored (user turn + assistant turn,
atomically); a failed or abandoned call leaves the context as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from openautoglm.contexts.service import ContextService
from openautoglm.contexts.windowing import TokenCounter, fit_history
from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import Completion, GenerationRequest, Message
from openautoglm.tenancy.model import Principal

DEFAULT_CONTEXT_LENGTH = 8192
DEFAULT_ANSWER_TOKENS = 1024


@dataclass(slots=True)
class Turn:
    """One call on a context: the request as the model sees it, and how to record the answer."""

    request: GenerationRequest
    record: Callable[[Completion], object] | None = None


class Conversations:
    """Loads and stores context history around a call."""

    def __init__(self, contexts: ContextService) -> None:
        self._contexts = contexts

    @asynccontextmanager
    async def turn(
        self,
        principal: Principal,
        request: GenerationRequest,
        context_length: int | None,
        count_tokens: TokenCounter,
    ) -> AsyncIterator[Turn]:
        """Hold the context for the whole call; yields the request with its history."""
        if request.context_id is None:
            yield Turn(request)
            return
        if request.kind != "chat":
            raise InvalidRequestError(
                "context_id works with chat and generate requests, not text completions",
                param="context_id",
            )
        tenant_id, context_id = principal.tenant_id, request.context_id
        async with self._contexts.turn_lock(tenant_id, context_id):
            context = await self._contexts.open_for_request(tenant_id, context_id)
            history = await self._contexts.turns(tenant_id, context_id)
            answer_tokens = request.params.max_tokens or DEFAULT_ANSWER_TOKENS
            budget = (context_length or DEFAULT_CONTEXT_LENGTH) - answer_tokens
            window = fit_history(
                context.system_prompt, history, request.messages, budget, count_tokens
            )
            new_user_turns = [m for m in request.messages if m.role != "system"]
            stored: list[Completion] = []

            def record(completion: Completion) -> None:
                stored.append(completion)

            yield Turn(replace(request, messages=window.messages), record)
            if stored:
                await self._contexts.append_turns(
                    tenant_id,
                    context_id,
                    [*_turn_inputs(new_user_turns, request), _answer(stored[0], request)],
                )


def _turn_inputs(
    messages: list[Message], request: GenerationRequest
) -> list[tuple[str, str, int | None, str | None]]:
    return [(m.role, m.text, None, request.request_id) for m in messages]


def _answer(
    completion: Completion, request: GenerationRequest
) -> tuple[str, str, int | None, str | None]:
    return (
        "assistant",
        completion.text,
        completion.usage.completion_tokens or None,
        request.request_id,
    )
