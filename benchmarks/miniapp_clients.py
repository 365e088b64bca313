"""MiniApp members as load: browser-like sockets that send `state_update`s and time every delivery.

`python -m benchmarks.miniapp_clients --tag T`, driven over stdin/stdout (`control`). A socket is
up once its `connected` frame arrived (the product's and the bare server's alike). A sender's
`client_msg_id` is `<tag>s<n>:<seq>:<monotonic send time>`; every member that receives the
`state_update` takes its latency from that (CLOCK_MONOTONIC is one clock for every process of
the machine). The patch is `{<sender>: seq}`, so the session state stays small.

Ops:
- `connect {url, sessions, per_session, user_prefix, secret, concurrency}`: `per_session`
  sockets in each session, `<url>/<session>?token=<dev JWT>`; reply once all are `connected`.
- `saturate {senders, window, start_at, warm_s, duration_s}`: the first `senders` sockets each
  keep `window` updates in flight (the next goes when the sender's own copy comes back); every
  socket counts the updates it receives within [start_at + warm_s, + duration_s].
- `paced {offsets, start_at, duration_s}`: sender i sends once a second at start_at + k +
  offsets[i]; every socket records the latency of each update it receives.
- `stats`: open sockets, updates received, error frames, closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from shared.supabase import mint_dev_token

from . import control
from .stats import summary

CONNECT_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 30.0
ECHO_WAIT_S = 2.0
DRAIN_S = 1.5


class Member:
    __slots__ = ("came_back", "connected", "in_flight", "seq", "tag", "ws")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.seq = 0
        self.in_flight = 0  # own updates sent and not seen back (saturate)
        self.came_back = asyncio.Event()

    def update_back(self) -> None:
        """One of this member's own updates came back (or was refused)."""
        self.in_flight = max(0, self.in_flight - 1)
        self.came_back.set()

    async def send_update(self) -> None:
        """Send the next `state_update`, stamped with its send time."""
        assert self.ws is not None
        self.seq += 1
        client_msg_id = f"{self.tag}:{self.seq}:{time.monotonic():.6f}"
        frame = {
            "type": "state_update",
            "data": {"patch": {self.tag: self.seq}, "client_msg_id": client_msg_id},
        }
        await self.ws.send_str(orjson.dumps(frame).decode())


