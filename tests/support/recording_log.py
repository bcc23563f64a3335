"""A logger stand-in for unit tests of code that takes `log=`: it records (event, fields)."""

from __future__ import annotations


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def error(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    def info(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    def tagged(self, tag: str) -> list[dict]:
        """The fields of every line logged with `tag`."""
        return [kw for event, kw in self.lines if event == tag]
