"""The context stage: a call with a ``context_id`` sees the conversation so far and extends it.

Semantics (documented for clients): calls on one context are serialised — a second call waits
for the first to finish (FIFO, within a replica; across replicas the store keeps each call's pair
of turns adjacent and orders calls by commit). The history is fitted into the model's context
length minus the answer's ``max_tokens``: the system prompt stays, the oldest exchanges go first,
an exchange is never split. Only a finished answer is stored (user turn + assistant turn,
atomically); a failed or abandoned call leaves the context as it was. With a summary model
configured, dropped exchanges are summarised into a system message instead of vanishing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from openautoglm.contexts.model import Turn as StoredTurn
from openautoglm.contexts.service import ContextService
from openautoglm.contexts.windowing import TokenCounter, fit_history, with_summary
from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import Completion, GenerationRequest, Message
from openautoglm.tenancy.model import Principal

DEFAULT_CONTEXT_LENGTH = 8192
DEFAULT_ANSWER_TOKENS = 1024
SUMMARY_ALLOWANCE_TOKENS = 256  # room kept for the summary (at most a quarter of the window)

Summarise = Callable[[Sequence[StoredTurn]], Awaitable[str]]


@dataclass(slots=True)
class Turn:
    """One call on a context: the request as the model sees it, and how to record the answer."""

    request: GenerationRequest
    record: Callable[[Completion], object] | None = None


class Conversations:
    """Loads and stores context history around a call."""

    def __init__(self, contexts: ContextService, summarise: Summarise | None = None) -> None:
        self._contexts = contexts
        self.summarise = summarise

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
            messages = window.messages
            if window.dropped_turns and self.summarise is not None:
                # Refit leaving room for the summary, then summarise everything left out.
                window = fit_history(
                    context.system_prompt,
                    history,
                    request.messages,
                    budget - min(SUMMARY_ALLOWANCE_TOKENS, budget // 4),
                    count_tokens,
                )
                summary = await self.summarise(window.dropped_turns)
                messages = with_summary(window.messages, summary)
            new_user_turns = [m for m in request.messages if m.role != "system"]
            stored: list[Completion] = []

            def record(completion: Completion) -> None:
                stored.append(completion)

            yield Turn(replace(request, messages=tuple(messages)), record)
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
