"""Supabase access tokens (DESIGN section 5): verification for the MiniApp gateway, dev minting.

HS256 tokens are checked against the project's JWT secret; RS256/ES256 tokens against the key of
the JWKS whose `kid` they name. The algorithm comes from a fixed allow-list and must match the
kind of key configured for it: an HS256 token is never checked with a JWKS public key (the
classic algorithm-confusion attack), and `none` is never accepted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson

from shared.protocol.errors import ErrorCode, IkiroError
from shared.protocol.miniapp import USER_ID_PATTERN

log = logging.getLogger(__name__)

LEEWAY_S = 30
HMAC_ALGORITHMS = frozenset({"HS256"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256"})
# A `sub` is relayed to peers and written to logs: printable ASCII only (no control, bidi or NUL).
_USABLE_SUB = re.compile(USER_ID_PATTERN)


class TokenError(IkiroError, PermissionError):
    """A token that must not be accepted; `message` says why (it goes into the close reason)."""

    code = ErrorCode.INVALID_TOKEN


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    exp: int
    role: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class Jwks:
    """Signing keys by `kid`, from a JWKS file or URL; reloaded on an unknown `kid`.

    A reload is attempted at most once per `min_refresh_s`, so tokens with made-up `kid`s cannot
    turn the gateway into a load generator against the identity provider.
    """

    def __init__(
        self,
        url: str | None = None,
        path: Path | None = None,
        max_age_s: float = 600.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of a JWKS url or file")
        self.url = url
        self.path = path
        self.max_age_s = max_age_s
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named `kid`, reloading the set when it is stale or does not know `kid`."""
        now = time.monotonic()
        if kid not in self._keys or now - self._loaded_at > self.max_age_s:
            async with self._lock:
                stale = kid not in self._keys or now - self._loaded_at > self.max_age_s
                if stale and time.monotonic() - self._attempted_at >= self.min_refresh_s:
                    await self._reload()
        found = self._keys.get(kid)
        if found is None:
            raise TokenError("unknown signing key")
        return found

    async def _reload(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            document = await self._fetch()
            keys = parse_jwks(document)
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.warning("cannot load the JWKS: %s", err)
            return
        self._keys = keys
        self._loaded_at = time.monotonic()

    async def _fetch(self) -> Any:
        if self.path is not None:
            return orjson.loads(await asyncio.to_thread(self.path.read_bytes))
        assert self.url is not None
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        async with self._http.get(self.url) as response:
            response.raise_for_status()
            return orjson.loads(await response.read())

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The signing keys of a standard `{"keys": [...]}` document, by `kid`; others are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS document is an object with a "keys" list')
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as err:
            log.warning("skipping JWKS key %s: %s", entry.get("kid"), err)
            continue
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


class SupabaseVerifier:
    """Verify Supabase access tokens: signature, `aud`, `exp` and `sub`, with a 30 s leeway."""

    def __init__(
        self, audience: str, secret: str | None = None, jwks: Jwks | None = None, leeway_s: float = LEEWAY_S
    ) -> None:
        if not secret and jwks is None:
            raise ValueError("a JWT secret or a JWKS is required")
        self.audience = audience
        self.secret = secret or None
        self.jwks = jwks
        self.leeway_s = leeway_s

    async def verify(self, token: str) -> Claims:
        """The token's claims, or `TokenError` saying why it is refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("malformed token") from None
        alg = header.get("alg")
        key: Any
        # Any JSON may stand in the header: a list or object is not hashable, so check the type first.
        if not isinstance(alg, str):
            raise TokenError("algorithm not allowed")
        if alg in HMAC_ALGORITHMS and self.secret is not None:
            key = self.secret
        elif alg in ASYMMETRIC_ALGORITHMS and self.jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise TokenError("token names no signing key")
            jwk = await self.jwks.key(kid)
            if jwk.algorithm_name != alg:
                raise TokenError("algorithm does not match the signing key")
            key = jwk.key
        else:
            raise TokenError("algorithm not allowed")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token is for another audience") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except jwt.MissingRequiredClaimError as err:
            raise TokenError(f"token lacks {err.claim}") from None
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not _USABLE_SUB.fullmatch(sub):
            raise TokenError("token has no usable sub")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenError("token has no usable exp")
        role = claims.get("role")
        return Claims(sub=sub, exp=int(exp), role=role if isinstance(role, str) else None, raw=claims)

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()


def mint_dev_token(
    user_id: str,
    secret: str,
    audience: str = "authenticated",
    ttl_s: int = 3600,
    now: float | None = None,
    role: str = "authenticated",
) -> str:
    """An HS256 token shaped like a Supabase access token, for development and tests."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": user_id,
        "aud": audience,
        "role": role,
        "iat": issued,
        "exp": issued + ttl_s,
        "iss": "ikiro-dev",
    }
    return jwt.encode(claims, secret, algorithm="HS256")
