"""The traffic split: weights, sticky contexts, overrides, rollbacks and shadow mirroring."""

from __future__ import annotations

import random

import pytest

from openautoglm.core.errors import InvalidRequestError
from openautoglm.releases.split import Route, TrafficSplit, bucket

SERVING = ("1", "2")


def canary(weight: float, release_id: str | None = "rel-1", shadow: bool = False) -> Route:
    return Route(stable="1", candidate="2", weight=weight, release_id=release_id, shadow=shadow)


def split_with(route: Route | None, seed: int = 7) -> TrafficSplit:
    split = TrafficSplit(rng=random.Random(seed))
    if route is not None:
        split.set_route("glm", route)
    return split


def contexts(count: int) -> list[str]:
    return [f"ctx-{i}" for i in range(count)]


def test_no_route_means_no_version() -> None:
    split = split_with(None)
    assert split.choose("glm", "ctx", None, ()) is None
    assert split.route("glm") is None
    assert split.mirror("glm", None) is None


def test_weight_zero_serves_stable_and_hundred_serves_candidate() -> None:
    split = split_with(canary(0.0))
    assert {split.choose("glm", c, None, SERVING) for c in contexts(200)} == {"1"}
    assert {split.choose("glm", None, None, SERVING) for _ in range(200)} == {"1"}
    split.set_route("glm", canary(100.0))
    assert {split.choose("glm", c, None, SERVING) for c in contexts(200)} == {"2"}
    assert {split.choose("glm", None, None, SERVING) for _ in range(200)} == {"2"}


def test_route_without_candidate_serves_stable() -> None:
    split = split_with(Route(stable="1"))
    assert split.choose("glm", "ctx", None, ("1",)) == "1"
    assert split.choose("glm", None, None, ("1",)) == "1"


def test_contexts_spread_close_to_the_weight() -> None:
    split = split_with(canary(25.0))
    chosen = [split.choose("glm", c, None, SERVING) for c in contexts(10_000)]
    assert 2300 <= chosen.count("2") <= 2700
    assert split.pinned("glm") == 10_000


def test_requests_without_context_spread_close_to_the_weight() -> None:
    split = split_with(canary(25.0))
    chosen = [split.choose("glm", None, None, SERVING) for _ in range(10_000)]
    assert 2300 <= chosen.count("2") <= 2700
    assert split.pinned("glm") == 0


def test_first_assignment_is_the_hash_bucket() -> None:
    split = split_with(canary(10.0))
    for context in contexts(500):
        expected = "2" if bucket("rel-1", context) < 10.0 else "1"
        assert split.choose("glm", context, None, SERVING) == expected
    assert 0.0 <= bucket("rel-1", "anything") < 100.0
    assert bucket("rel-1", "ctx") == bucket("rel-1", "ctx")
    assert bucket("rel-1", "ctx") != bucket("rel-2", "ctx")


def test_pinned_contexts_never_move_while_the_weight_grows() -> None:
    split = split_with(canary(10.0))
    first = {c: split.choose("glm", c, None, SERVING) for c in contexts(2000)}
    on_stable = [c for c, v in first.items() if v == "1"]
    on_candidate = [c for c, v in first.items() if v == "2"]
    assert on_stable and on_candidate

    for weight in (25.0, 50.0, 90.0):
        split.set_route("glm", canary(weight))
        assert {split.choose("glm", c, None, SERVING) for c in on_stable} == {"1"}
        assert {split.choose("glm", c, None, SERVING) for c in on_candidate} == {"2"}
    # Contexts first seen at 50% or more land on the candidate about half the time or more.
    fresh = [split.choose("glm", f"new-{i}", None, SERVING) for i in range(2000)]
    assert fresh.count("2") > 1600

    split.set_route("glm", canary(1.0))
    assert {split.choose("glm", c, None, SERVING) for c in on_candidate} == {"2"}


def test_rollback_sends_everything_to_stable_and_drops_the_pins() -> None:
    split = split_with(canary(50.0))
    for context in contexts(100):
        split.choose("glm", context, None, SERVING)
    assert split.pinned("glm") == 100
    split.set_route("glm", Route(stable="1", candidate=None, release_id="rel-1"))
    assert split.pinned("glm") == 0
    assert {split.choose("glm", c, None, SERVING) for c in contexts(100)} == {"1"}


