"""bench/output.py: every bench command prints its JSON and writes the same text to --output."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bench.output import emit


def test_printed_and_written_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new" / "folder" / "result.json"
    text = emit({"rate": 10.0, "when": dt.date(2026, 12, 7)}, path, default=str)
    assert json.loads(capsys.readouterr().out) == {"rate": 10.0, "when": "2026-12-07"}
    assert path.read_text() == text + "\n"


def test_without_a_path_only_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    emit({"a": 1}, None)
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    assert list(tmp_path.iterdir()) == []
