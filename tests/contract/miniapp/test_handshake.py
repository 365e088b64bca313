"""Upgrade and admission (DESIGN section 5): the upgrade always completes, then refusals close
with 4001 / 4003 / 4400 and a reason; accepted sockets get a full `connected` snapshot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.contract.miniapp.conftest import StartReplica
from tests.harness.miniapp import (
    AUDIENCE,
    SECRET,
    claims_for,
    forge,
    join,
    make_token,
    new_session,
    new_user,
    open_socket,
    socket_url,
)
from tests.harness.proc import Service
from tests.harness.ws import connect


def es256_token() -> str:
    """A well-formed ES256 token; this gateway has no JWKS, so no key can verify it."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims_for(new_user()), key, algorithm="ES256", headers={"kid": "k1"})


def signed(header: dict[str, Any]) -> str:
    return forge(header, claims_for(new_user()), SECRET.encode())


def signed_with_alg(alg: Any) -> Callable[[], str]:
    return lambda: signed({"alg": alg})


def token_for(sub: str) -> Callable[[], str]:
    return lambda: make_token(sub)


# A JWT header is any JSON: `alg` of every other type.
ODD_ALGS: dict[str, Any] = {
    "list": ["HS256"],
    "object": {"HS256": True},
    "number": 256,
    "null": None,
    "true": True,
}
ODD_SUBS = {"bidi_override": "evil\u202egnp.exe", "newline": "a\nb", "nul": "a\x00b", "space": "a b"}

REFUSED: dict[str, tuple[int, Callable[[], str | None]]] = {
    "es256_without_jwks": (4001, es256_token),
    "alg_none": (4001, lambda: forge({"alg": "none", "typ": "JWT"}, claims_for(new_user()), None)),
    "unlisted_alg_hs512": (4001, lambda: make_token(new_user(), alg="HS512")),
    "wrong_audience": (4001, lambda: make_token(new_user(), aud="someone-else")),
    "no_audience": (4001, lambda: make_token(new_user(), aud=None)),
    "wrong_key": (4001, lambda: make_token(new_user(), secret="not-the-secret-" + "x" * 64)),
    "expired_beyond_leeway": (4001, lambda: make_token(new_user(), exp_in=-31 - 5)),
    "missing_sub": (4001, lambda: make_token(None)),
    "empty_sub": (4001, lambda: make_token("")),
    "non_string_sub": (4001, lambda: make_token(5)),
    "missing_exp": (4001, lambda: make_token(new_user(), omit=("exp",))),
    "garbage": (4001, lambda: "not.a.jwt"),
    "empty": (4001, lambda: ""),
    "missing": (4001, lambda: None),
    "role_not_allowed": (4003, lambda: make_token(new_user(), role="anon")),
    # Signed with the gateway's own secret, so only the shape is wrong. Was: a 1006 close and a traceback.
    **{f"alg_{name}": (4001, signed_with_alg(alg)) for name, alg in ODD_ALGS.items()},
    "alg_missing": (4001, lambda: signed({"typ": "JWT"})),
    # Relayed to peers and logged, so printable ASCII only. Was: taken and relayed as is.
    **{f"sub_{name}": (4001, token_for(sub)) for name, sub in ODD_SUBS.items()},
}


@pytest.mark.parametrize("kind", list(REFUSED))
async def test_refused_token_completes_the_upgrade_then_closes_with_its_code_and_a_reason(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, kind: str
) -> None:
    code, token = REFUSED[kind]
    browser = await open_socket(http, replicas[0], new_session(), token())
    assert await browser.expect_close() == (code, browser.close_reason) and browser.close_reason
    assert not [f for f in browser.frames if f["type"] == "connected"]


@pytest.mark.parametrize(
    "session", ["a.b", "*", ">", "", "a" * 129, "a%20b", "%C3%A9t%C3%A9", "a%2Fb", "abc%0A"]
)
async def test_malformed_session_id_closes_4400_with_a_reason(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, session: str
) -> None:
    browser = await open_socket(http, replicas[1], session, make_token(new_user()))
    code, reason = await browser.expect_close()
    assert code == 4400 and reason


@pytest.mark.parametrize(
    "token",
    [
        lambda: make_token(new_user(), exp_in=-20),
        lambda: make_token(new_user(), aud=["another-api", AUDIENCE]),
    ],
    ids=["expired_within_the_30_s_leeway", "aud_list_holding_the_audience"],
)
async def test_token_accepted(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, token: Callable[[], str]
) -> None:
    browser = await open_socket(http, replicas[0], new_session(), token())
    await browser.expect("connected")


async def test_longest_and_widest_session_ids_are_accepted(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    longest = "A" * 120 + f"{time.time_ns() % 10**8:08d}"
    assert len(longest) == 128
    for session in (longest, f"aZ09_-{new_session()}"):
        browser, connected = await join(http, replicas[0], session)
        assert connected["session_id"] == session
        await browser.close()


async def test_connected_carries_the_contract_fields_and_counts_every_replica(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    first_user, second_user = new_user(), new_user()
    _first, first_connected = await join(http, a, session, first_user)
    assert first_connected == {
        "session_id": session,
        "user_id": first_user,
        "connection_id": first_connected["connection_id"],
        "connection_count": 1,
        "peers": [{"user_id": first_user, "connection_id": first_connected["connection_id"]}],
        "state": {},
        "version": 0,
    }
    _second, second_connected = await join(http, b, session, second_user)
    assert second_connected["connection_count"] == 2
    assert second_connected["connection_id"] != first_connected["connection_id"]
    assert {(p["user_id"], p["connection_id"]) for p in second_connected["peers"]} == {
        (first_user, first_connected["connection_id"]),
        (second_user, second_connected["connection_id"]),
    }
    # The same user may hold several connections.
    _third, third_connected = await join(http, a, session, second_user)
    assert third_connected["connection_count"] == 3
    assert sorted(p["user_id"] for p in third_connected["peers"]) == sorted(
        [first_user, second_user, second_user]
    )


async def test_an_origin_outside_miniapp_allowed_origins_closes_4003(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere cannot open a socket with a user's token.
    Without an `Origin` (not a browser) the socket is not checked."""
    replica = await start_replica(MINIAPP_ALLOWED_ORIGINS="https://app.ikiro.ai, http://localhost:5173")
    url = socket_url(replica, new_session(), make_token(new_user()))
    origins = ["https://evil.example", "https://app.ikiro.ai.evil.example", "null", "https://APP.ikiro.ai"]
    outcomes: dict[str | None, object] = {}
    for origin in [*origins, None]:
        browser = await connect(http, url, headers=None if origin is None else {"Origin": origin})
        frame = await browser.next()
        admitted = frame is not None and frame["type"] == "connected"
        outcomes[origin] = "in" if admitted else (browser.close_code, browser.close_reason)
        await browser.close()
    assert outcomes == {
        "https://evil.example": (4003, "origin not allowed"),
        "https://app.ikiro.ai.evil.example": (4003, "origin not allowed"),
        "null": (4003, "origin not allowed"),
        "https://APP.ikiro.ai": "in",  # scheme and host are case-insensitive
        None: "in",
    }
