"""Supabase token verification: HS256, RS256/ES256 through a JWKS, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.supabase import Jwks, SupabaseVerifier, TokenError, mint_dev_token
from tests.support import free_port

SECRET = "unit-test-supabase-secret-0123456789abcdef"
AUD = "authenticated"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "aud": AUD, "exp": now + 600, "iat": now, "role": "authenticated", **overrides}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], body: dict[str, Any], key: bytes | None) -> str:
    """A token signed by hand (HMAC-SHA256 with `key`, or unsigned), as an attacker would."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(body))}"
    signature = b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key else ""
    return f"{signing_input}.{signature}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        public: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**public, "kid": kid, "use": "sig"}


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps({"keys": list(keys)}))


async def test_hs256_token_is_accepted() -> None:
    verifier = SupabaseVerifier(AUD, secret=SECRET)
    got = await verifier.verify(mint_dev_token("user-9", SECRET, AUD, 60))
    assert got.sub == "user-9" and got.role == "authenticated" and got.exp > time.time()


@pytest.mark.parametrize(
    ("token_claims", "reason"),
    [
        (claims(aud="someone-else"), "another audience"),
        (claims(exp=int(time.time()) - 120), "expired"),
        ({k: v for k, v in claims().items() if k != "sub"}, "lacks sub"),
        ({k: v for k, v in claims().items() if k != "exp"}, "lacks exp"),
        ({k: v for k, v in claims().items() if k != "aud"}, "lacks aud"),
        (claims(sub=""), "no usable sub"),
        (claims(sub=5), "invalid"),
    ],
)
async def test_hs256_refusals(token_claims: dict[str, Any], reason: str) -> None:
    verifier = SupabaseVerifier(AUD, secret=SECRET)
    with pytest.raises(TokenError) as caught:
        await verifier.verify(jwt.encode(token_claims, SECRET, algorithm="HS256"))
    assert reason in caught.value.message


async def test_expiry_has_a_30_second_leeway() -> None:
    verifier = SupabaseVerifier(AUD, secret=SECRET)
    assert (await verifier.verify(jwt.encode(claims(exp=int(time.time()) - 10), SECRET))).sub == "user-1"


async def test_wrong_key_alg_none_and_unlisted_algorithms_are_refused() -> None:
    verifier = SupabaseVerifier(AUD, secret=SECRET)
    wrong = jwt.encode(claims(), "another-secret-entirely-0123456789abcdef", algorithm="HS256")
    unlisted = jwt.encode(claims(), SECRET + SECRET, algorithm="HS512")
    for token in (wrong, forge({"alg": "none", "typ": "JWT"}, claims(), None), unlisted, "not.a.token", ""):
        with pytest.raises(TokenError):
            await verifier.verify(token)


async def test_rs256_and_es256_through_a_jwks_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(rsa_key, "r1"), jwk(ec_key, "e1"))
    verifier = SupabaseVerifier(AUD, jwks=Jwks(path=path))
    rs = jwt.encode(claims(sub="rs"), rsa_key, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode(claims(sub="es"), ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert (await verifier.verify(rs)).sub == "rs"
    assert (await verifier.verify(es)).sub == "es"
    # A key is only good for its own algorithm, and a token must name its key.
    mixed = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "r1"})
    nameless = jwt.encode(claims(), rsa_key, algorithm="RS256")
    for token in (mixed, nameless):
        with pytest.raises(TokenError):
            await verifier.verify(token)
    # No secret configured: HS256 is not on the list at all.
    with pytest.raises(TokenError, match="algorithm not allowed"):
        await verifier.verify(mint_dev_token("x", SECRET, AUD, 60))


async def test_hs256_signed_with_the_public_key_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The algorithm-confusion attack: HMAC keyed with the (public) RSA key."""
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(rsa_key, "r1"))
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = forge({"alg": "HS256", "typ": "JWT", "kid": "r1"}, claims(), pem)
    for verifier in (
        SupabaseVerifier(AUD, jwks=Jwks(path=path)),
        SupabaseVerifier(AUD, secret=SECRET, jwks=Jwks(path=path)),
    ):
        with pytest.raises(TokenError):
            await verifier.verify(forged)


async def test_unknown_kid_reloads_the_jwks_at_most_once_per_interval(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(rsa_key, "old"))
    jwks = Jwks(path=path, min_refresh_s=3600)
    verifier = SupabaseVerifier(AUD, jwks=jwks)
    rotated = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "new"})
    assert (await verifier.verify(jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "old"}))).sub
    write_jwks(path, jwk(rsa_key, "old"), jwk(ec_key, "new"))
    with pytest.raises(TokenError, match="unknown signing key"):
        await verifier.verify(rotated)  # loaded moments ago: no reload yet
    jwks.min_refresh_s = 0
    assert (await verifier.verify(rotated)).sub == "user-1"


@pytest.fixture
async def jwks_server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"keys": [jwk(rsa_key, "k1")], "hits": 0}

    async def serve_jwks(request: web.Request) -> web.Response:
        state["hits"] += 1
        return web.json_response({"keys": state["keys"]})

    app = web.Application()
    app.router.add_get("/auth/v1/.well-known/jwks.json", serve_jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json", state
    await runner.cleanup()


async def test_jwks_url_is_cached_and_refreshed_on_unknown_kid(
    jwks_server: tuple[str, dict[str, Any]], rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    url, state = jwks_server
    verifier = SupabaseVerifier(AUD, jwks=Jwks(url=url, min_refresh_s=0))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    await verifier.verify(token)
    await verifier.verify(token)
    assert state["hits"] == 1
    state["keys"] = [jwk(rsa_key, "k1"), jwk(ec_key, "k2")]
    await verifier.verify(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k2"}))
    assert state["hits"] == 2
    await verifier.close()
