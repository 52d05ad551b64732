"""Fitting a context's history into a model's window.

Invariants of :func:`fit_history`:

- The result always holds the system prompt (the context's, then the request's leading system
  messages) and every new message; if those alone exceed the budget it raises
  ``InvalidRequestError`` (code ``context_length_exceeded``) instead of cutting them.
- History is dropped oldest exchange first and never in part (see ``contexts.model``), so an
  assistant answer is never kept without its question nor a question without its answer.
- ``count_tokens(messages) <= budget_tokens`` for the returned messages, for any counter that never
  decreases as messages are added (fewest counter calls: a binary search over exchanges).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from openautoglm.contexts.model import Turn, split_exchanges
from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import Message

TokenCounter = Callable[[Sequence[Message]], int]
"""How many prompt tokens a list of messages costs on the target model."""

SUMMARY_PREFIX = "Summary of earlier conversation: "
_SYSTEM_ROLES = frozenset({"system", "developer"})


def make_token_counter(
    count_text: Callable[[str], int], per_message_tokens: int = 4
) -> TokenCounter:
    """A counter from a text counter (e.g. ``backends.text.count_tokens``) plus a per-message cost
    for the chat template's role markers."""

    def count(messages: Sequence[Message]) -> int:
        return sum(count_text(message.text) + per_message_tokens for message in messages)

    return count


@dataclass(frozen=True, slots=True)
class WindowedHistory:
    """What to send: ``messages`` cost ``num_tokens``; ``dropped_turns`` did not fit (seq order)."""

    messages: tuple[Message, ...]
    dropped_turns: tuple[Turn, ...]
    num_tokens: int


class Summariser(Protocol):
    """Condenses turns that fell out of the window (typically by asking a small model)."""

    async def summarise(self, turns: Sequence[Turn]) -> str: ...


def _leading_system(messages: Sequence[Message]) -> int:
    count = 0
    for message in messages:
        if message.role not in _SYSTEM_ROLES:
            break
        count += 1
    return count


def fit_history(
    system_prompt: str | None,
    turns: Sequence[Turn],
    new_messages: Sequence[Message],
    budget_tokens: int,
    count_tokens: TokenCounter,
) -> WindowedHistory:
    """System prompt, the newest history that fits ``budget_tokens``, then ``new_messages``.

    ``turns`` are a context's turns in seq order. Raises ``InvalidRequestError`` with code
    ``context_length_exceeded`` if the system prompt and new messages alone exceed the budget.
    """
    split = _leading_system(new_messages)
    head = [Message(role="system", content=system_prompt)] if system_prompt else []
    head += new_messages[:split]
    tail = list(new_messages[split:])
    exchanges = split_exchanges(turns)

    def assemble(num_dropped: int) -> list[Message]:
        kept = [turn.to_message() for group in exchanges[num_dropped:] for turn in group]
        return head + kept + tail

    measured: dict[int, int] = {}

    def fits(num_dropped: int) -> bool:
        measured[num_dropped] = count_tokens(assemble(num_dropped))
        return measured[num_dropped] <= budget_tokens

    if not fits(len(exchanges)):
        raise InvalidRequestError(
            f"the system prompt and new messages need {measured[len(exchanges)]} tokens, "
            f"more than the {budget_tokens} tokens available for the prompt",
            code="context_length_exceeded",
            param="messages",
        )
    fitting, too_big = len(exchanges), -1
    if exchanges and fits(0):
        fitting = 0
    else:
        too_big = 0
        while fitting - too_big > 1:
            middle = (fitting + too_big) // 2
            if fits(middle):
                fitting = middle
            else:
                too_big = middle
    dropped = tuple(turn for group in exchanges[:fitting] for turn in group)
    return WindowedHistory(tuple(assemble(fitting)), dropped, measured[fitting])


def with_summary(messages: Sequence[Message], summary: str | None) -> tuple[Message, ...]:
    """``messages`` with a system message carrying ``summary`` after the leading system messages.

    Nothing changes when ``summary`` is empty. The summary costs tokens too: fit the history to a
    budget that leaves room for it.
    """
    if not summary:
        return tuple(messages)
    split = _leading_system(messages)
    note = Message(role="system", content=SUMMARY_PREFIX + summary)
    return (*messages[:split], note, *messages[split:])
