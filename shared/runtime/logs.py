"""Structured logging: JSON lines in production, readable text in development.

No token reaches a log line: the services never log one, and as a second line of defence every
line is scrubbed of what looks like a credential (a JWT, a bearer token, a `token=` parameter, a
long base64 run such as an edge token) whatever path it came by: a library's warning, an exception
message, a traceback.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

# Each stops at a quote or a backslash, so scrubbing a JSON line keeps it valid JSON.
_CREDENTIALS = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)*"  # a JWT, whole or cut short
    r"|(?<=Bearer )[^\s\"'\\,]+"  # an Authorization header's value
    r"|(?<=token=)[^&\s\"'\\]+"  # a token in a query string
    r"|[A-Za-z0-9+/]{64,}={0,2}",  # a long base64 run: an edge token, a signature
    re.IGNORECASE,
)


def redact(line: str) -> str:
    return _CREDENTIALS.sub("<redacted>", line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with every `extra=` field (command_id, edge_agent_id, ...)."""

    converter = staticmethod(time.gmtime)

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(out, default=str).decode())


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        return redact(f"{base} {extras}" if extras else base)


def configure(service: str, level: str, json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats every probe; keep it at warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Its WebSocket warning repeats the subprotocols a client offered, where browsers put tokens.
    logging.getLogger("aiohttp.websocket").setLevel(logging.ERROR)
