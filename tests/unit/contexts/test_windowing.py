"""Fitting history into a window: oldest exchanges go first, whole; system and new turns stay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from openautoglm.contexts.model import Turn, num_turns_to_trim, split_exchanges
from openautoglm.contexts.windowing import (
    SUMMARY_PREFIX,
    fit_history,
    make_token_counter,
    with_summary,
)
from openautoglm.core.errors import InvalidRequestError
from openautoglm.core.types import Message, Role

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def count_words(messages: Sequence[Message]) -> int:
    """Deterministic: one token per word plus one per message."""
    return sum(len(m.text.split()) + 1 for m in messages)


def history(*roles: Role) -> list[Turn]:
    return [
        Turn("c", seq, role, f"{role} {seq} says hi", 5, NOW, None)
        for seq, role in enumerate(roles, start=1)
    ]


def exchanges(count: int) -> list[Turn]:
    return history(*(["user", "assistant"] * count))  # type: ignore[arg-type]


NEW = [Message("system", "be brief"), Message("user", "and now?")]


def test_everything_fits_when_the_budget_allows() -> None:
    turns = exchanges(3)
    windowed = fit_history("You help.", turns, NEW, 1000, count_words)
    assert windowed.dropped_turns == ()
    assert [m.text for m in windowed.messages] == [
        "You help.",
        "be brief",
        *(t.content for t in turns),
        "and now?",
    ]
    assert windowed.num_tokens == count_words(windowed.messages)


def test_oldest_exchanges_are_dropped_first_and_whole() -> None:
    turns = exchanges(4)  # each turn costs 5 tokens, each exchange 10
    base = count_words(fit_history("You help.", [], NEW, 1000, count_words).messages)
    windowed = fit_history("You help.", turns, NEW, base + 19, count_words)
    assert [t.seq for t in windowed.dropped_turns] == [1, 2, 3, 4, 5, 6]
    kept = [m.text for m in windowed.messages[2:-1]]
    assert kept == [t.content for t in turns[6:]]
    assert windowed.messages[0] == Message("system", "You help.")
    assert windowed.messages[1] == NEW[0] and windowed.messages[-1] == NEW[1]
    assert windowed.num_tokens == base + 10


@pytest.mark.parametrize("roles", [("user", "assistant", "tool", "assistant"), ("assistant",)])
def test_every_budget_is_respected_exactly_and_pairs_never_split(roles: tuple[Role, ...]) -> None:
    turns = history(*roles, "user", "assistant", "user", "assistant", "user", "assistant")
    groups = split_exchanges(turns)
    minimum = count_words(fit_history(None, [], NEW, 10_000, count_words).messages)
    maximum = count_words(fit_history(None, turns, NEW, 10_000, count_words).messages)
    for budget in range(minimum, maximum + 1):
        windowed = fit_history(None, turns, NEW, budget, count_words)
        assert windowed.num_tokens == count_words(windowed.messages) <= budget
        num_dropped = len(windowed.dropped_turns)
        boundaries = [sum(len(g) for g in groups[:i]) for i in range(len(groups) + 1)]
        assert num_dropped in boundaries  # whole exchanges only
        if num_dropped:  # and no more than needed: one exchange fewer would not fit
            fewer = boundaries[boundaries.index(num_dropped) - 1]
            bigger = fit_history(None, turns[fewer:], NEW, 10_000, count_words)
            assert bigger.num_tokens > budget


def test_new_messages_that_do_not_fit_raise_with_the_numbers() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        fit_history("You help.", exchanges(2), NEW, 5, count_words)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.status == 400
    needed = count_words([Message("system", "You help."), *NEW])
    assert f"need {needed} tokens" in caught.value.message and "5 tokens" in caught.value.message


def test_a_request_system_message_after_a_user_message_stays_in_place() -> None:
    new = [Message("user", "hi"), Message("system", "late rule")]
    windowed = fit_history(None, exchanges(1), new, 1000, count_words)
    assert [m.role for m in windowed.messages] == ["user", "assistant", "user", "system"]


def test_the_counter_is_called_a_logarithmic_number_of_times() -> None:
    calls = 0

    def counting(messages: Sequence[Message]) -> int:
        nonlocal calls
        calls += 1
        return count_words(messages)

    fit_history(None, exchanges(200), NEW, 500, counting)
    assert calls <= 12


def test_a_summary_goes_after_the_leading_system_messages() -> None:
    messages = [Message("system", "rules"), Message("user", "hi")]
    assert with_summary(messages, None) == tuple(messages)
    assert with_summary(messages, "") == tuple(messages)
    summarised = with_summary(messages, "they said hello")
    assert summarised == (
        messages[0],
        Message("system", SUMMARY_PREFIX + "they said hello"),
        messages[1],
    )
    assert with_summary([Message("user", "hi")], "x")[0].role == "system"


def test_token_counter_from_a_text_counter() -> None:
    count = make_token_counter(lambda text: len(text.split()), per_message_tokens=3)
    assert count([Message("user", "one two"), Message("assistant", "three")]) == 9


def test_trimming_points_fall_on_exchange_starts() -> None:
    assert num_turns_to_trim(["user", "assistant"] * 3, None) == 0
    assert num_turns_to_trim(["user", "assistant"] * 3, 6) == 0
    assert num_turns_to_trim(["user", "assistant"] * 3, 5) == 2
    assert num_turns_to_trim(["user", "assistant"] * 3, 3) == 4
    assert num_turns_to_trim(["user", "assistant"] * 3, 1) == 4  # the newest pair stays whole
    assert num_turns_to_trim(["assistant", "user", "assistant", "tool"], 3) == 1