class Members:
    """This process's sockets and what they received."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.members: list[Member] = []
        self.readers: set[asyncio.Task[None]] = set()
        self.received = 0
        self.errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        # What the current phase keeps: updates counted within [count_from, count_to]; latencies of
        # updates sent at or after `latency_from`.
        self.count_from = float("inf")
        self.count_to = float("inf")
        self.counted = 0
        self.latency_from = float("inf")
        self.latencies: list[float] = []

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `connect`: open the sockets and wait for each one's `connected` frame."""
        slots = asyncio.Semaphore(args.get("concurrency", 0) or 1_000_000)
        handshakes: list[float] = []
        failures: list[str] = []
        started = time.monotonic()

        async def one(session: str, user: str) -> None:
            member = Member(f"{self.tag}s{len(self.members)}")
            self.members.append(member)
            url = f"{args['url']}/{session}?token={mint_dev_token(user, args['secret'])}"
            async with slots:
                for attempt in range(CONNECT_ATTEMPTS):
                    t0 = time.monotonic()
                    try:
                        async with asyncio.timeout(CONNECT_TIMEOUT_S):
                            await self._open(url, member)
                    except (aiohttp.ClientError, OSError, TimeoutError) as err:
                        if attempt == CONNECT_ATTEMPTS - 1:
                            failures.append(repr(err))
                        else:
                            await asyncio.sleep(0.2 * 2**attempt)
                        continue
                    handshakes.append((time.monotonic() - t0) * 1000)
                    return

        sockets = [
            (session, f"{args['user_prefix']}{session}-{n}")
            for session in args["sessions"]
            for n in range(args["per_session"])
        ]
        await asyncio.gather(*(one(session, user) for session, user in sockets))
        return {
            "connected": len(handshakes),
            "failed": len(failures),
            "failures": failures[:5],
            "started_at": started,
            "done_at": time.monotonic(),
            "handshake_ms": summary(handshakes),
        }

    async def _open(self, url: str, member: Member) -> None:
        member.connected.clear()
        ws = await self.http.ws_connect(url, autoping=True, max_msg_size=0)
        member.ws = ws
        task = asyncio.create_task(self._read(member, ws))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)
        await member.connected.wait()
        if ws.closed:
            raise aiohttp.ClientError(f"closed at join: {ws.close_code}")

    async def _read(self, member: Member, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_frame(member, msg.data)
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            self.closes[str(ws.close_code)] += 1
            member.connected.set()  # wake a connect waiting for a socket refused at join
            if member.ws is ws:
                member.ws = None

    def _on_frame(self, member: Member, raw: str) -> None:
        now = time.monotonic()
        frame = orjson.loads(raw)
        kind = frame.get("type")
        if kind == "state_update":
            self.received += 1
            if self.count_from <= now <= self.count_to:
                self.counted += 1
            client_msg_id = frame["data"].get("client_msg_id")
            if not client_msg_id:
                return
            sender, _, sent = client_msg_id.split(":")
            sent_at = float(sent)
            if sent_at >= self.latency_from:
                self.latencies.append(round((now - sent_at) * 1000, 3))
            if sender == member.tag:
                member.update_back()
        elif kind == "connected":
            member.connected.set()
        elif kind == "error":
            data = frame.get("data", {})
            self.errors[str(data.get("code"))] += 1
            if data.get("client_msg_id"):
                member.update_back()

    def _senders(self, count: int) -> list[Member]:
        senders = [m for m in self.members if m.ws is not None][:count]
        if len(senders) < count:
            raise RuntimeError(f"only {len(senders)} open sockets for {count} senders")
        return senders

    async def saturate(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `saturate`: senders keep `window` updates in flight; count deliveries in the window."""
        senders = self._senders(args["senders"])
        start_at: float = args["start_at"]
        self.count_from = start_at + args["warm_s"]
        self.count_to = self.count_from + args["duration_s"]
        self.counted = 0
        self.latency_from = self.count_from
        self.latencies = []
        lost = 0
        sent = 0

        async def send(member: Member) -> None:
            nonlocal lost, sent
            member.in_flight = 0
            while time.monotonic() < self.count_to:
                while member.in_flight >= args["window"]:
                    member.came_back.clear()
                    try:
                        async with asyncio.timeout(ECHO_WAIT_S):
                            await member.came_back.wait()
                    except TimeoutError:
                        lost += 1  # an update that never came back: send on rather than stall
                        member.in_flight -= 1
                if member.ws is None:
                    return
                member.in_flight += 1
                await member.send_update()
                if time.monotonic() >= self.count_from:
                    sent += 1

        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        await asyncio.gather(*(send(m) for m in senders))
        await asyncio.sleep(DRAIN_S)
        counted, latencies = self.counted, self.latencies
        self.count_from = self.count_to = self.latency_from = float("inf")
        self.latencies = []
        return {"received": counted, "sent": sent, "lost": lost, "latencies_ms": latencies}

    async def paced(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `paced`: each sender once a second at its offset; every delivery's latency."""
        offsets: list[float] = args["offsets"]
        senders = self._senders(len(offsets))
        start_at: float = args["start_at"]
        duration: int = args["duration_s"]
        self.latency_from = start_at - 0.001
        self.latencies = []
        received_before = self.received

        async def send(member: Member, offset: float) -> int:
            count = 0
            for k in range(duration):
                await asyncio.sleep(max(0.0, start_at + k + offset - time.monotonic()))
                if member.ws is None:
                    break
                await member.send_update()
                count += 1
            return count

        sent = await asyncio.gather(*(send(m, o) for m, o in zip(senders, offsets, strict=True)))
        await asyncio.sleep(DRAIN_S)
        latencies = self.latencies
        self.latency_from = float("inf")
        self.latencies = []
        return {"sent": sum(sent), "received": self.received - received_before, "latencies_ms": latencies}

    async def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `stats`: sockets, updates, error frames and closes so far."""
        return {
            "open": sum(1 for m in self.members if m.ws is not None),
            "received": self.received,
            "errors": dict(self.errors),
            "closes": dict(self.closes),
        }

    async def close(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Op `close`: close every socket with 1000."""
        sockets = [m.ws for m in self.members if m.ws is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        return {"closed": len(sockets)}

    async def shutdown(self) -> None:
        """Close sockets, reader tasks and the HTTP session."""
        await self.close()
        for task in list(self.readers):
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await self.http.close()


async def main() -> None:
    """Answer ops until told to exit."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.miniapp_clients")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    members = Members(args.tag)
    await control.serve_ops(
        {
            "connect": members.connect,
            "saturate": members.saturate,
            "paced": members.paced,
            "stats": members.stats,
            "close": members.close,
        },
        members.shutdown,
    )


if __name__ == "__main__":
    control.run(main)
