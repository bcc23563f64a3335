"""bench/run.py step_up_interleaved: arms take turns rate by rate, the order alternating, each
measured alone (every other arm's roles stopped during its step), a failed arm dropped, every arm
closed whatever happens. Fake arms (no server): the policy only."""

from __future__ import annotations

from typing import Any

import pytest

from bench.run import step_up_interleaved


class FakeArm:
    def __init__(
        self, label: str, world: dict[str, Any], fails_at: float | None = None, raises_at: float | None = None
    ) -> None:
        self.label, self.world = label, world
        self.fails_at, self.raises_at = fails_at, raises_at
        self.finished = False
        self.interleaved_with: list[str] = []
        world["running"] = world.get("running", set())
        world["calls"] = world.get("calls", [])

    def open(self) -> FakeArm:
        self.world["calls"].append(f"open {self.label}")
        return self

    def step(self, rate: float, seconds: float, min_payments: int) -> dict[str, Any]:
        assert not self.world["running"] - {self.label}, f"{self.world['running']} running beside {self.label}"
        self.world["running"].add(self.label)
        if rate == self.raises_at:
            raise RuntimeError("deployment broke")
        self.world["calls"].append(f"{self.label}@{rate:g}")
        self.finished = rate == self.fails_at
        return {"rate": rate, "sustained": not self.finished}

    def pause(self) -> None:
        self.world["running"].discard(self.label)
        self.world["calls"].append(f"pause {self.label}")

    def close(self) -> None:
        self.world["calls"].append(f"close {self.label}")

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "with": self.interleaved_with}


def test_arms_take_turns_alone_alternating_and_a_failed_arm_stops() -> None:
    world: dict[str, Any] = {}
    on, off = FakeArm("on", world), FakeArm("off", world, fails_at=300)
    out = step_up_interleaved([on, off], [10, 100, 300, 400, 600], 1, 0)  # type: ignore[list-item]
    assert out == [{"label": "on", "with": ["off"]}, {"label": "off", "with": ["on"]}]
    assert world["calls"] == [
        "open on", "open off",
        "on@10", "pause on", "off@10", "pause off",
        "off@100", "pause off", "on@100", "pause on",
        "on@300", "pause on", "off@300", "pause off",
        "on@400", "pause on",
        "on@600", "pause on",
        "close on", "close off",
    ]  # fmt: skip
    assert world["running"] == set()


def test_every_arm_is_closed_when_a_step_raises() -> None:
    world: dict[str, Any] = {}
    arms = [FakeArm("on", world), FakeArm("off", world, raises_at=100)]
    with pytest.raises(RuntimeError):
        step_up_interleaved(arms, [10, 100, 200], 1, 0)  # type: ignore[arg-type]
    assert world["calls"][-2:] == ["close on", "close off"]
