"""The one way a bench command hands over its result: the JSON document printed to stdout and,
with an output path, written there too (its folder made)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit(doc: dict[str, Any], path: str | Path | None, *, default: Callable[[Any], Any] | None = None) -> str:
    """Print `doc` as indented JSON; write it to `path` when given. Returns the text."""
    text = json.dumps(doc, indent=2, default=default)
    print(text)
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return text
