"""Settings common to every service; each service extends `ServiceSettings` in its own config module.

Every setting is an environment variable. A secret may also come from a file: `NAME_FILE` holds
the path (how Kubernetes mounts Secrets), and wins over `NAME`.

Fail closed: with nothing set a service is `production`, listens on every interface and refuses to
start without real secrets; `development` (set explicitly, by `make run` and the tests) listens on
127.0.0.1 and allows the conveniences each service documents.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Settings a service may read from `NAME_FILE` (subclasses extend it).
    FILE_SETTINGS: ClassVar[tuple[str, ...]] = ()

    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str | None = None
    environment: Environment = Environment.PRODUCTION
    # None: every interface in production and staging, loopback in development.
    host: str | None = None
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] | None = None
    shutdown_delay_s: float = Field(default=0.0, ge=0)
    shutdown_grace_s: float = Field(default=25.0, gt=0)
    # Replicas of the JetStream streams and buckets a service creates (3 in a production cluster).
    jetstream_replicas: int = Field(default=1, ge=1, le=5)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in cls.FILE_SETTINGS:
            path = os.environ.get(f"{name.upper()}_FILE")
            if path:
                data[name] = Path(path).read_text().strip()
        return data

    @property
    def listen_host(self) -> str:
        if self.host is not None:
            return self.host
        return "127.0.0.1" if self.environment is Environment.DEVELOPMENT else "0.0.0.0"

    @property
    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]

    @property
    def json_logs(self) -> bool:
        if self.log_format is not None:
            return self.log_format == "json"
        return self.environment is Environment.PRODUCTION


# Shortest secret accepted outside development (HMAC-SHA256 keys and Supabase JWT secrets alike).
MIN_SECRET_BYTES = 32


def check_secret(
    name: str, value: str | None, environment: Environment, published: str | None = None
) -> None:
    """Refuse, outside development, a secret shorter than `MIN_SECRET_BYTES` or one published in
    this repository; raises `ValueError` naming the setting."""
    if value is None or environment is Environment.DEVELOPMENT:
        return
    if published is not None and value == published:
        raise ValueError(f"{name} is the published development secret; set a secret of your own")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{name} must be at least {MIN_SECRET_BYTES} bytes when ENVIRONMENT={environment}")


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], service: str) -> S:
    """Build settings from the environment, or exit with one line naming what is wrong."""
    try:
        return cls()
    except (ValidationError, OSError) as err:
        if isinstance(err, ValidationError):
            first = err.errors()[0]
            if first["loc"]:
                message = f"{service}: invalid setting {str(first['loc'][0]).upper()}: {first['msg']}"
            else:  # a whole-settings rule, whose message names the setting itself
                message = f"{service}: {first['msg'].removeprefix('Value error, ')}"
        else:
            message = f"{service}: cannot read a setting file: {err}"
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
