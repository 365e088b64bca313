"""RS256/ES256 tokens against a JWKS (DESIGN section 5): the standard `{"keys": [...]}` document
from a file or a URL, keys matched by `kid`, and no algorithm confusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.contract.miniapp.conftest import StartReplica
from tests.harness.miniapp import (
    claims_for,
    forge,
    jwk,
    make_token,
    new_session,
    new_user,
    open_socket,
    write_jwks,
)
from tests.harness.proc import Service, free_port


async def connects(http: aiohttp.ClientSession, replica: Service, token: str) -> bool:
    browser = await open_socket(http, replica, new_session(), token)
    if await browser.next() is None:
        assert browser.close_code == 4001 and browser.close_reason, browser.close_code
        return False
    await browser.close()
    return True


def sign(key: Any, kid: str | None, alg: str) -> str:
    return jwt.encode(claims_for(new_user()), key, algorithm=alg, headers={"kid": kid} if kid else None)


async def test_jwks_file_keys_are_matched_by_kid_and_nothing_else_gets_in(
    start_replica: StartReplica, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "k-rsa", "RS256"), jwk(ec_key, "k-ec", "ES256"))
    jwks_only = await start_replica(SUPABASE_JWT_SECRET="", SUPABASE_JWKS_FILE=str(path))
    both = await start_replica(SUPABASE_JWKS_FILE=str(path))  # HS256 secret as well

    for replica in (jwks_only, both):
        assert await connects(http, replica, sign(rsa_key, "k-rsa", "RS256"))
        assert await connects(http, replica, sign(ec_key, "k-ec", "ES256"))
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    refused = {
        "unknown_kid": sign(ec_key, "nope", "ES256"),
        "no_kid": sign(ec_key, None, "ES256"),
        "wrong_key_for_kid": sign(stranger, "k-ec", "ES256"),
        "alg_not_of_the_key": sign(ec_key, "k-rsa", "ES256"),
        # Algorithm confusion: HS256 keyed with the public key the gateway knows.
        "hs256_with_public_key": forge(
            {"alg": "HS256", "typ": "JWT", "kid": "k-rsa"}, claims_for(new_user()), public_pem
        ),
    }
    for kind, token in refused.items():
        for replica in (jwks_only, both):
            assert not await connects(http, replica, token), (kind, replica is both)
    assert not await connects(http, jwks_only, make_token(new_user()))  # no secret, so no HS256 at all


async def test_jwks_url_is_fetched_and_its_keys_matched_by_kid(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = {"keys": [jwk(rsa_key, "k1", "RS256"), jwk(ec_key, "k2", "ES256")]}

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/auth/v1/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        url = f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json"
        replica = await start_replica(SUPABASE_JWT_SECRET="", SUPABASE_JWKS_URL=url)
        assert await connects(http, replica, sign(rsa_key, "k1", "RS256"))
        assert await connects(http, replica, sign(ec_key, "k2", "ES256"))
        assert not await connects(http, replica, sign(ec_key, "k1", "ES256"))
        assert not await connects(http, replica, sign(ec_key, "k3", "ES256"))
    finally:
        await runner.cleanup()
