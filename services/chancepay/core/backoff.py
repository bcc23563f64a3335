"""Back-off schedules: pure functions, no I/O, so every policy that uses them is unit-testable.

`capped_exponential` is the shape everyone uses (base * 2^(n-1), capped); the jitter helpers
spread many processes apart so they do not retry in lockstep after a shared outage.
"""

from __future__ import annotations

import random


def capped_exponential(attempt: int, base: float, cap: float) -> float:
    """Delay after the n-th consecutive failure (n >= 1): base * 2^(n-1), at most `cap`."""
    return min(cap, base * 2 ** min(max(0, attempt - 1), 62))


def full_jitter(delay: float, rng: random.Random) -> float:
    """Uniform in [0, delay]: the AWS "full jitter" schedule, best for many clients."""
    return rng.uniform(0.0, delay)


def half_jitter(delay: float, rng: random.Random) -> float:
    """Uniform in [delay/2, delay]: keeps a floor, so a waiting process never spins."""
    return delay * (0.5 + 0.5 * rng.random())
