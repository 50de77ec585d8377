"""One logging set-up for every ``ppn`` process (issue 17; RFC-NOTES §1.5).

Cores return events and never log; adapters log through the stdlib ``logging`` module under
their package's name (``ppn.mesh``, ``ppn.fleet.controller``, ``psp.vault``…). This module is
the one place that decides how those records look: one line per event on stderr, as text by
default or as a JSON object with ``--log-format json``, filtered by ``--log-level``. Both are
global options of ``ppn`` and, like every flag, settable in ppn.toml (top-level ``log-format``,
``log-level``) and the environment (``PPN_LOG_FORMAT``, ``PPN_LOG_LEVEL``).

A record's *event* is a stable name for what happened: the ``event`` given in ``extra=`` where
a call site names one (``listening``, ``ready``, ``crash``…), else the message template before
its arguments are filled in, so every occurrence of one kind of event groups together.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = [
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "event_of",
    "report_crash",
]

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
# Libraries that chat at INFO: their lines are shown from WARNING unless --log-level debug.
_QUIET = ("zeroconf", "pyroute2", "trio")
# Standard LogRecord attributes; anything else a caller put in ``extra=`` is a field of the line.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "event",
}


def event_of(record: logging.LogRecord) -> str:
    """The record's event name: ``extra={"event": ...}``, else its message template."""
    named = record.__dict__.get("event")
    return named if isinstance(named, str) else str(record.msg)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``2026-12-05T14:30:00.123Z info ppn.mesh: message key=value``; a traceback, when there
    is one, follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname.lower()} {record.name}: "
            f"{record.getMessage()}{' ' + extra if extra else ''}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event``, ``message``, the
    call site's extra fields, and ``traceback`` when the record carries one (as one string, so
    the line stays one line)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event_of(record),
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(log_format: str = "text", level: str = "info") -> None:
    """Send every record at ``level`` or above to stderr, one event per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.captureWarnings(True)


def report_crash(version: str, exc: BaseException) -> None:
    """An unexpected exception: its traceback, once, with the version, through the log set-up
    (a JSON line under ``--log-format json``)."""
    logging.getLogger("ppn").critical(
        "unexpected error in ppn %s (a bug: please report it with this traceback): %s",
        version,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"event": "crash", "version": version},
    )
