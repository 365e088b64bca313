"""`shared.supabase.Jwks` reload throttling: an internal knob no black-box test can set."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.supabase import Jwks, SupabaseVerifier, TokenError
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
