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

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
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
    """One call on a context: the request as the model sees it; store the answer, then release."""

    request: GenerationRequest
    _store: Callable[[Completion], Awaitable[object]] | None = None
    _lock: AbstractAsyncContextManager[None] | None = None

    async def store(self, completion: Completion) -> None:
        """Keep the finished answer (and its question) in the context."""
        if self._store is not None:
            await self._store(completion)
            self._store = None

    async def release(self) -> None:
        """Let the next call on this context go ahead (always call it, in a ``finally``)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            await lock.__aexit__(None, None, None)


class Conversations:
    """Loads and stores context history around a call."""

    def __init__(self, contexts: ContextService, summarise: Summarise | None = None) -> None:
        self._contexts = contexts
        self.summarise = summarise

    async def begin(
        self,
        principal: Principal,
        request: GenerationRequest,
        context_length: int | None,
        count_tokens: TokenCounter,
    ) -> Turn:
        """The request with its history, holding the context until ``Turn.release``."""
        if request.context_id is None:
            return Turn(request)
        if request.kind != "chat":
            raise InvalidRequestError(
                "context_id works with chat and generate requests, not text completions",
                param="context_id",
            )
        tenant_id, context_id = principal.tenant_id, request.context_id
        lock = self._contexts.turn_lock(tenant_id, context_id)
        await lock.__aenter__()
        try:
            messages = await self._window(
                tenant_id, context_id, request, context_length, count_tokens
            )
        except BaseException:
            await lock.__aexit__(None, None, None)
            raise
        new_turns = _turn_inputs([m for m in request.messages if m.role != "system"], request)

        async def store(completion: Completion) -> None:
            await self._contexts.append_turns(
                tenant_id, context_id, [*new_turns, _answer(completion, request)]
            )

        return Turn(replace(request, messages=messages), store, lock)

    async def _window(
        self,
        tenant_id: str,
        context_id: str,
        request: GenerationRequest,
        context_length: int | None,
        count_tokens: TokenCounter,
    ) -> tuple[Message, ...]:
        context = await self._contexts.open_for_request(tenant_id, context_id)
        history = await self._contexts.turns(tenant_id, context_id)
        answer_tokens = request.params.max_tokens or DEFAULT_ANSWER_TOKENS
        budget = (context_length or DEFAULT_CONTEXT_LENGTH) - answer_tokens
        window = fit_history(context.system_prompt, history, request.messages, budget, count_tokens)
        if not window.dropped_turns or self.summarise is None:
            return tuple(window.messages)
        # Refit leaving room for the summary, then summarise everything left out.
        window = fit_history(
            context.system_prompt,
            history,
            request.messages,
            budget - min(SUMMARY_ALLOWANCE_TOKENS, budget // 4),
            count_tokens,
        )
        summary = await self.summarise(window.dropped_turns)
        return tuple(with_summary(window.messages, summary))


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
