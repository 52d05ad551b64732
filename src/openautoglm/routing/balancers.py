"""Load balancers: which of a model's eligible instances takes the next call.

All share one interface, :meth:`Balancer.choose` over the candidates still eligible (healthy,
in the caller's regions), so health and regions are decided elsewhere:

- ``SmoothWeightedRoundRobin`` (nginx): over any ``sum(weights)`` picks, each instance is chosen
  exactly ``weight`` times, evenly spread.
- ``LeastOutstanding``: the fewest calls in flight, relative to weight; ties by round robin.
- ``PowerOfTwoEwma``: two random candidates, the one with the lower EWMA latency times
  (in-flight + 1) wins (seeded, so runs are reproducible).
- ``ConsistentHash``: rendezvous hashing on a key (``context_id``): a key always lands on the
  same instance while it is eligible, and when one leaves only its keys move.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What a balancer needs to know of an instance."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class Balancer(Protocol):
    def choose(self, candidates: Sequence[C], key: str | None = None) -> C:
        """One of ``candidates`` (never empty) for the next call; ``key`` is the context id."""
        ...

    def observe(self, name: str, latency_s: float) -> None:
        """A finished call's latency on instance ``name`` (balancers that learn use it)."""
        ...


class SmoothWeightedRoundRobin:
    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def choose(self, candidates: Sequence[C], key: str | None = None) -> C:
        if len(candidates) == 1:
            return candidates[0]
        total = 0.0
        best = candidates[0]
        best_weight = float("-inf")
        for candidate in candidates:
            weight = candidate.weight
            total += weight
            current = self._current.get(candidate.name, 0.0) + weight
            self._current[candidate.name] = current
            if current > best_weight:
                best, best_weight = candidate, current
        self._current[best.name] = best_weight - total
        return best

    def observe(self, name: str, latency_s: float) -> None:
        return None


class LeastOutstanding:
    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[C], key: str | None = None) -> C:
        self._turn += 1
        count = len(candidates)
        best = candidates[self._turn % count]
        best_load = best.in_flight / best.weight
        for offset in range(1, count):
            candidate = candidates[(self._turn + offset) % count]
            load = candidate.in_flight / candidate.weight
            if load < best_load:
                best, best_load = candidate, load
        return best

    def observe(self, name: str, latency_s: float) -> None:
        return None


class PowerOfTwoEwma:
    def __init__(self, seed: int = 0, decay: float = 0.3, default_latency_s: float = 0.1) -> None:
        self._random = random.Random(seed)
        self._decay = decay
        self._default = default_latency_s
        self.latency: dict[str, float] = {}

    def choose(self, candidates: Sequence[C], key: str | None = None) -> C:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._random.sample(list(candidates), 2)
        return first if self._cost(first) <= self._cost(second) else second

    def observe(self, name: str, latency_s: float) -> None:
        previous = self.latency.get(name)
        self.latency[name] = (
            latency_s if previous is None else previous + self._decay * (latency_s - previous)
        )

    def _cost(self, candidate: Candidate) -> float:
        return self.latency.get(candidate.name, self._default) * (candidate.in_flight + 1)


class ConsistentHash:
    """Rendezvous (highest random weight) hashing, weighted; no key: round robin."""

    def __init__(self) -> None:
        self._fallback = SmoothWeightedRoundRobin()

    def choose(self, candidates: Sequence[C], key: str | None = None) -> C:
        if key is None or len(candidates) == 1:
            return self._fallback.choose(candidates)
        return max(candidates, key=lambda candidate: _score(key, candidate))

    def observe(self, name: str, latency_s: float) -> None:
        return None


def _score(key: str, candidate: Candidate) -> float:
    digest = hashlib.blake2b(f"{candidate.name}\x00{key}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / 2.0**64  # in (0, 1]
    # Weighted rendezvous: -w / ln(u) keeps each instance's share proportional to its weight.
    return -candidate.weight / math.log(unit) if unit < 1.0 else float("inf")


BALANCERS: dict[str, Callable[[], Balancer]] = {
    "round_robin": SmoothWeightedRoundRobin,
    "least_outstanding": LeastOutstanding,
    "p2c_ewma": PowerOfTwoEwma,
    "consistent_hash": ConsistentHash,
}


def build_balancer(kind: str) -> Balancer:
    """The balancer called ``kind`` (one of :data:`BALANCERS`)."""
    try:
        balancer: Balancer = BALANCERS[kind]()
    except KeyError:
        raise ValueError(f"unknown balancer '{kind}' (one of {', '.join(BALANCERS)})") from None
    return balancer
