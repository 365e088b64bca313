"""Handshake refusals close the completed upgrade with the contract's code; in-band refresh."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable

import jwt
import orjson
import pytest

from tests.miniapp.support import SECRET, Gateway, connect, join, new_session, token

NOW = int(time.time())


def signed(claims: dict[str, object], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def unsigned(claims: dict[str, object]) -> str:
    """An `alg: none` token, as an attacker would send it."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{b64(orjson.dumps(claims))}."


BAD_TOKENS = {
    "garbage": "not-a-jwt",
    "empty": "",
    "other_audience": signed({"sub": "u", "aud": "anon", "exp": NOW + 600}),
    "wrong_key": signed({"sub": "u", "aud": "authenticated", "exp": NOW + 600}, "x" * 48),
    "alg_none": unsigned({"sub": "u", "aud": "authenticated", "exp": NOW + 600}),
    "expired": signed({"sub": "u", "aud": "authenticated", "exp": NOW - 120}),
    "no_sub": signed({"aud": "authenticated", "exp": NOW + 600}),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_close_with_4001(pair: tuple[Gateway, Gateway], case: str) -> None:
    client = await connect(pair[0], new_session(), tok=BAD_TOKENS[case])
    assert await client.expect_close() == 4001
    assert client.close_reason
    await client.close()


async def test_missing_token_closes_with_4001(pair: tuple[Gateway, Gateway]) -> None:
    client = await connect(pair[0], new_session(), anonymous=True)
    assert await client.expect_close() == 4001
    await client.close()


@pytest.mark.parametrize("session_id", ["a.b", "*", "%3E", "", "x" * 129, "a%20b"])
async def test_malformed_session_ids_close_with_4400(pair: tuple[Gateway, Gateway], session_id: str) -> None:
    client = await connect(pair[1], session_id)
    assert await client.expect_close() == 4400
    assert client.close_reason == "malformed session id"
    await client.close()


async def test_a_128_char_session_id_is_fine(pair: tuple[Gateway, Gateway]) -> None:
    client, connected = await join(pair[0], "s" * 128)
    assert connected["session_id"] == "s" * 128
    await client.close()


async def test_role_not_allowed_closes_with_4003(pair: tuple[Gateway, Gateway]) -> None:
    client = await connect(pair[0], new_session(), tok=token("u", role="anon"))
    assert await client.expect_close() == 4003
    await client.close()


async def test_in_band_refresh_keeps_a_socket_past_its_token(
    gateway_factory: Callable[..., Awaitable[Gateway]],
) -> None:
    gateway = await gateway_factory(jwt_leeway_s=0)
    session = new_session()
    doomed = await connect(gateway, session, tok=token("doomed", ttl_s=2))
    await doomed.expect("connected")
    kept = await connect(gateway, session, tok=token("kept", ttl_s=2))
    await kept.expect("connected")

    await kept.send("auth", {"token": "garbage"})
    assert (await kept.expect("error"))["code"] == "invalid_token"
    await kept.send("auth", {"token": token("someone-else", ttl_s=3600)})
    assert (await kept.expect("error"))["code"] == "invalid_token"
    fresh = token("kept", ttl_s=3600)
    await kept.send("auth", {"token": fresh})
    ok = await kept.expect("auth_ok")
    assert ok["expires_at"] == jwt.decode(fresh, options={"verify_signature": False})["exp"]

    assert await doomed.expect_close(timeout=10) == 4001
    assert doomed.close_reason == "token expired"
    await kept.send("ping")
    await kept.expect("pong")
    await doomed.close()
    await kept.close()
