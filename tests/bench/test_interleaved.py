"""bench/run.py step_up_interleaved: arms take turns rate by rate, the order alternating, each
measured alone (paused after its step), a failed arm dropped, every arm closed whatever happens.
Fake arms (no server): the policy only."""

from __future__ import annotations

from typing import Any

import pytest

from bench.run import step_up_interleaved


class FakeArm:
    def __init__(self, name: str, calls: list[str], fails_at: float | None = None, raises_at: float | None = None):
        self.name, self.calls = name, calls
        self.fails_at, self.raises_at = fails_at, raises_at
        self.finished = False
        self.running = False

    def open(self) -> FakeArm:
        self.calls.append(f"open {self.name}")
        return self

    def step(self, rate: float, seconds: float, min_payments: int) -> dict[str, Any]:
        assert not self.running, "an arm's roles are started for its step only"
        if rate == self.raises_at:
            raise RuntimeError("deployment broke")
        self.calls.append(f"{self.name}@{rate:g}")
        self.running = True
        self.finished = rate == self.fails_at
        return {"rate": rate, "sustained": not self.finished}

    def pause(self) -> None:
        self.running = False

    def close(self) -> None:
        self.calls.append(f"close {self.name}")

    def summary(self) -> dict[str, Any]:
        return {"name": self.name}


def test_arms_take_turns_alternating_and_a_failed_arm_stops() -> None:
    calls: list[str] = []
    on, off = FakeArm("on", calls), FakeArm("off", calls, fails_at=300)
    out = step_up_interleaved([on, off], [10, 100, 300, 400, 600], 1, 0)  # type: ignore[list-item]
    assert out == [{"name": "on"}, {"name": "off"}]
    assert calls == [
        "open on", "open off",
        "on@10", "off@10",
        "off@100", "on@100",
        "on@300", "off@300",
        "on@400",
        "on@600",
        "close on", "close off",
    ]  # fmt: skip


def test_every_arm_is_closed_when_a_step_raises() -> None:
    calls: list[str] = []
    arms = [FakeArm("on", calls), FakeArm("off", calls, raises_at=100)]
    with pytest.raises(RuntimeError):
        step_up_interleaved(arms, [10, 100, 200], 1, 0)  # type: ignore[arg-type]
    assert calls[-2:] == ["close on", "close off"]
