"""MiniApp load with an exact check: members on both replicas write their own keys and compare views.

Every member of a session writes only keys of its own (`"<user>:<n>": n`), each update with a
`client_msg_id`, and records what became of each: accepted (its echo came back, on any socket of
the member), refused (an `error` frame naming it) or unknown (its socket died first). Each member
applies every `state_update` it receives to its own copy of the state and checks the versions come
one by one; across members, one version must carry one update and one update one version. At the
end every accepted write must be in the session's final state, and every member, on either
replica, must hold that same state and version. After a replica is killed, the soak measures how
long its connections stay listed among the peers of the others and in `miniapp.sessions.get`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nats.errors
from nats.aio.client import Client as NATS

from shared.supabase import mint_dev_token

from .submitter import call

SESSIONS_GET = "miniapp.sessions.get"
TOKEN_TTL_S = 4 * 3600
SERVICE_RESTART = 1012
RECONNECT_MAX_S = 5.0
LISTED_POLL_S = 0.1
LISTED_BOUND_S = 30.0
# An update neither echoed nor refused this long after it was sent was never answered: the
# contract answers every `state_update` (an echo, or an `error` naming its client_msg_id).
UNANSWERED_S = 10.0
ANSWER_WAIT_S = 5.0


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch, written again on purpose: each member's copy of the state is the
    soak's own, so a fault in the gateway's merge cannot agree with itself here."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(slots=True)
class SessionLedger:
    """What every member of one session saw: which update each version carried, and the reverse."""

    by_version: dict[int, set[str | None]] = field(default_factory=dict)
    by_msg: dict[str, set[int]] = field(default_factory=dict)


@dataclass(slots=True)
class Member:
    session_id: str
    user_id: str
    token: str
    home: int  # the replica it joins first, and returns to at the end
    rng: random.Random
    ledger: SessionLedger
    ws: aiohttp.ClientWebSocketResponse | None = None
    replica: int = -1
    connection_id: str | None = None
    synced: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    peers: dict[str, str] = field(default_factory=dict)  # connection id -> user id
    n: int = 0
    inflight: dict[str, float] = field(default_factory=dict)  # client_msg_id -> sent at
    accepted: dict[str, int] = field(default_factory=dict)  # client_msg_id -> version
    refused: dict[str, str] = field(default_factory=dict)  # client_msg_id -> error code
    # Its socket closed before an answer came: client_msg_id -> (sent at, closed at, replica).
    unknown: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # sent at, closed at, replica
    order_violations: list[list[Any]] = field(default_factory=list)  # [t, expected, got, connection]
    went_back: list[list[Any]] = field(default_factory=list)  # [t, before, connected version]
    closes: list[list[Any]] = field(default_factory=list)  # [t, replica, code]
    errors: list[list[Any]] = field(default_factory=list)  # [t, code, message]
    echo_waits: list[list[float]] = field(default_factory=list)  # [sent at, seconds until its echo]
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MiniAppLoad:
    def __init__(
        self,
        replicas: list[str],
        jwt_secret: str,
        sessions: int,
        members: int,
        rate_per_member: float,
        seed: int,
    ) -> None:
        self.replicas = replicas
        self.rate_per_member = rate_per_member
        self.sending = asyncio.Event()
        self.stopping = asyncio.Event()
        self.ledgers: dict[str, SessionLedger] = {}
        self.members: list[Member] = []
        for s in range(sessions):
            session_id = f"soak-{seed}-s{s}"
            ledger = self.ledgers[session_id] = SessionLedger()
            for m in range(members):
                user = f"u{s}-{m}"
                token = mint_dev_token(user, jwt_secret, "authenticated", TOKEN_TTL_S)
                rng = random.Random(f"{seed}:{user}")
                self.members.append(Member(session_id, user, token, m % len(replicas), rng, ledger))
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.listed: list[dict[str, Any]] = []  # per replica kill: how long its members stayed listed

    @property
    def sessions(self) -> list[str]:
        return list(self.ledgers)

    async def start(self, timeout_s: float) -> None:
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for member in self.members:
            self._tasks.append(asyncio.create_task(self._life(member)))
        deadline = time.monotonic() + timeout_s
        while not all(m.synced for m in self.members):
            if time.monotonic() > deadline:
                raise TimeoutError("MiniApp members did not all join")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Stop every member at once; closing the client session drops whatever sockets are left."""
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # --- one member ---

    async def _life(self, member: Member) -> None:
        sender = asyncio.create_task(self._send_loop(member))
        try:
            order = [member.home, *[r for r in range(len(self.replicas)) if r != member.home]]
            delay = 0.25
            while not self.stopping.is_set():
                if not await self._connect(member, order):
                    await asyncio.sleep(delay * (1 + 0.3 * member.rng.random()))
                    delay = min(delay * 2, RECONNECT_MAX_S)
                    continue
                delay = 0.25
                code = await self._serve(member)
                if self.stopping.is_set():
                    return
                left = member.replica
                # A load balancer sends the reconnect to the other replica first (a killed or draining one
                # is out of its pool), and to the home replica when this close was the return home.
                others = [r for r in range(len(self.replicas)) if r != left]
                order = (
                    [member.home, *[r for r in others if r != member.home]]
                    if code == 1000
                    else [*others, left]
                )
                if code not in (SERVICE_RESTART, 1000):
                    await asyncio.sleep(0.2 * member.rng.random())
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _connect(self, member: Member, order: list[int]) -> bool:
        assert self._http is not None
        for replica in order:
            url = f"{self.replicas[replica]}/ws/miniapp/{member.session_id}?token={member.token}"
            try:
                ws = await self._http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
            member.ws, member.replica = ws, replica
            return True
        return False

    async def _serve(self, member: Member) -> int | None:
        ws = member.ws
        assert ws is not None
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_frame(member, msg.data)
        finally:
            member.synced = False
            member.ws = None
            member.closes.append([time.time(), member.replica, ws.close_code])
            # Whatever was on its way without an answer is unknown, unless an echo comes later.
            closed = time.time()
            member.unknown.update({m: (sent, closed, member.replica) for m, sent in member.inflight.items()})
            member.inflight.clear()
            member.changed.set()
        return ws.close_code

    def _on_frame(self, member: Member, raw: str) -> None:
        try:
            frame = json.loads(raw)
            kind, data = frame["type"], frame.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return
        now = time.time()
        if kind == "connected":
            if data["version"] < member.version:
                member.went_back.append([now, member.version, data["version"]])
            member.state, member.version = data["state"], data["version"]
            member.connection_id = data["connection_id"]
            member.peers = {p["connection_id"]: p["user_id"] for p in data["peers"]}
            member.synced = True
        elif kind == "state_update":
            version = int(data["version"])
            if version != member.version + 1:
                member.order_violations.append([now, member.version + 1, version, member.connection_id])
            member.state = merge_patch(member.state, data["patch"])
            member.version = max(version, member.version)
            msg_id = data.get("client_msg_id")
            member.ledger.by_version.setdefault(version, set()).add(msg_id)
            if msg_id is not None:
                member.ledger.by_msg.setdefault(msg_id, set()).add(version)
                if msg_id.startswith(member.user_id + ":"):
                    sent_at = member.inflight.pop(msg_id, None)
                    if sent_at is not None:
                        member.echo_waits.append([sent_at, now - sent_at])
                    member.unknown.pop(msg_id, None)
                    member.accepted[msg_id] = version
        elif kind == "presence":
            if data.get("event") == "joined":
                member.peers[data["connection_id"]] = data["user_id"]
            elif data.get("event") == "left":
                member.peers.pop(data["connection_id"], None)
        elif kind == "error":
            msg_id = data.get("client_msg_id")
            member.errors.append([now, data.get("code"), data.get("message")])
            if msg_id is not None and msg_id in member.inflight:
                del member.inflight[msg_id]
                member.refused[msg_id] = str(data.get("code"))
        member.changed.set()

    async def _send_loop(self, member: Member) -> None:
        interval = 1.0 / self.rate_per_member
        await asyncio.sleep(member.rng.uniform(0, interval))
        while True:
            await self.sending.wait()
            ws = member.ws
            if ws is not None and not ws.closed and member.synced:
                member.n += 1
                msg_id = f"{member.user_id}:{member.n}"
                frame = {
                    "type": "state_update",
                    "data": {"patch": {msg_id: member.n}, "client_msg_id": msg_id},
                }
                member.inflight[msg_id] = time.time()
                try:
                    await ws.send_str(json.dumps(frame))
                except (aiohttp.ClientError, ConnectionError, RuntimeError):
                    del member.inflight[msg_id]  # never went out
                    member.n -= 1
            await asyncio.sleep(interval * member.rng.uniform(0.7, 1.3))

    # --- faults and the end ---

    def on_replica(self, replica: int) -> list[Member]:
        return [m for m in self.members if m.replica == replica and m.synced]

    def connections_on(self, replica: int) -> set[str]:
        """The connection ids of the members that hold a socket on `replica` now."""
        return {
            m.connection_id for m in self.members if m.replica == replica and m.synced and m.connection_id
        }

    async def measure_listed(
        self, dead: set[str], replica: int, killed_at: float, nc: NATS
    ) -> dict[str, Any]:
        """After `replica` was killed: how long its connections `dead` stayed listed among the peers
        of a connected member (the last moment one still did), how long until every member was back
        in its session, and until `miniapp.sessions.get` stopped listing them (each bounded)."""
        last_listed: float | None = None  # the last moment a connected member listed one
        last_get: float | None = None  # the last `sessions.get` answer that listed one
        back: float | None = None
        get_clear = False
        deadline = killed_at + LISTED_BOUND_S
        next_get = 0.0
        listing = True
        while time.time() < deadline:
            now = time.time()
            listing = any(m.synced and dead & m.peers.keys() for m in self.members)
            if listing:
                last_listed = now
            if back is None and all(m.synced and m.connection_id not in dead for m in self.members):
                back = now
            if not get_clear and now >= next_get:
                next_get = now + 0.5
                answer = await self._listed_by_get(dead, nc)
                if answer is True:
                    last_get = now
                get_clear = answer is False  # None: a session did not answer, ask again
            if not listing and back is not None and get_clear:
                break
            await asyncio.sleep(LISTED_POLL_S)
        result = {
            "replica": replica,
            "connections": len(dead),
            # None: still listed when the measure gave up.
            "members_view_s": None if listing else round((last_listed or killed_at) - killed_at, 2),
            "members_back_s": None if back is None else round(back - killed_at, 2),
            "sessions_get_s": round((last_get or killed_at) - killed_at, 2) if get_clear else None,
        }
        self.listed.append(result)
        return result

    async def _listed_by_get(self, dead: set[str], nc: NATS) -> bool | None:
        """Whether `miniapp.sessions.get` lists one of `dead` in a session; None if one did not answer."""
        for session_id in self.sessions:
            try:
                reply = await call(nc, SESSIONS_GET, {"session_id": session_id}, 2.0)
            except (nats.errors.Error, TimeoutError):
                return None
            if not reply.get("ok"):
                return None
            if dead & {p["connection_id"] for p in reply["peers"]}:
                return True
        return False

    async def settle(self, nc: NATS, timeout_s: float) -> dict[str, Any]:
        """Stop writing, bring every member home, wait for all views to converge; the final record."""
        self.sending.clear()
        deadline = time.monotonic() + timeout_s
        answer_by = time.monotonic() + ANSWER_WAIT_S
        while any(m.inflight for m in self.members) and time.monotonic() < answer_by:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        # A reload of every page that is not on its home replica, or that waits for an answer still.
        reload = [m for m in self.members if m.ws is not None and (m.replica != m.home or m.inflight)]
        await asyncio.gather(*(m.ws.close() for m in reload if m.ws is not None), return_exceptions=True)
        finals: dict[str, dict[str, Any]] = {}
        stable = False
        while time.monotonic() < deadline:
            finals = {}
            for session_id in self.sessions:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    reply = await call(nc, SESSIONS_GET, {"session_id": session_id}, 2.0)
                    if reply.get("ok"):
                        finals[session_id] = reply
            converged = len(finals) == len(self.sessions) and all(
                m.synced and m.replica == m.home and m.version == finals[m.session_id].get("version")
                for m in self.members
            )
            if converged:
                if stable:
                    break
                stable = True  # once more, a moment later: a socket just closed is gone from `peers` by then
                await asyncio.sleep(1.0)
                continue
            stable = False
            await asyncio.sleep(0.25)
        return finals
