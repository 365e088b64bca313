"""The MiniApp side from outside (DESIGN sections 2 and 5): replicas as processes, tokens minted
with pyjwt (or forged by hand, as an attacker would), browsers over the wire."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.harness.proc import Service
from tests.harness.ws import JsonObj, Socket, connect

SECRET = "contract-miniapp-secret-" + "0123456789abcdef" * 3  # long enough for HS512 too
AUDIENCE = "contract-audience"
# The cap is configurable (DESIGN section 5, "Limits (configurable)"); a small one keeps the test short.
CAP = 5


def replica_env(nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "SUPABASE_JWT_SECRET": SECRET,
        "JWT_AUDIENCE": AUDIENCE,
        "MAX_CONNECTIONS_PER_SESSION": str(CAP),
        "SHUTDOWN_GRACE_S": "10",
        **extra,
    }


class Replicas:
    """MiniApp replicas as processes, each with the suite's settings and these changes (`NAME=None`
    leaves a setting unset); `stop` stops every one started."""

    def __init__(self, nats_url: str, log_dir: Path) -> None:
        self.nats_url = nats_url
        self.log_dir = log_dir
        self.started: list[Service] = []

    async def start(self, **env: str | None) -> Service:
        settings = {k: v for k, v in {**replica_env(self.nats_url), **env}.items() if v is not None}
        replica = Service("services.miniapp_gateway", settings, self.log_dir)
        self.started.append(replica)
        replica.start()
        return await replica.ready()

    def stop(self) -> None:
        for replica in self.started:
            replica.stop()


def new_session() -> str:
    return f"cs-{uuid.uuid4().hex[:16]}"


def new_user() -> str:
    return str(uuid.uuid4())


def make_token(
    sub: Any,
    *,
    exp_in: float = 3600,
    aud: Any = AUDIENCE,
    secret: str = SECRET,
    alg: str = "HS256",
    omit: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A Supabase-shaped access token (`sub` None: no `sub` claim; `aud` None: no `aud`)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iat": now,
        "exp": now + int(exp_in),
        "role": "authenticated",
        "sub": sub,
        "aud": aud,
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None and k not in omit}
    return jwt.encode(body, secret, algorithm=alg)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hs256_key: bytes | None) -> str:
    """A token signed by hand with HMAC-SHA256 under any key (pyjwt refuses PEM keys), or unsigned."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if hs256_key is None:
        return f"{signing_input}."
    return f"{signing_input}.{_b64(hmac.new(hs256_key, signing_input.encode(), hashlib.sha256).digest())}"


def claims_for(sub: str, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "aud": AUDIENCE, "exp": int(time.time()) + 600, "role": "authenticated", **extra}


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public half of `key` as a JWK."""
    if isinstance(key, rsa.RSAPrivateKey):
        return {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg}
    return {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg}


def write_jwks(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


def socket_url(replica: Service, session_id: str, token: str | None) -> str:
    return f"{replica.ws}/ws/miniapp/{session_id}" + ("" if token is None else f"?token={token}")


async def open_socket(
    http: aiohttp.ClientSession, replica: Service, session_id: str, token: str | None, compress: int = 0
) -> Socket:
    """A browser's socket; `connected` (or the close) is left unread."""
    return await connect(http, socket_url(replica, session_id, token), compress=compress)


async def join(
    http: aiohttp.ClientSession, replica: Service, session_id: str, user_id: str | None = None
) -> tuple[Socket, JsonObj]:
    """Open a socket with a fresh valid token and read its `connected` frame."""
    browser = await open_socket(http, replica, session_id, make_token(user_id or new_user()))
    return browser, await browser.expect("connected")
