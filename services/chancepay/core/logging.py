"""structlog configured the production way: one JSON object per line on stdout.

`role` and, where known, `uuid` are bound through contextvars so every line carries them.
Third-party loggers (uvicorn, aiormq, asyncio) are routed into the same JSON stream. JSON
rendering escapes control characters, so client input cannot forge a log line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure(role: str, level: str = "INFO", stream: Any = None) -> None:
    """JSON lines to `stream` (stdout; tools whose stdout is their report log to stderr)."""
    stream = sys.stdout if stream is None else stream
    level_no = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(role=role)

    handler = logging.StreamHandler(stream)
    handler.addFilter(_rename_uvicorn)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.INFO) if level_no < logging.INFO else level_no)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiormq", "asyncmy", "httpx", "asyncio"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # aiormq logs every broker hiccup at WARNING with tracebacks; our own tagged lines say it better.
    logging.getLogger("aiormq").setLevel(logging.ERROR)
    # asyncmy logs server notes (e.g. "user already exists" on IF NOT EXISTS) as warnings.
    logging.getLogger("asyncmy").setLevel(logging.ERROR)
    # httpx logs every request at INFO: at hundreds of callbacks a second that is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _rename_uvicorn(record: logging.LogRecord) -> bool:
    """uvicorn logs its server messages (startup, shutdown) under "uvicorn.error", whatever their
    level: `grep error` would find "Started server process". They are the server's: "uvicorn"."""
    if record.name == "uvicorn.error":
        record.name = "uvicorn"
    return True


def get_logger() -> Any:
    return structlog.get_logger()


bound = structlog.contextvars.bound_contextvars
