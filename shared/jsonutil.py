"""Fast JSON encoding for wire frames and NATS bodies (orjson)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel


def dumps(obj: Any) -> bytes:
    """Serialise plain data or a pydantic model to compact JSON bytes."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(exclude_none=False).encode()
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """ISO-8601 UTC with a `Z`, the form edge agents parse."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(utcnow())
