"""Settings of the MiniApp gateway (DESIGN sections 2 and 5); every one is an environment variable."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.protocol.miniapp import (
    MAX_CONNECTIONS_PER_SESSION,
    MAX_FRAME_BYTES,
    MAX_SOCKETS_PER_USER,
    MAX_STATE_BYTES,
)
from shared.runtime.config import Environment, ServiceSettings, check_secret


class MiniAppSettings(ServiceSettings):
    FILE_SETTINGS: ClassVar[tuple[str, ...]] = ("supabase_jwt_secret",)

    port: int = Field(default=8081, ge=0, le=65535)

    # Token verification: an HS256 secret, and/or a JWKS (URL or file) for RS256/ES256.
    supabase_jwt_secret: str | None = None
    supabase_jwks_url: str | None = None
    supabase_jwks_file: str | None = None
    jwt_audience: str = "authenticated"
    # Clock skew allowed on `exp` (DESIGN: 30 s), at connect and while connected.
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    # Token `role` claims allowed into sessions; another role is closed with 4003.
    miniapp_allowed_roles: tuple[str, ...] = ("authenticated",)
    # Who may join a session nobody configured: only listed members (the default in production)
    # or any authenticated user (the default elsewhere). DESIGN section 5, "Who may join".
    miniapp_session_access: Literal["members", "open"] | None = None
    # Browser origins allowed to open a socket (comma-separated, exact `scheme://host[:port]`);
    # unset allows any. A socket without an `Origin` header is not from a browser and is not checked.
    miniapp_allowed_origins: Annotated[frozenset[str] | None, NoDecode] = None
    # The development page (`devpage.py`): on by default in development only, never in production.
    miniapp_dev_page: bool | None = None

    # Contract limits (DESIGN section 5).
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=1024)
    max_state_bytes: int = Field(default=MAX_STATE_BYTES, ge=1024, le=768 * 1024)
    max_connections_per_session: int = Field(default=MAX_CONNECTIONS_PER_SESSION, ge=1)
    miniapp_max_sockets_per_user: int = Field(default=MAX_SOCKETS_PER_USER, ge=1)
    rate_per_s: float = Field(default=30.0, gt=0)
    rate_burst: int = Field(default=60, ge=1)
    # Frames refused for rate within `rate_abuse_window_s` that close the socket with 1008.
    rate_abuse_limit: int = Field(default=60, ge=1)
    rate_abuse_window_s: float = Field(default=10.0, gt=0)
    outbox_max_frames: int = Field(default=1000, ge=1)
    outbox_max_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Queued frames past which `typing` presence is no longer queued for a socket.
    outbox_typing_drop_frames: int = Field(default=100, ge=0)
    # A frame the browser does not take within this long closes its socket (1013).
    write_timeout_s: float = Field(default=10.0, gt=0)

    # Liveness: a replica renews its lease every heartbeat; a lease not renewed for
    # `presence_ttl_s` (whole seconds) expires and the replica's connections are reported `left`.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    presence_ttl_s: int = Field(default=6, ge=1)
    # Sessions with no connections and no update for this long are removed.
    session_idle_ttl_s: int = Field(default=86400, ge=1)
    # Revisions of a session kept in JetStream: how far a replica's watcher may lag (its consumer
    # lost with a NATS node) and still send its sockets every version it missed, echoes included.
    session_history: int = Field(default=64, ge=2, le=64)
    ws_heartbeat_s: float = Field(default=30.0, gt=0)

    @field_validator("miniapp_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(o.strip().rstrip("/").lower() for o in value.split(",") if o.strip())
        return value

    def allows_origin(self, origin: str | None) -> bool:
        if origin is None or self.miniapp_allowed_origins is None:
            return True
        return origin.rstrip("/").lower() in self.miniapp_allowed_origins

    @property
    def open_by_default(self) -> bool:
        """Whether a session without a member list admits every authenticated user."""
        if self.miniapp_session_access is None:
            return self.environment is not Environment.PRODUCTION
        return self.miniapp_session_access == "open"

    def allows_role(self, role: str | None) -> bool:
        """Whether a token's `role` may be in sessions (DESIGN names no role claim: none is fine)."""
        return role is None or role in self.miniapp_allowed_roles

    @property
    def dev_page(self) -> bool:
        if self.miniapp_dev_page is None:
            return self.environment is Environment.DEVELOPMENT
        return self.miniapp_dev_page

    @model_validator(mode="after")
    def _needs_a_key(self) -> Self:
        if not self.supabase_jwt_secret and not self.supabase_jwks_url and not self.supabase_jwks_file:
            raise ValueError(
                "SUPABASE_JWT_SECRET, SUPABASE_JWKS_URL or SUPABASE_JWKS_FILE is required "
                "to verify MiniApp tokens"
            )
        check_secret("SUPABASE_JWT_SECRET", self.supabase_jwt_secret, self.environment)
        if self.supabase_jwks_url and self.supabase_jwks_file:
            raise ValueError("set only one of SUPABASE_JWKS_URL and SUPABASE_JWKS_FILE")
        if self.miniapp_dev_page and self.environment is Environment.PRODUCTION:
            raise ValueError("MINIAPP_DEV_PAGE cannot be on when ENVIRONMENT=production")
        if self.heartbeat_interval_s * 2 > self.presence_ttl_s:
            raise ValueError("HEARTBEAT_INTERVAL_S must be at most half of PRESENCE_TTL_S")
        return self
