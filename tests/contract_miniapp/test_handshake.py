"""Upgrade and admission (DESIGN section 5): the upgrade always completes, then refusals close
with 4001 / 4400 and a reason; accepted sockets get a full `connected` snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.contract_miniapp.support import (
    AUDIENCE,
    Replica,
    join,
    make_token,
    new_session,
    new_user,
    open_socket,
    unsigned_token,
)


def es256_token() -> str:
    """A well-formed ES256 token; this gateway has no JWKS, so no key can verify it."""
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {"sub": new_user(), "aud": AUDIENCE, "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "es256_without_jwks": es256_token,
    "alg_none": lambda: unsigned_token(new_user()),
    "unlisted_alg_hs512": lambda: make_token(new_user(), alg="HS512"),
    "wrong_audience": lambda: make_token(new_user(), aud="someone-else"),
    "no_audience": lambda: make_token(new_user(), aud=None),
    "wrong_key": lambda: make_token(new_user(), secret="not-the-secret-" + "x" * 64),
    "expired_beyond_leeway": lambda: make_token(new_user(), exp_in=-31 - 5),
    "missing_sub": lambda: make_token(None),
    "empty_sub": lambda: make_token(""),
    "missing_exp": lambda: make_token(new_user(), omit=("exp",)),
    "garbage": lambda: "not.a.jwt",
    "empty": lambda: "",
}

BAD_SESSION_IDS = {
    "dot": "a.b",
    "star": "*",
    "gt": ">",
    "empty": "",
    "129_chars": "a" * 129,
    "space": "a%20b",
    "non_ascii": "%C3%A9t%C3%A9",
    "encoded_slash": "a%2Fb",
    "trailing_newline": "abc%0A",
}


async def test_connected_carries_the_contract_fields_and_counts_every_replica(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    first_user, second_user = new_user(), new_user()
    first, first_connected = await join(http, a, session, first_user)
    assert set(first_connected) == {
        "session_id",
        "user_id",
        "connection_id",
        "connection_count",
        "peers",
        "state",
        "version",
    }
    assert first_connected["session_id"] == session
    assert first_connected["user_id"] == first_user
    assert first_connected["connection_count"] == 1
    assert first_connected["peers"] == [
        {"user_id": first_user, "connection_id": first_connected["connection_id"]}
    ]
    assert first_connected["state"] == {} and first_connected["version"] == 0

    second, second_connected = await join(http, b, session, second_user)
    assert second_connected["connection_count"] == 2
    assert second_connected["connection_id"] != first_connected["connection_id"]
    peers = {(p["user_id"], p["connection_id"]) for p in second_connected["peers"]}
    assert peers == {
        (first_user, first_connected["connection_id"]),
        (second_user, second_connected["connection_id"]),
    }
    await first.close()
    await second.close()


async def test_the_same_user_may_hold_several_connections(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session, user = new_session(), new_user()
    one, _ = await join(http, a, session, user)
    two, connected = await join(http, b, session, user)
    assert connected["connection_count"] == 2
    assert [p["user_id"] for p in connected["peers"]] == [user, user]
    await one.close()
    await two.close()


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_completes_the_upgrade_then_closes_4001_with_a_reason(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, kind: str
) -> None:
    browser = await open_socket(http, replicas[0], new_session(), BAD_TOKENS[kind]())
    code, reason = await browser.expect_close()
    assert code == 4001
    assert reason
    assert not [f for f in browser.frames if f["type"] == "connected"]


async def test_missing_token_closes_4001(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    browser = await open_socket(http, replicas[1], new_session(), None)
    code, reason = await browser.expect_close()
    assert code == 4001 and reason


async def test_token_expired_within_the_30_s_leeway_is_accepted(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    browser = await open_socket(http, replicas[0], new_session(), make_token(new_user(), exp_in=-20))
    await browser.expect("connected")
    await browser.close()


@pytest.mark.parametrize("kind", list(BAD_SESSION_IDS))
async def test_malformed_session_id_closes_4400_with_a_reason(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, kind: str
) -> None:
    browser = await open_socket(http, replicas[1], BAD_SESSION_IDS[kind], make_token(new_user()))
    code, reason = await browser.expect_close()
    assert code == 4400
    assert reason


async def test_longest_and_widest_session_ids_are_accepted(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    for session in ("A" * 120 + f"{time.time_ns() % 10**8:08d}", f"aZ09_-{new_session()}"):
        assert len(session) <= 128
        browser, connected = await join(http, replicas[0], session)
        assert connected["session_id"] == session
        await browser.close()


async def test_token_whose_role_may_not_join_sessions_closes_4003_with_a_reason(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    browser = await open_socket(http, replicas[0], new_session(), make_token(new_user(), role="anon"))
    code, reason = await browser.expect_close()
    assert code == 4003 and reason
