"""Tokens while connected (DESIGN section 5): in-band refresh, refusal that changes nothing,
expiry (with the 30 s leeway) closing 4001."""

from __future__ import annotations

import aiohttp
import jwt

from tests.harness.miniapp import SECRET, claims_for, forge, make_token, new_session, new_user, open_socket
from tests.harness.proc import Service

LEEWAY_S = 30


async def test_token_expiring_while_connected_closes_4001(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    # Expired 28.5 s ago: inside the leeway at connect, past it about 1.5 s later.
    browser = await open_socket(
        http, replicas[0], new_session(), make_token(new_user(), exp_in=-LEEWAY_S + 1.5)
    )
    await browser.expect("connected")
    code, reason = await browser.expect_close(timeout=6)
    assert code == 4001 and reason


async def test_auth_refresh_answers_auth_ok_and_moves_the_expiry(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    user = new_user()
    browser = await open_socket(http, replicas[1], new_session(), make_token(user, exp_in=-LEEWAY_S + 1.5))
    await browser.expect("connected")
    fresh = make_token(user, exp_in=600)
    await browser.send("auth", {"token": fresh})
    assert await browser.expect("auth_ok") == {
        "expires_at": jwt.decode(fresh, options={"verify_signature": False})["exp"]
    }
    # The old expiry has passed by the end of this window; the socket must still be usable.
    assert await browser.quiet(3.0, "error") == [] and browser.close_code is None
    await browser.ping_pong()


async def test_bad_refresh_is_invalid_token_and_changes_nothing(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    user = new_user()
    browser = await open_socket(http, replicas[0], new_session(), make_token(user, exp_in=-LEEWAY_S + 2.5))
    connected = await browser.expect("connected")
    refusals = [
        make_token(new_user(), exp_in=600),  # another user
        make_token(user, exp_in=600, secret="wrong-" + "k" * 64),
        make_token(user, exp_in=600, aud="elsewhere"),
        make_token(user, exp_in=-LEEWAY_S - 5),
        make_token(user, exp_in=600, role="anon"),  # a role refused at connect is refused here too
        "garbage",
        "",
        "x" * (20 * 1024),
        # Signed, same user, an alg that is not a string. Was: internal_error.
        forge({"alg": ["HS256"]}, claims_for(user), SECRET.encode()),
        forge({"alg": {"HS256": 1}}, claims_for(user), SECRET.encode()),
    ]
    for token in refusals:
        await browser.send("auth", {"token": token})
        error = await browser.expect("error")
        assert error["code"] == "invalid_token" and error["message"]
    await browser.send("state_update", {"patch": {"still": "me"}})
    update = await browser.expect("state_update")
    assert (update["user_id"], update["connection_id"]) == (user, connected["connection_id"])
    assert (await browser.expect_close(timeout=6))[0] == 4001  # the original expiry still holds
    assert not [f for f in browser.frames if f["type"] == "auth_ok"]
