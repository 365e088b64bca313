"""Edge agent tokens (DESIGN section 3): the HMAC format real agents produce, plus the legacy secret.

Every secret comparison is constant-time. A verified token yields the agent's identity; a refused
one raises `EdgeAuthError` carrying the HTTP status the upgrade or `/edge/sync` answers with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

from shared.protocol.errors import ErrorCode, IkiroError

FUTURE_SKEW_S = 300
# A unix time in seconds has 10 digits until the year 2286; more is not a timestamp.
MAX_TS_DIGITS = 12
# Accepted only with ENVIRONMENT=development and no EDGE_SECRET set, so `make run` needs nothing.
DEV_EDGE_SECRET = "dev-edge-secret"


class EdgeAuthError(IkiroError, PermissionError):
    code = ErrorCode.UNAUTHORIZED

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message, code=ErrorCode.FORBIDDEN if status == 403 else ErrorCode.UNAUTHORIZED)
        self.status = status


@dataclass(frozen=True, slots=True)
class EdgeIdentity:
    edge_agent_id: str
    user_phone: str | None  # None for the legacy raw secret
    legacy: bool


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def generate_edge_token(edge_agent_id: str, user_phone: str, secret: str, now: float | None = None) -> str:
    """An HMAC edge token, exactly as deployed edge agents build it."""
    ts = int(time.time() if now is None else now)
    message = f"{edge_agent_id}:{user_phone}:{ts}"
    return base64.b64encode(f"{message}:{_sign(secret, message)}".encode()).decode()


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def verify_edge_token(
    token: str | None,
    edge_agent_id: str,
    secrets: list[str],
    max_age_s: float,
    allow_legacy: bool,
    now: float | None = None,
) -> EdgeIdentity:
    """Check `token` for `edge_agent_id`: signed with any of `secrets` (current first), or, when
    `allow_legacy`, the raw current secret itself (never a previous one)."""
    if not token:
        raise EdgeAuthError("missing bearer token")
    if allow_legacy and hmac.compare_digest(token.encode(), secrets[0].encode()):
        return EdgeIdentity(edge_agent_id=edge_agent_id, user_phone=None, legacy=True)
    try:
        decoded = base64.b64decode(token.encode(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise EdgeAuthError("token is not a signed edge token") from None
    message, sep, signature = decoded.rpartition(":")
    token_agent, sep2, rest = message.partition(":")
    user_phone, sep3, ts_text = rest.rpartition(":")
    # str.isdigit() takes '²' and other scripts' digits, which int() then refuses.
    well_formed = ts_text.isascii() and ts_text.isdigit() and len(ts_text) <= MAX_TS_DIGITS
    if not (sep and sep2 and sep3 and well_formed):
        raise EdgeAuthError("token is not a signed edge token")
    if not any(hmac.compare_digest(_sign(s, message).encode(), signature.encode()) for s in secrets):
        raise EdgeAuthError("token signature does not match")
    if not hmac.compare_digest(token_agent.encode(), edge_agent_id.encode()):
        raise EdgeAuthError("token belongs to another agent", status=403)
    age = (time.time() if now is None else now) - int(ts_text)
    if age > max_age_s:
        raise EdgeAuthError("token expired")
    if age < -FUTURE_SKEW_S:
        raise EdgeAuthError("token issued in the future")
    return EdgeIdentity(edge_agent_id=edge_agent_id, user_phone=user_phone, legacy=False)
