"""Command dispatcher settings (DESIGN sections 2 and 4), all from the environment."""

from __future__ import annotations

from pydantic import Field

from shared.runtime.config import ServiceSettings

from .lifecycle import Timing


class DispatcherSettings(ServiceSettings):
    port: int = Field(default=8082, ge=0, le=65535)
    ack_timeout_s: float = Field(default=10.0, gt=0)
    max_ack_timeout_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    execution_timeout_s: float = Field(default=1800.0, gt=0)
    max_queued_per_agent: int = Field(default=1000, ge=1)
    # How long after an agent connects the timers deliver what its connect pull did not take.
    connect_grace_s: float = Field(default=1.0, gt=0)
    # The stored-ack consumer's ack wait: acks held by a replica that died are applied by another
    # after this long.
    failover_s: float = Field(default=1.0, gt=0)

    @property
    def timing(self) -> Timing:
        return Timing(
            ack_timeout_s=self.ack_timeout_s,
            max_ack_timeout_s=self.max_ack_timeout_s,
            max_attempts=self.max_attempts,
            execution_timeout_s=self.execution_timeout_s,
            connect_grace_s=self.connect_grace_s,
        )
