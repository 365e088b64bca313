"""RS256/ES256 tokens against a JWKS file (DESIGN section 5): the standard `{"keys": [...]}`
document, keys matched by `kid`, and no algorithm confusion."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.contract_miniapp.conftest import StartReplica
from tests.contract_miniapp.support import AUDIENCE, new_session, new_user, open_socket


def claims(sub: str) -> dict[str, Any]:
    return {"sub": sub, "aud": AUDIENCE, "exp": int(time.time()) + 600, "role": "authenticated"}


async def test_jwks_file_keys_are_matched_by_kid_and_nothing_else_gets_in(
    start_replica: StartReplica, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {
            **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
            "kid": "k-rsa",
            "alg": "RS256",
        },
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "k-ec", "alg": "ES256"},
    ]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    replica = await start_replica(SUPABASE_JWT_SECRET="", SUPABASE_JWKS_FILE=str(path))

    good = {
        "rs256": jwt.encode(claims(new_user()), rsa_key, algorithm="RS256", headers={"kid": "k-rsa"}),
        "es256": jwt.encode(claims(new_user()), ec_key, algorithm="ES256", headers={"kid": "k-ec"}),
    }
    session = new_session()
    for token in good.values():
        browser = await open_socket(http, replica, session, token)
        await browser.expect("connected")
        await browser.close()

    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bad = {
        "unknown_kid": jwt.encode(claims(new_user()), ec_key, algorithm="ES256", headers={"kid": "nope"}),
        "no_kid": jwt.encode(claims(new_user()), ec_key, algorithm="ES256"),
        "wrong_key_for_kid": jwt.encode(
            claims(new_user()), stranger, algorithm="ES256", headers={"kid": "k-ec"}
        ),
        "alg_not_of_the_key": jwt.encode(
            claims(new_user()), ec_key, algorithm="ES256", headers={"kid": "k-rsa"}
        ),
        # Algorithm confusion: HS256 keyed with the public key the gateway knows.
        "hs256_with_public_key": _hs256_with(public_pem, claims(new_user())),
    }
    for kind, token in bad.items():
        browser = await open_socket(http, replica, session, token)
        code, reason = await browser.expect_close()
        assert (code, bool(reason)) == (4001, True), kind


def _hs256_with(key: bytes, body: dict[str, Any]) -> str:
    """pyjwt refuses to HMAC with a PEM key, so sign by hand as an attacker would."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k-rsa"}).encode())
    payload = part(json.dumps(body).encode())
    signature = hmac.new(key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{part(signature)}"
