"""Error codes, close codes, the one root exception, and the one mapping of failures to the wire."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any

from pydantic import ValidationError


class ErrorCode(StrEnum):
    """Every error code any interface of the backend can answer with."""

    # Internal NATS API (DESIGN section 4).
    INVALID_REQUEST = "invalid_request"
    INVALID_PAYLOAD = "invalid_payload"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    NOT_CANCELLABLE = "not_cancellable"
    QUEUE_FULL = "queue_full"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"
    # WebSocket frames.
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    VERSION_CONFLICT = "version_conflict"
    STATE_TOO_LARGE = "state_too_large"
    INVALID_TOKEN = "invalid_token"
    # HTTP handshake / sync.
    INVALID_AGENT_ID = "invalid_agent_id"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"


class CloseCode(IntEnum):
    """WebSocket close codes (DESIGN section 6)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # idle timeout
    POLICY_VIOLATION = 1008  # repeated unusable frames, sustained rate abuse
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # reconnect now, to another replica
    TRY_AGAIN_LATER = 1013  # slow consumer, overload
    REPLACED = 4000  # a newer socket of the same edge agent
    UNAUTHORIZED = 4001  # MiniApp: missing, bad or expired token
    FORBIDDEN = 4003  # MiniApp: role not allowed, or not a member of the session
    SESSION_FULL = 4029
    BAD_SESSION_ID = 4400
    ABNORMAL = 1006  # never sent: what a peer sees when the connection drops without a close


class IkiroError(Exception):
    """Root of every expected failure; `code` is what the client sees."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, code: ErrorCode | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidRequest(IkiroError, ValueError):
    code = ErrorCode.INVALID_REQUEST


class InvalidPayload(IkiroError, ValueError):
    code = ErrorCode.INVALID_PAYLOAD


class NotFound(IkiroError, LookupError):
    code = ErrorCode.NOT_FOUND


class Conflict(IkiroError):
    code = ErrorCode.CONFLICT


class NotCancellable(IkiroError):
    code = ErrorCode.NOT_CANCELLABLE


class QueueFull(IkiroError):
    code = ErrorCode.QUEUE_FULL


class Unavailable(IkiroError, ConnectionError):
    code = ErrorCode.UNAVAILABLE


class NoResponders(Unavailable):
    """Nobody subscribes to the subject at all (for a delivery: no socket anywhere)."""


def describe(err: ValidationError) -> str:
    """One readable line naming the first offending field."""
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def refusal(err: ValidationError, code: ErrorCode = ErrorCode.INVALID_REQUEST, **extra: Any) -> IkiroError:
    """The error a client gets for input that failed validation.

    For a WebSocket frame (`code` INVALID_FRAME) the kind of failure picks the code: not JSON
    at all, an unknown `type`, or a frame of the right type with unusable fields.
    """
    if code is ErrorCode.INVALID_FRAME:
        first = err.errors(include_url=False)[0]
        kind = first["type"]
        if kind == "json_invalid":
            return IkiroError("frame is not valid JSON", ErrorCode.INVALID_JSON)
        if kind == "union_tag_invalid":
            return IkiroError(f"unknown frame type {first['input']!r:.64}", ErrorCode.UNKNOWN_TYPE, **extra)
        if kind in ("union_tag_not_found", "model_attributes_type", "model_type"):
            return IkiroError("frame must be an object {type, data}", code, **extra)
    return _BY_CODE.get(code, IkiroError)(describe(err), code, **extra)


def error_body(exc: BaseException) -> dict[str, Any]:
    """The wire shape `{"code", "message", ...}` of an exception; internals never leak."""
    if isinstance(exc, IkiroError):
        return {"code": str(exc.code), "message": exc.message, **exc.extra}
    return {"code": str(ErrorCode.INTERNAL_ERROR), "message": "internal error"}


def error_from_body(body: dict[str, Any]) -> IkiroError:
    """Rebuild the exception a `{"ok": false}` reply carries."""
    try:
        code = ErrorCode(body.get("code", ErrorCode.INTERNAL_ERROR))
    except ValueError:
        code = ErrorCode.INTERNAL_ERROR
    cls = _BY_CODE.get(code, IkiroError)
    extra = {k: v for k, v in body.items() if k not in ("code", "message")}
    return cls(str(body.get("message", "")), code=code, **extra)


_BY_CODE: dict[ErrorCode, type[IkiroError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.INVALID_PAYLOAD: InvalidPayload,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.NOT_CANCELLABLE: NotCancellable,
    ErrorCode.QUEUE_FULL: QueueFull,
    ErrorCode.UNAVAILABLE: Unavailable,
}
