"""`shared.supabase`: the JWKS reload throttle (an internal knob no black-box test can set), and
the verifier against hostile headers and claims of every JSON type."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from shared.supabase import Jwks, SupabaseVerifier, TokenError
from tests.harness import fuzz
from tests.harness.miniapp import AUDIENCE, claims_for, jwk, write_jwks


async def test_unknown_kid_reloads_the_jwks_at_most_once_per_interval(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = write_jwks(tmp_path / "jwks.json", jwk(rsa_key, "old", "RS256"))
    jwks = Jwks(path=path, min_refresh_s=3600)
    verifier = SupabaseVerifier(AUDIENCE, jwks=jwks)
    rotated = jwt.encode(claims_for("user-1"), ec_key, algorithm="ES256", headers={"kid": "new"})
    current = jwt.encode(claims_for("u"), rsa_key, "RS256", headers={"kid": "old"})
    assert (await verifier.verify(current)).sub == "u"
    write_jwks(path, jwk(rsa_key, "old", "RS256"), jwk(ec_key, "new", "ES256"))
    with pytest.raises(TokenError, match="unknown signing key"):
        await verifier.verify(rotated)  # loaded moments ago: no reload yet
    jwks.min_refresh_s = 0
    assert (await verifier.verify(rotated)).sub == "user-1"


SECRET = "unit-supabase-secret-0123456789abcdef"
HEADER_FIELDS = ["alg", "kid", "typ", "crit", "b64", "jku", "x5c"]
CLAIM_FIELDS = ["sub", "exp", "aud", "iat", "nbf", "iss", "role"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token signed with the verifier's secret whatever its header says, so every field is read."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@given(
    field=st.sampled_from(HEADER_FIELDS + CLAIM_FIELDS),
    value=fuzz.JSON,
)
async def test_a_header_or_claim_of_any_json_type_is_a_token_error_never_a_crash(
    field: str, value: Any
) -> None:
    verifier = SupabaseVerifier(AUDIENCE, secret=SECRET)
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = claims_for("user-1")
    (header if field in HEADER_FIELDS else claims)[field] = value
    try:
        verified = await verifier.verify(_signed(header, claims))
    except TokenError:
        return
    assert verified.sub == claims["sub"]


@pytest.mark.parametrize("alg", [["HS256"], {"HS256": True}, 256, None, True, "none", "HS512"])
async def test_an_alg_that_is_not_an_allowed_string_is_refused(alg: Any) -> None:
    verifier = SupabaseVerifier(AUDIENCE, secret=SECRET)
    with pytest.raises(TokenError, match="algorithm not allowed"):
        await verifier.verify(_signed({"alg": alg}, claims_for("user-1")))


@pytest.mark.parametrize("sub", ["evil\u202eexe", "line\nbreak", "nul\x00", "tab\t", "sp ace", "trail\n", ""])
async def test_a_sub_that_is_not_printable_ascii_is_refused(sub: str) -> None:
    verifier = SupabaseVerifier(AUDIENCE, secret=SECRET)
    with pytest.raises(TokenError, match="no usable sub"):
        await verifier.verify(_signed({"alg": "HS256"}, {**claims_for("x"), "sub": sub}))
