"""Generated input on every MiniApp surface (the socket, the upgrade, the NATS API): each gets an
`error` frame, a contract close code or an `{"ok": false}` reply in time; the gateway never dies,
never logs a traceback for it, and a well-behaved member on the same replica keeps its latency."""

from __future__ import annotations

import contextlib
import string
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from tests.harness import fuzz
from tests.harness.bus import assert_answered, every_subject, request
from tests.harness.fuzz import Calm
from tests.harness.miniapp import (
    SECRET,
    claims_for,
    forge,
    join,
    make_token,
    new_session,
    new_user,
    open_socket,
)
from tests.harness.proc import Service
from tests.harness.ws import connect

MAX_FRAME = 64 * 1024
FRAMES = fuzz.frames(
    ["ping", "state_update", "action", "typing", "auth"],
    {
        "state_update": ["patch", "base_version", "client_msg_id"],
        "action": ["action", "payload", "client_msg_id"],
        "typing": ["is_typing"],
        "auth": ["token"],
    },
    MAX_FRAME,
)
API = ["miniapp.sessions.state_update", "miniapp.sessions.get", "miniapp.sessions.configure"]


@pytest.fixture(scope="module")
async def calm(replicas: tuple[Service, Service]) -> AsyncIterator[Calm]:
    async with aiohttp.ClientSession() as http:
        socket, _ = await join(http, replicas[0], new_session())
        yield await Calm.measured(socket)


@pytest.fixture(scope="module")
def log_start(replicas: tuple[Service, Service]) -> int:
    return len(replicas[0].output())


def no_traceback(replica: Service, since: int) -> None:
    assert "Traceback" not in replica.output()[since:], replica.output()[since:][-3000:]
    assert replica.alive()


@given(sent=st.lists(FRAMES, min_size=1, max_size=6))
async def test_any_frame_gets_an_error_or_a_contract_close_and_never_hurts_the_gateway(
    replicas: tuple[Service, Service], calm: Calm, log_start: int, sent: list[fuzz.Frame]
) -> None:
    async with aiohttp.ClientSession() as http:
        socket, _ = await join(http, replicas[0], new_session())
        for frame in sent:
            if socket.close_code is not None:
                break
            try:
                if isinstance(frame.payload, bytes):
                    await socket.ws.send_bytes(frame.payload)
                else:
                    await socket.ws.send_str(frame.payload)
            except aiohttp.ClientError:
                break
        if socket.close_code is None:
            with contextlib.suppress(aiohttp.ClientError):  # the gateway may be closing it
                await socket.send("ping")
        replies = []
        while (reply := await socket.next(timeout=5)) is not None:
            replies.append(reply)
            if reply["type"] == "pong":
                break
        for reply in replies:
            # A valid frame of its own can come back: its update, or an auth answer.
            assert reply["type"] in ("error", "pong", "state_update", "auth_ok"), reply
            if reply["type"] == "error":
                assert reply["data"]["code"] and reply["data"]["message"], reply
        if socket.close_code is not None:
            assert socket.close_code in (1009, 1006) and any(f.size > MAX_FRAME for f in sent), (
                socket.close_code
            )
        else:
            assert replies and replies[-1]["type"] == "pong"
    await calm.check()
    no_traceback(replicas[0], log_start)


@given(
    session=st.text(max_size=140) | st.sampled_from(fuzz.EVIL_IDS),
    token=st.none() | st.text(max_size=300),
)
async def test_any_upgrade_completes_and_closes_with_a_contract_code_or_joins(
    replicas: tuple[Service, Service], log_start: int, session: str, token: str | None
) -> None:
    url = f"{replicas[0].ws}/ws/miniapp/{quote(session, safe='')}"
    if token is not None:
        url += f"?token={quote(token, safe='')}"
    async with aiohttp.ClientSession() as http:
        try:
            socket = await connect(http, url)
        except aiohttp.WSServerHandshakeError as err:
            assert err.status == 404 and (not session or "/" in session), (err.status, session)
            return
        code, reason = await socket.expect_close()
    assert code in (4001, 4400) and reason, (code, session, token)
    no_traceback(replicas[0], log_start)


# What a browser may offer in Sec-WebSocket-Protocol: tokens (HTTP's `token` characters), a JWT among them.
TOKEN_CHARS = string.ascii_letters + string.digits + "-._~!#$&'*+^`|"
SUBPROTOCOLS = st.lists(st.text(alphabet=TOKEN_CHARS, min_size=1), max_size=3)
HEADER_FIELDS = ["alg", "kid", "typ", "crit", "b64", "jku"]
CLAIM_FIELDS = ["sub", "exp", "aud", "role", "iat", "nbf"]


@given(
    header=st.dictionaries(st.sampled_from(HEADER_FIELDS), fuzz.JSON, max_size=3),
    claims=st.dictionaries(st.sampled_from(CLAIM_FIELDS), fuzz.JSON, max_size=3),
    protocols=SUBPROTOCOLS,
    offer_the_token=st.booleans(),
)
async def test_any_jwt_header_claims_or_subprotocols_join_or_close_4001_4003(
    replicas: tuple[Service, Service],
    log_start: int,
    header: dict[str, Any],
    claims: dict[str, Any],
    protocols: list[str],
    offer_the_token: bool,
) -> None:
    """Signed with the gateway's own secret, so every field is read: a JWT header or claim of any
    JSON type, with any subprotocols offered (the token itself among them, as some browser clients
    send it). The token never reaches the log."""
    token = forge({"alg": "HS256", **header}, {**claims_for(new_user()), **claims}, SECRET.encode())
    offered = [*protocols, token] if offer_the_token else protocols
    url = f"{replicas[0].ws}/ws/miniapp/{new_session()}?token={token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=offered) as ws:
        first = await ws.receive(timeout=5)
    if first.type == aiohttp.WSMsgType.TEXT:
        assert first.json()["type"] == "connected", first.data
    else:
        assert first.type == aiohttp.WSMsgType.CLOSE and first.data in (4001, 4003), (first, header, claims)
    no_traceback(replicas[0], log_start)
    assert token.split(".")[1][:24] not in replicas[0].output()[log_start:]


@given(subject=st.sampled_from(API), body=fuzz.bodies())
async def test_any_request_on_the_internal_api_is_answered_in_time(
    replicas: tuple[Service, Service], nc: NATS, subject: str, body: bytes
) -> None:
    assert_answered(await request(nc, subject, body))


async def test_session_ids_that_would_change_a_subject_are_refused_at_every_entry_point(
    replicas: tuple[Service, Service], nc: NATS
) -> None:
    async with every_subject(nc) as subjects, aiohttp.ClientSession() as http:
        for evil in fuzz.EVIL_IDS:
            if evil and "/" not in evil:  # these are other paths, never the socket route
                socket = await open_socket(http, replicas[0], quote(evil, safe=""), make_token(new_user()))
                assert (await socket.expect_close())[0] == 4400, evil
            for subject, body in (
                ("miniapp.sessions.state_update", {"session_id": evil, "patch": {"a": 1}}),
                ("miniapp.sessions.get", {"session_id": evil}),
                ("miniapp.sessions.configure", {"session_id": evil, "members": None}),
            ):
                reply: dict[str, Any] = await request(nc, subject, body)
                assert reply["ok"] is False and reply["error"]["code"] == "invalid_request", (subject, evil)
    assert subjects and fuzz.leaked(subjects) == [], fuzz.leaked(subjects)
