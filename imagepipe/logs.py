"""Structured logs: one line per event, readable text or JSON (IMAGEPIPE_LOG_FORMAT=json).

Pass ids as `extra={"ticket_id": ..., "photo_id": ...}`; they are carried into every line so
an upload can be followed from api to worker to callback to replicator.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from imagepipe.config import Settings

CONTEXT_FIELDS = (
    "ticket_id",
    "photo_id",
    "key",
    "job_id",
    "event",
    "attempt",
    "status",
    "reason",
    "client",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`time role level msg key=value…`, for people."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        context = " ".join(f"{k}={v}" for k, v in _context(record).items())
        text = f"{stamp} {self.role:<10} {record.levelname:<7} {record.getMessage()} {context}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text.rstrip()


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {k: getattr(record, k) for k in CONTEXT_FIELDS if hasattr(record, k)}


def setup_logging(settings: Settings, role: str) -> None:
    """Route every logger (ours, arq's, uvicorn's) through one formatter on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(role) if settings.log_format == "json" else TextFormatter(role)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # access lines for every poll would drown the events that matter
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per callback POST is noise
