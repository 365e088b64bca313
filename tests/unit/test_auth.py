"""`shared.auth`, the one part of it that DESIGN names (`generate_edge_token`) and what the wire
cannot reach; every accept/refuse rule of the token is in tests/contract/edge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from shared.auth import EdgeAuthError, bearer, generate_edge_token, verify_edge_token

SECRET = "s3cret"
NOW = 1_800_000_000.0


def test_token_has_the_format_real_agents_produce() -> None:
    token = generate_edge_token("agent-1", "+15550100", SECRET, now=NOW)
    message = f"agent-1:+15550100:{int(NOW)}"
    signature = hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert base64.b64decode(token, validate=True).decode() == f"{message}:{signature}"


def test_default_clock_is_now() -> None:
    verify_edge_token(generate_edge_token("a", "+1", SECRET), "a", [SECRET], 60, False)
    stale = generate_edge_token("a", "+1", SECRET, now=time.time() - 120)
    with pytest.raises(EdgeAuthError):
        verify_edge_token(stale, "a", [SECRET], 60, False)


def test_tampered_timestamp_breaks_the_signature() -> None:
    agent, phone, _, sig = (
        base64.b64decode(generate_edge_token("a", "+1", SECRET, now=NOW)).decode().split(":")
    )
    forged = base64.b64encode(f"{agent}:{phone}:{int(NOW) + 5000}:{sig}".encode()).decode()
    with pytest.raises(EdgeAuthError) as refused:
        verify_edge_token(forged, "a", [SECRET], 90000, False, now=NOW + 5000)
    assert refused.value.status == 401


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None)],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_the_secret_and_the_signature_are_only_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def constant_time(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    # Every comparison that goes through hmac.compare_digest is recorded; one made with `==` (a
    # timing oracle) would not be, and the assertions below would fail.
    monkeypatch.setattr(hmac, "compare_digest", constant_time)
    verify_edge_token(SECRET, "a", [SECRET], 60, allow_legacy=True, now=NOW)
    assert (SECRET.encode(), SECRET.encode()) in compared
    compared.clear()
    token = generate_edge_token("a", "+1", SECRET, now=NOW)
    signature = base64.b64decode(token).decode().rsplit(":", 1)[1].encode()
    verify_edge_token(token, "a", [SECRET], 60, allow_legacy=False, now=NOW)
    assert (signature, signature) in compared
