"""Who is calling: agent id and token checks shared by `/edge/ws` and `/edge/sync` (DESIGN section 3)."""

from __future__ import annotations

from aiohttp import web

from shared.auth import EdgeAuthError, EdgeIdentity, bearer, verify_edge_token
from shared.protocol.errors import ErrorCode
from shared.protocol.subjects import is_token

from .config import EdgeGatewaySettings


class HandshakeRefused(Exception):
    """A refusal answered before any upgrade or body work, as `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def outcome(self) -> str:
        """Metric label: a bounded word for why."""
        return {400: "bad_request", 401: "unauthorized", 403: "forbidden"}.get(self.status, "refused")

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return error_response(self.status, self.code, self.message, headers)


def error_response(
    status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": str(code), "message": message}}, status=status, headers=headers
    )


def agent_id_of(request: web.Request, socket: bool) -> str:
    """The agent id of the `X-Edge-Agent-Id` header, and for a socket also of the query: both agree."""
    header = request.headers.get("X-Edge-Agent-Id")
    query = request.query.get("edge_agent_id")
    if header is None:
        raise HandshakeRefused(400, ErrorCode.INVALID_AGENT_ID, "the X-Edge-Agent-Id header is required")
    if socket and query is None:
        raise HandshakeRefused(
            400, ErrorCode.INVALID_AGENT_ID, "the edge_agent_id query parameter is required"
        )
    given = [v for v in (header, query) if v is not None]
    if not all(is_token(v) for v in given):
        raise HandshakeRefused(
            400, ErrorCode.INVALID_AGENT_ID, "edge_agent_id must match ^[A-Za-z0-9_-]{1,128}$"
        )
    if len(set(given)) > 1:
        raise HandshakeRefused(
            403, ErrorCode.FORBIDDEN, "edge_agent_id in query and X-Edge-Agent-Id disagree"
        )
    return header


def authenticate(request: web.Request, settings: EdgeGatewaySettings, socket: bool) -> EdgeIdentity:
    """Resolve and verify the caller, or raise `HandshakeRefused` with the contract's status."""
    edge_agent_id = agent_id_of(request, socket)
    try:
        return verify_edge_token(
            bearer(request.headers.get("Authorization")),
            edge_agent_id,
            settings.secrets,
            settings.edge_token_max_age_s,
            settings.allow_legacy_secret,
        )
    except EdgeAuthError as err:
        raise HandshakeRefused(err.status, err.code, err.message) from None
