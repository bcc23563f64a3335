"""Back-off schedules: pure functions, no I/O, so every policy that uses them is unit-testable.

`capped_exponential` is the shape everyone uses (base * 2^(n-1), capped); the jitter helpers
spread many processes apart so they do not retry in lockstep after a shared outage.
"""

from __future__ import annotations

import random


def capped_exponential(attempt: int, base: float, cap: float) -> float:
    """Delay after the n-th consecutive failure (n >= 1): base * 2^(n-1), at most `cap`."""
    return min(cap, base * 2.0 ** min(max(0, attempt - 1), 62))


def full_jitter(delay: float, rng: random.Random) -> float:
    """Uniform in [0, delay]: the AWS "full jitter" schedule, best for many clients."""
    return rng.uniform(0.0, delay)


def half_jitter(delay: float, rng: random.Random) -> float:
    """Uniform in [delay/2, delay]: keeps a floor, so a waiting process never spins."""
    return delay * (0.5 + 0.5 * rng.random())


class Backoff:
    """The delay before the next try of something that keeps failing: capped exponential in the
    number of consecutive failures, half-jittered (`exact=True`: none), forgotten on success.
    The one retry schedule of every loop that waits for a dependency."""

    def __init__(self, base: float, cap: float, *, rng: random.Random | None = None, exact: bool = False) -> None:
        self.base, self.cap = base, cap
        self.exact = exact
        self.rng = rng or random.Random()
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; the delay to wait before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def delay(self, failures: int) -> float:
        """The delay after `failures` consecutive failures (pure apart from the jitter)."""
        delay = capped_exponential(failures, self.base, self.cap)
        return delay if self.exact else half_jitter(delay, self.rng)

    def succeeded(self) -> None:
        self.failures = 0
