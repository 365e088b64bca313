"""Hostile clients beside the real ones, for the whole load: the shapes an outsider tries against
the gateways (SECURITY.md), each checked against the answer the contract gives it, while faults
happen around them.

- `header_drip`: half a request, then a byte every 3 s: closed within the 10 s header deadline.
- `odd_jwt`: a token signed with the real secret whose header `alg` is a list or an object: the
  MiniApp socket closes 4001.
- `subprotocol_token`: a valid token, also offered as a WebSocket subprotocol: admitted, and the
  token never reaches a log (checked at the end over every service's log).
- `sync_at_limit` / `sync_over_limit`: a chunked `/edge/sync` body of exactly 1 MiB (taken: 200,
  or 429/503 when rate limited or no dispatcher answers) and of 1 MiB + 1 byte (413).

An attempt that overlaps a fault on its gateway is counted apart: a killed or paused target
answers nothing the contract could promise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from shared.auth import generate_edge_token
from shared.supabase import mint_dev_token

from .faults import FaultLog
from .stack import Service

HEADER_TIMEOUT_S = 10.0
DRIP_EVERY_S = 3.0
MAX_SYNC_BODY = 1024 * 1024
INTRUDER_AGENT = "soak-intruder"
EXPECTED: dict[str, set[str]] = {
    "header_drip": {"closed in time"},
    "odd_jwt": {"4001"},
    "subprotocol_token": {"admitted"},
    "sync_at_limit": {"200", "429", "503"},
    "sync_over_limit": {"413"},
}


@dataclass(slots=True)
class Attempt:
    shape: str
    target: str
    started: float  # unix time
    ended: float
    outcome: str


class Intruders:
    def __init__(
        self,
        edges: list[Service],
        miniapps: list[Service],
        edge_secret: str,
        jwt_secret: str,
        seed: int,
    ) -> None:
        # Which gateways each shape is tried on.
        self.targets = {
            "header_drip": edges + miniapps,
            "odd_jwt": miniapps,
            "subprotocol_token": miniapps,
            "sync_at_limit": edges,
            "sync_over_limit": edges,
        }
        self.edge_secret = edge_secret
        self.jwt_secret = jwt_secret
        self.rng = random.Random(seed + 7)
        self.attempts: list[Attempt] = []
        self.offered_tokens: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """One attempt every `every_s` until `stop`, each in its own task; then wait for them."""
        shapes = list(EXPECTED)
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                shape = self.rng.choice(shapes)
                task = asyncio.create_task(self._attempt(http, shape))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _attempt(self, http: aiohttp.ClientSession, shape: str) -> None:
        target = self.rng.choice(self.targets[shape])
        started = time.time()
        try:
            async with asyncio.timeout(HEADER_TIMEOUT_S + 3 * DRIP_EVERY_S):
                outcome = await getattr(self, f"_{shape}")(http, target)
        except (OSError, aiohttp.ClientError) as err:
            outcome = f"unreachable ({type(err).__name__})"
        except TimeoutError:
            outcome = "no answer in time"
        self.attempts.append(Attempt(shape, target.name, started, time.time(), outcome))

    async def _header_drip(self, http: aiohttp.ClientSession, target: Service) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        opened = time.monotonic()
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while True:
                try:
                    async with asyncio.timeout(DRIP_EVERY_S):
                        if not await reader.read(1024):
                            break
                except TimeoutError:
                    writer.write(b"X")
            took = time.monotonic() - opened
            return "closed in time" if took <= HEADER_TIMEOUT_S + 1.0 else f"closed after {took:.1f} s"
        finally:
            writer.close()

    async def _odd_jwt(self, http: aiohttp.ClientSession, target: Service) -> str:
        claims = {"sub": "soak-intruder", "aud": "authenticated", "exp": int(time.time()) + 600}
        token = _signed({"alg": self.rng.choice([["HS256"], {"HS256": 1}])}, claims, self.jwt_secret)
        return await _socket_outcome(http, target, token, [])

    async def _subprotocol_token(self, http: aiohttp.ClientSession, target: Service) -> str:
        token = mint_dev_token(f"soak-intruder-{self.rng.randrange(10**6)}", self.jwt_secret, ttl_s=600)
        self.offered_tokens.append(token)
        return await _socket_outcome(http, target, token, [token])

    async def _sync_at_limit(self, http: aiohttp.ClientSession, target: Service) -> str:
        return await self._chunked_sync(http, target, MAX_SYNC_BODY)

    async def _sync_over_limit(self, http: aiohttp.ClientSession, target: Service) -> str:
        return await self._chunked_sync(http, target, MAX_SYNC_BODY + 1)

    async def _chunked_sync(self, http: aiohttp.ClientSession, target: Service, size: int) -> str:
        core = json.dumps({"edge_agent_id": INTRUDER_AGENT}).encode()
        body = core + b" " * (size - len(core))

        async def chunks() -> Any:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        token = generate_edge_token(INTRUDER_AGENT, "+15550000000", self.edge_secret)
        headers = {"Authorization": f"Bearer {token}", "X-Edge-Agent-Id": INTRUDER_AGENT}
        async with http.post(f"{target.base}/edge/sync", data=chunks(), headers=headers, chunked=True) as r:
            return str(r.status)

    def verdict(self, faults: list[FaultLog], logs_with: Any) -> dict[str, Any]:
        """Per shape: attempts, answered as the contract says, answered otherwise (outside any
        fault on the target), and during a fault; and the offered tokens found in any log."""
        shapes: dict[str, Counter[str]] = {shape: Counter() for shape in EXPECTED}
        otherwise: list[dict[str, Any]] = []
        for a in self.attempts:
            if a.outcome in EXPECTED[a.shape]:
                shapes[a.shape]["as the contract says"] += 1
            elif any(_hits(f, a) for f in faults):
                shapes[a.shape]["during a fault"] += 1
            else:
                shapes[a.shape]["otherwise"] += 1
                otherwise.append({"shape": a.shape, "target": a.target, "outcome": a.outcome})
        leaked = [t[:12] + "..." for t in self.offered_tokens if logs_with(t.split(".")[1][:24], 1)]
        return {
            "attempts": len(self.attempts),
            "by_shape": {shape: dict(counts) for shape, counts in shapes.items()},
            "answered_otherwise": len(otherwise),
            "tokens_in_logs": len(leaked),
            "evidence": {"answered_otherwise": otherwise[:20], "tokens_in_logs": leaked[:5]},
        }


def _hits(fault: FaultLog, attempt: Attempt) -> bool:
    on_target = fault.target in (attempt.target, "every gateway") or fault.target.startswith("nats")
    return on_target and (fault.active_at(attempt.started) or fault.active_at(attempt.ended))


async def _socket_outcome(
    http: aiohttp.ClientSession, target: Service, token: str, protocols: list[str]
) -> str:
    url = f"ws://127.0.0.1:{target.port}/ws/miniapp/soak-intruder-session?token={token}"
    async with http.ws_connect(url, protocols=protocols) as ws:
        first = await ws.receive(timeout=5)
        if first.type == aiohttp.WSMsgType.TEXT and json.loads(first.data).get("type") == "connected":
            return "admitted"
        return str(first.data) if first.type == aiohttp.WSMsgType.CLOSE else f"{first.type.name}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signed(header: dict[str, Any], claims: dict[str, Any], secret: str) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
