"""What each browser frame does: one `handle_<type>` per type, found by one dict lookup."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from shared.protocol import codec, subjects
from shared.protocol.errors import CloseCode, ErrorCode, IkiroError, error_body
from shared.protocol.miniapp import (
    ActionFrame,
    ActionNotice,
    AuthFrame,
    AuthOkData,
    PingFrame,
    Source,
    StateUpdateFrame,
    TypingFrame,
    TypingNotice,
    client_msg_id_of,
    parse_inbound,
)
from shared.supabase import SupabaseVerifier, TokenError

from .config import MiniAppSettings
from .connection import Connection
from .metrics import MiniAppGatewayMetrics
from .sessions import NOT_A_MEMBER, LocalSession
from .state import StateStore

PONG = codec.encode("pong", {})

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Context:
    """What a frame handler may use."""

    nc: NATS
    store: StateStore
    verifier: SupabaseVerifier
    metrics: MiniAppGatewayMetrics
    settings: MiniAppSettings


async def handle_ping(ctx: Context, conn: Connection, session: LocalSession, frame: PingFrame) -> None:
    conn.send("pong", PONG)


async def handle_state_update(
    ctx: Context, conn: Connection, session: LocalSession, frame: StateUpdateFrame
) -> None:
    """Queue the patch as the next version; the sender's confirmation arrives with the fan-out, a
    refusal as an `error` when it is known. The socket is not held meanwhile: an update may wait up
    to 10 s for the store (an election), and pings and the rest must still be answered."""
    data = frame.data

    def submit() -> asyncio.Future[int]:
        try:
            outcome = ctx.store.submit(
                conn.session_id,
                data.patch,
                data.base_version,
                Source.PEER,
                user_id=conn.user_id,
                connection_id=conn.connection_id,
                client_msg_id=data.client_msg_id,
                cached=session.cached(),
            )
        except IkiroError as err:  # too much waits already: refused at once
            outcome = asyncio.get_running_loop().create_future()
            outcome.set_exception(err)
        outcome.add_done_callback(functools.partial(_tell_if_refused, conn, data.client_msg_id))
        outcome.add_done_callback(functools.partial(_note_written, session))
        return outcome

    conn.in_order_update(submit)


def _note_written(session: LocalSession, outcome: asyncio.Future[int]) -> None:
    if not outcome.cancelled() and outcome.exception() is None:
        session.note_written(outcome.result())


def _tell_if_refused(conn: Connection, client_msg_id: str | None, outcome: asyncio.Future[int]) -> None:
    if outcome.cancelled():
        return
    err = outcome.exception()
    if err is None:
        return
    if not isinstance(err, IkiroError):
        err = IkiroError("internal error", ErrorCode.INTERNAL_ERROR)
    conn.send_error(err, client_msg_id)


async def handle_action(ctx: Context, conn: Connection, session: LocalSession, frame: ActionFrame) -> None:
    """Publish for backend consumers; every gateway relays it to its other sockets of the session."""
    notice = ActionNotice(
        session_id=conn.session_id,
        user_id=conn.user_id,
        connection_id=conn.connection_id,
        action=frame.data.action,
        payload=frame.data.payload,
        at=codec.now_iso(),
    )
    subject = subjects.miniapp_actions(conn.session_id)
    await conn.in_order(lambda: ctx.nc.publish(subject, codec.dumps(notice)), frame.data.client_msg_id)


async def handle_typing(ctx: Context, conn: Connection, session: LocalSession, frame: TypingFrame) -> None:
    notice = TypingNotice(
        user_id=conn.user_id, connection_id=conn.connection_id, is_typing=frame.data.is_typing
    )
    subject = subjects.miniapp_typing(conn.session_id)
    await conn.in_order(lambda: ctx.nc.publish(subject, codec.dumps(notice)))


async def handle_auth(ctx: Context, conn: Connection, session: LocalSession, frame: AuthFrame) -> None:
    """In-band token refresh: a valid token of the same user moves the socket's expiry."""
    try:
        claims = await ctx.verifier.verify(frame.data.token)
    except TokenError as err:
        conn.send_error(err)
        return
    if claims.sub != conn.user_id:
        conn.send_error(TokenError("token is for another user"))
        return
    if not ctx.settings.allows_role(claims.role):
        conn.send_error(TokenError("role not allowed in sessions"))
        return
    if not session.admits(conn.user_id):
        # Removed from the session meanwhile: a fresh token does not bring the user back.
        conn.close_soon(CloseCode.FORBIDDEN, NOT_A_MEMBER)
        return
    conn.expire_at(claims.exp, ctx.verifier.leeway_s)
    conn.send("auth_ok", codec.encode("auth_ok", AuthOkData(expires_at=claims.exp)))


Handler = Callable[[Context, Connection, LocalSession, Any], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    "ping": handle_ping,
    "state_update": handle_state_update,
    "action": handle_action,
    "typing": handle_typing,
    "auth": handle_auth,
}


async def dispatch(ctx: Context, conn: Connection, session: LocalSession, raw: bytes | str) -> None:
    """Handle one frame; anything unusable is answered with an `error` frame, never raised."""
    if not conn.admit_frame():
        ctx.metrics.frames_in("rate_limited").inc()
        limited_id = client_msg_id_of(raw)
        extra = {"client_msg_id": limited_id} if limited_id else {}
        conn.send_error(IkiroError("too many frames, slow down", ErrorCode.RATE_LIMITED, **extra))
        return
    try:
        frame = parse_inbound(raw)
    except IkiroError as err:
        ctx.metrics.frames_in("invalid").inc()
        conn.send_error(err)
        return
    ctx.metrics.frames_in(frame.type).inc()
    msg_id = getattr(frame.data, "client_msg_id", None)
    try:
        await HANDLERS[frame.type](ctx, conn, session, frame)
    except IkiroError as err:
        refused = err
    except nats.errors.Error as err:
        log.warning("frame %s failed on NATS: %s", frame.type, err)
        refused = IkiroError("temporarily unavailable, try again", ErrorCode.UNAVAILABLE)
    except Exception as err:
        log.exception("frame %s failed", frame.type, extra={"connection_id": conn.connection_id})
        refused = IkiroError(error_body(err)["message"], ErrorCode.INTERNAL_ERROR)
    else:
        return
    # The contract names the refused frame's `client_msg_id` in every error about it.
    conn.send_error(refused, msg_id)
