from __future__ import annotations

import base64
import time

import pytest

from shared.auth import EdgeAuthError, bearer, generate_edge_token, verify_edge_token

SECRET = "s3cret"
NOW = 1_800_000_000.0


def verify(token: str | None, agent: str = "agent-1", **kw: object) -> object:
    args: dict[str, object] = {"secrets": [SECRET], "max_age_s": 90000, "allow_legacy": False, "now": NOW}
    args.update(kw)
    return verify_edge_token(token, agent, **args)  # type: ignore[arg-type]


def test_token_has_the_format_real_agents_produce() -> None:
    token = generate_edge_token("agent-1", "+15550100", SECRET, now=NOW)
    agent, phone, ts, sig = base64.b64decode(token).decode().split(":")
    assert (agent, phone, ts) == ("agent-1", "+15550100", str(int(NOW)))
    assert len(sig) == 64 and int(sig, 16) >= 0


def test_valid_token_is_accepted() -> None:
    identity = verify(generate_edge_token("agent-1", "+15550100", SECRET, now=NOW))
    assert identity.user_phone == "+15550100"  # type: ignore[attr-defined]


def test_previous_secret_is_accepted_during_rotation() -> None:
    token = generate_edge_token("agent-1", "+1", "old", now=NOW)
    verify(token, secrets=[SECRET, "old"])
    with pytest.raises(EdgeAuthError):
        verify(token)


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, 401),
        ("", 401),
        ("not base64 !!", 401),
        (base64.b64encode(b"no-colons").decode(), 401),
        (generate_edge_token("agent-1", "+1", "wrong-secret", now=NOW), 401),
        (generate_edge_token("agent-1", "+1", SECRET, now=NOW - 90001), 401),
        (generate_edge_token("agent-1", "+1", SECRET, now=NOW + 301), 401),
        (generate_edge_token("agent-2", "+1", SECRET, now=NOW), 403),
    ],
)
def test_bad_tokens_are_refused_with_their_status(token: str | None, status: int) -> None:
    with pytest.raises(EdgeAuthError) as refused:
        verify(token)
    assert refused.value.status == status


def test_token_slightly_in_the_future_is_accepted() -> None:
    verify(generate_edge_token("agent-1", "+1", SECRET, now=NOW + 299))


def test_tampered_timestamp_breaks_the_signature() -> None:
    token = generate_edge_token("agent-1", "+1", SECRET, now=NOW)
    agent, phone, _, sig = base64.b64decode(token).decode().split(":")
    forged = base64.b64encode(f"{agent}:{phone}:{int(NOW) + 5000}:{sig}".encode()).decode()
    with pytest.raises(EdgeAuthError) as refused:
        verify(forged)
    assert refused.value.status == 401


def test_raw_previous_secret_is_never_a_legacy_token() -> None:
    with pytest.raises(EdgeAuthError):
        verify("old", secrets=[SECRET, "old"], allow_legacy=True)


def test_legacy_raw_secret_only_when_allowed() -> None:
    assert verify(SECRET, allow_legacy=True).legacy  # type: ignore[attr-defined]
    with pytest.raises(EdgeAuthError):
        verify(SECRET, allow_legacy=False)


def test_default_clock_is_now() -> None:
    verify_edge_token(generate_edge_token("a", "+1", SECRET), "a", [SECRET], 60, False)
    stale = generate_edge_token("a", "+1", SECRET, now=time.time() - 120)
    with pytest.raises(EdgeAuthError):
        verify_edge_token(stale, "a", [SECRET], 60, False)


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None)],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer(header) == token
