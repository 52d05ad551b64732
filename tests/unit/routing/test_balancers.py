"""Balancers: exact weighted shares, least load, EWMA preference, sticky consistent hashing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from openautoglm.routing.balancers import (
    ConsistentHash,
    LeastOutstanding,
    PowerOfTwoEwma,
    SmoothWeightedRoundRobin,
    build_balancer,
)


@dataclass
class Node:
    name: str
    weight: float = 1.0
    in_flight: int = 0


def test_smooth_weighted_round_robin_gives_5_1_1_over_7000_requests() -> None:
    nodes = [Node("a", 5), Node("b", 1), Node("c", 1)]
    balancer = SmoothWeightedRoundRobin()
    counts = Counter(balancer.choose(nodes).name for _ in range(7000))
    assert counts == {"a": 5000, "b": 1000, "c": 1000}
    window = [balancer.choose(nodes).name for _ in range(7)]
    assert Counter(window) == {"a": 5, "b": 1, "c": 1}
    assert "aa" in "".join(window) and "aaaaa" not in "".join(window)  # spread, not bunched


def test_least_outstanding_prefers_the_least_loaded_relative_to_weight() -> None:
    nodes = [Node("a", 1, in_flight=3), Node("b", 1, in_flight=1), Node("c", 2, in_flight=3)]
    balancer = LeastOutstanding()
    assert {balancer.choose(nodes).name for _ in range(10)} == {"b"}
    nodes[1].in_flight = 2  # a: 3, b: 2, c: 1.5 per unit of weight
    assert balancer.choose(nodes).name == "c"
    even = [Node("x"), Node("y")]
    assert Counter(balancer.choose(even).name for _ in range(10)) == {"x": 5, "y": 5}


def test_p2c_ewma_steers_away_from_a_slow_instance() -> None:
    nodes = [Node("fast"), Node("slow"), Node("ok")]
    balancer = PowerOfTwoEwma(seed=7)
    for _ in range(5):
        balancer.observe("fast", 0.01)
        balancer.observe("ok", 0.05)
        balancer.observe("slow", 2.0)
    counts = Counter(balancer.choose(nodes).name for _ in range(3000))
    assert counts["slow"] == 0  # it loses every pair it is drawn into
    assert counts["fast"] > counts["ok"] > 0
    assert balancer.latency["slow"] == pytest.approx(2.0)


def test_consistent_hash_is_sticky_and_moves_only_the_keys_of_a_removed_instance() -> None:
    nodes = [Node("a"), Node("b"), Node("c")]
    balancer = ConsistentHash()
    keys = [f"ctx-{i}" for i in range(3000)]
    first = {key: balancer.choose(nodes, key).name for key in keys}
    assert first == {key: balancer.choose(list(reversed(nodes)), key).name for key in keys}
    shares = Counter(first.values())
    assert all(900 <= shares[name] <= 1100 for name in "abc")
    without_b = [node for node in nodes if node.name != "b"]
    second = {key: balancer.choose(without_b, key).name for key in keys}
    moved = [key for key in keys if first[key] != second[key]]
    assert moved and all(first[key] == "b" for key in moved)
    assert {key: balancer.choose(nodes, key).name for key in keys} == first  # b is back


def test_consistent_hash_respects_weights_and_falls_back_without_a_key() -> None:
    nodes = [Node("big", 3), Node("small", 1)]
    balancer = ConsistentHash()
    shares = Counter(balancer.choose(nodes, f"k{i}").name for i in range(8000))
    assert 5700 <= shares["big"] <= 6300
    assert Counter(balancer.choose(nodes).name for _ in range(400)) == {"big": 300, "small": 100}


def test_build_balancer_names_the_choices() -> None:
    assert isinstance(build_balancer("p2c_ewma"), PowerOfTwoEwma)
    with pytest.raises(ValueError, match="least_outstanding"):
        build_balancer("random")
