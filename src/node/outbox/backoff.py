"""The retry delay policy of the outbox: exponential backoff with full jitter and a cap.

Owns one pure decision — how long a sender loop waits after its ``n``-th failure in a row — so
that the loop itself holds no arithmetic and the policy can be tested without a clock.

Invariants:

* ``delay(0)`` is ``0``: a peer with no failure is never made to wait.
* For ``n >= 1`` the delay is drawn uniformly from ``[0, ceiling(n)]`` ("full jitter"), where
  ``ceiling(n) = min(cap, base * 2 ** (n - 1))``. Full jitter spreads the retries of many
  nodes that lost the same peer at the same moment, so its return is not met by a thundering
  herd; the cap bounds the wait an operator sees after a long outage.
* The policy is frozen and reads no clock. Its randomness comes from the injected
  ``random.Random``: seed it in tests, and a run is reproducible. Jitter is not a security
  property, so a non-cryptographic generator is right here.
* The policy does not count failures: the sender loop does, and resets its count to zero when
  the peer is seen again (a request or heartbeat from it), so a peer that returns is retried at
  once rather than after the long delay its outage had built up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from node.config import NodeLimits

# 2 ** 1023 is the largest power of two a float holds: beyond it the ceiling is the cap anyway.
_MAX_EXPONENT: Final = 1023


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter and a cap.

    Attributes:
        base: the ceiling of the first retry delay, in seconds (> 0).
        cap: the largest delay ever returned, in seconds (>= base).
        rng: the source of jitter; inject a seeded ``random.Random`` for reproducible tests.
    """

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError("backoff base must be positive")
        if not self.cap >= self.base:
            raise ValueError("backoff cap must be at least the base")

    @classmethod
    def from_limits(cls, limits: NodeLimits, rng: random.Random | None = None) -> Backoff:
        """Build the policy from the node's limits (``retry_base_s``, ``retry_cap_s``).

        Args:
            limits: the node's configured limits.
            rng: the jitter source; a fresh unseeded generator when ``None``.

        Returns:
            The policy.
        """
        return cls(limits.retry_base_s, limits.retry_cap_s, rng or random.Random())  # noqa: S311 (jitter)

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` failures in a row (no jitter).

        Args:
            failures: consecutive failures so far (``>= 0``).

        Returns:
            ``0`` for no failure, else ``min(cap, base * 2 ** (failures - 1))``.

        Raises:
            ValueError: ``failures`` is negative.
        """
        if failures < 0:
            raise ValueError("failures must not be negative")
        if failures == 0:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - 1, _MAX_EXPONENT))

    def delay(self, failures: int) -> float:
        """The jittered delay to wait after ``failures`` failures in a row.

        Args:
            failures: consecutive failures so far (``>= 0``).

        Returns:
            A delay drawn uniformly from ``[0, ceiling(failures)]``, in seconds.

        Raises:
            ValueError: ``failures`` is negative.
        """
        ceiling = self.ceiling(failures)
        if ceiling == 0.0:
            return 0.0
        return self.rng.uniform(0.0, ceiling)
