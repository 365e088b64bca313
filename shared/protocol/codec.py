"""JSON on the wire: one encoder for bodies and for the `{type, data}` envelope, and UTC timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.protocol.errors import IkiroError, error_body


def dumps(obj: Any) -> bytes:
    """Serialise plain data or a pydantic model to compact JSON bytes."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json().encode()
    try:
        return orjson.dumps(obj)
    except TypeError:
        # orjson stops at 64-bit integers; JSON has no such limit, and clients do send bigger ones.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def encode(type_: str, data: BaseModel | dict[str, Any]) -> bytes:
    """One `{"type", "data"}` frame; a model's optional fields left unset are omitted."""
    body = data.model_dump(mode="json", exclude_none=True) if isinstance(data, BaseModel) else data
    return dumps({"type": type_, "data": body})


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """ISO-8601 UTC with a `Z`, the form edge agents parse."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(utcnow())


def error_frame(err: IkiroError) -> bytes:
    """The `error` frame of a refused client frame: `code`, `message` and any extra fields."""
    return encode("error", error_body(err))
