"""Error codes and the one root exception every service raises and maps to the wire."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


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
    return cls(str(body.get("message", "")), code=code)


_BY_CODE: dict[ErrorCode, type[IkiroError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.INVALID_PAYLOAD: InvalidPayload,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.NOT_CANCELLABLE: NotCancellable,
    ErrorCode.QUEUE_FULL: QueueFull,
    ErrorCode.UNAVAILABLE: Unavailable,
}
