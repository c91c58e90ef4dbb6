"""The retry delay policy: exponential growth, full jitter within [0, ceiling], a cap."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import NodeLimits
from node.outbox import Backoff


def test_no_failure_means_no_wait() -> None:
    assert Backoff(base=1.0, cap=60.0, rng=random.Random(1)).delay(0) == 0.0


def test_ceiling_doubles_from_the_base_until_the_cap() -> None:
    policy = Backoff(base=0.5, cap=10.0, rng=random.Random(1))
    ceilings = [policy.ceiling(n) for n in range(1, 9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_a_very_long_outage_stays_at_the_cap_without_overflow() -> None:
    policy = Backoff(base=0.5, cap=300.0, rng=random.Random(1))
    assert policy.ceiling(10**6) == 300.0
    assert 0.0 <= policy.delay(10**6) <= 300.0


@settings(max_examples=300, deadline=None)
@given(
    failures=st.integers(min_value=1, max_value=5000),
    base=st.floats(min_value=0.001, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=1000.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_delay_lies_between_zero_and_the_capped_exponential(
    failures: int, base: float, factor: float, seed: int
) -> None:
    policy = Backoff(base=base, cap=base * factor, rng=random.Random(seed))
    ceiling = min(policy.cap, base * 2.0 ** min(failures - 1, 1023))
    assert policy.ceiling(failures) == ceiling
    assert 0.0 <= policy.delay(failures) <= ceiling <= policy.cap


def test_jitter_spreads_delays_over_the_whole_range() -> None:
    policy = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    samples = [policy.delay(4) for _ in range(2000)]  # ceiling 8 s
    assert min(samples) < 0.5
    assert max(samples) > 7.5
    assert 3.5 < statistics.fmean(samples) < 4.5  # uniform on [0, 8]


def test_typical_delay_grows_exponentially_with_failures() -> None:
    policy = Backoff(base=1.0, cap=1000.0, rng=random.Random(11))
    means = [statistics.fmean(policy.delay(n) for _ in range(1000)) for n in range(1, 7)]
    for smaller, larger in itertools.pairwise(means):
        assert 1.6 < larger / smaller < 2.4


def test_the_same_seed_gives_the_same_delays() -> None:
    first = Backoff(base=1.0, cap=60.0, rng=random.Random(99))
    second = Backoff(base=1.0, cap=60.0, rng=random.Random(99))
    assert [first.delay(n) for n in range(1, 20)] == [second.delay(n) for n in range(1, 20)]


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_policy_without_a_positive_base_below_its_cap_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base=base, cap=cap)


def test_negative_failure_count_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Backoff(base=1.0, cap=2.0).delay(-1)


def test_policy_from_the_node_limits_uses_retry_base_and_cap() -> None:
    limits = NodeLimits(retry_base_s=0.25, retry_cap_s=30.0)
    policy = Backoff.from_limits(limits, random.Random(3))
    assert (policy.base, policy.cap) == (0.25, 30.0)
    assert policy.ceiling(20) == 30.0