def test_promotion_serves_the_new_stable() -> None:
    split = split_with(canary(50.0))
    for context in contexts(100):
        split.choose("glm", context, None, SERVING)
    split.set_route("glm", Route(stable="2", release_id=None))
    assert split.pinned("glm") == 0
    assert {split.choose("glm", c, None, SERVING) for c in contexts(100)} == {"2"}


def test_a_new_release_id_resets_the_pins() -> None:
    split = split_with(canary(50.0, release_id="rel-1"))
    before = {c: split.choose("glm", c, None, SERVING) for c in contexts(1000)}
    split.set_route("glm", canary(50.0, release_id="rel-2"))
    assert split.pinned("glm") == 0
    after = {c: split.choose("glm", c, None, SERVING) for c in contexts(1000)}
    for context in contexts(1000):
        assert after[context] == ("2" if bucket("rel-2", context) < 50.0 else "1")
    assert after != before


def test_override_wins_when_serving() -> None:
    split = split_with(canary(0.0))
    assert split.choose("glm", "ctx", "2", SERVING) == "2"
    # An override does not pin: the context still gets its own assignment later.
    assert split.pinned("glm") == 0
    assert split_with(None).choose("glm", None, "1", ("1",)) == "1"


def test_override_not_serving_is_refused_naming_the_serving_versions() -> None:
    split = split_with(canary(50.0))
    with pytest.raises(InvalidRequestError) as caught:
        split.choose("glm", None, "9", SERVING)
    assert caught.value.param == "version"
    assert caught.value.code == "version_not_serving"
    assert "'9'" in caught.value.message
    assert "1, 2" in caught.value.message


def test_pins_are_lru_bounded() -> None:
    on_stable = [c for c in contexts(1000) if bucket("rel-1", c) >= 50.0][:101]
    split = TrafficSplit(rng=random.Random(1), max_pins=100)
    split.set_route("glm", canary(50.0))
    for context in on_stable[:100]:
        assert split.choose("glm", context, None, SERVING) == "1"
    split.choose("glm", on_stable[0], None, SERVING)  # most recent again
    split.choose("glm", on_stable[100], None, SERVING)  # evicts on_stable[1], the oldest
    assert split.pinned("glm") == 100
    split.set_route("glm", canary(99.999))
    assert split.choose("glm", on_stable[0], None, SERVING) == "1"
    assert split.choose("glm", on_stable[100], None, SERVING) == "1"
    assert split.choose("glm", on_stable[1], None, SERVING) == "2"  # unpinned: hashed again


def test_clear_removes_route_and_pins() -> None:
    split = split_with(canary(50.0))
    split.choose("glm", "ctx", None, SERVING)
    split.clear("glm")
    assert split.route("glm") is None
    assert split.pinned("glm") == 0
    assert split.choose("glm", "ctx", None, SERVING) is None


def test_route_weight_must_be_a_percent() -> None:
    with pytest.raises(InvalidRequestError):
        Route(stable="1", candidate="2", weight=101.0)
    with pytest.raises(InvalidRequestError):
        Route(stable="1", candidate="2", weight=-1.0)


def test_shadow_serves_stable_and_mirrors_only_context_free_requests() -> None:
    split = split_with(canary(100.0, shadow=True))
    assert split.choose("glm", None, None, SERVING) == "1"
    assert split.choose("glm", "ctx", None, SERVING) == "1"
    assert split.mirror("glm", None) == "2"
    assert split.mirror("glm", "ctx") is None


def test_shadow_weight_is_the_share_mirrored() -> None:
    split = split_with(canary(25.0, shadow=True))
    mirrored = [split.mirror("glm", None) for _ in range(10_000)]
    assert 2300 <= mirrored.count("2") <= 2700
    assert set(mirrored) == {"2", None}
    split.set_route("glm", canary(0.0, shadow=True))
    assert split.mirror("glm", None) is None


def test_no_mirror_for_plain_canaries() -> None:
    split = split_with(canary(50.0))
    assert {split.mirror("glm", None) for _ in range(100)} == {None}
