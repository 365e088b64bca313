"""Edge gateway settings (DESIGN sections 2 and 3), all from the environment."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, model_validator

from shared.auth import DEV_EDGE_SECRET
from shared.protocol.edge import MAX_FRAME_BYTES
from shared.runtime.config import Environment, ServiceSettings, check_secret


class EdgeGatewaySettings(ServiceSettings):
    FILE_SETTINGS: ClassVar[tuple[str, ...]] = ("edge_secret", "edge_secret_previous")

    port: int = Field(default=8080, ge=0, le=65535)
    edge_secret: str | None = Field(default=None, min_length=1)
    edge_secret_previous: str | None = Field(default=None, min_length=1)
    edge_token_max_age_s: float = Field(default=90000, gt=0)
    sync_rate_per_min: int = Field(default=60, ge=1)
    idle_timeout_s: float = Field(default=90.0, gt=0)
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, gt=0)
    max_bad_frames_per_min: int = Field(default=20, ge=1)
    # A frame the agent does not take within this long closes its socket (1013), as does a
    # backlog over either bound.
    send_timeout_s: float = Field(default=10.0, gt=0)
    outbox_max_frames: int = Field(default=1000, ge=1)
    outbox_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    upstream_timeout_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _real_secrets_outside_development(self) -> Self:
        if self.environment is not Environment.DEVELOPMENT and not self.edge_secret:
            raise ValueError(f"EDGE_SECRET is required when ENVIRONMENT={self.environment}")
        check_secret("EDGE_SECRET", self.edge_secret, self.environment, published=DEV_EDGE_SECRET)
        check_secret("EDGE_SECRET_PREVIOUS", self.edge_secret_previous, self.environment, DEV_EDGE_SECRET)
        return self

    @property
    def secrets(self) -> list[str]:
        # The published development secret only where the validator allows no secret at all.
        current = self.edge_secret or DEV_EDGE_SECRET
        return [current, self.edge_secret_previous] if self.edge_secret_previous else [current]

    @property
    def allow_legacy_secret(self) -> bool:
        return self.environment is not Environment.PRODUCTION
