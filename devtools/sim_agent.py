"""A simulated edge agent that behaves like the deployed ones (DESIGN section 3).

It connects with an HMAC token, pings every 30 s, acks every command `received` -> `executing`
-> `completed` (or `failed`), dedupes on `command_id`, and while its socket is refused or down it
polls `POST /edge/sync` instead, reconnecting with exponential backoff plus jitter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shared.auth import generate_edge_token
from shared.protocol.codec import now_iso

log = logging.getLogger("ikiro.sim_agent")

PING_EVERY_S = 30.0
SEEN_IDS = 10_000


@dataclass
class SimAgent:
    base_url: str  # http://host:port of an edge gateway
    edge_agent_id: str
    secret: str
    user_phone: str = "+15550100"
    fail: bool = False
    poll_interval_s: float = 2.0
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def _headers(self) -> dict[str, str]:
        token = generate_edge_token(self.edge_agent_id, self.user_phone, self.secret)
        return {"Authorization": f"Bearer {token}", "X-Edge-Agent-Id": self.edge_agent_id}

    def _final(self) -> dict[str, Any]:
        status = "failed" if self.fail else "completed"
        return {
            "status": status,
            "error": "simulated failure" if self.fail else None,
            "completed_at": now_iso(),
        }

    def _is_new(self, command_id: str) -> bool:
        if command_id in self._seen:
            return False
        self._seen[command_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    async def run(self) -> None:
        backoff = 1.0
        async with aiohttp.ClientSession() as session:
            while True:
                code = await self._socket(session)
                if code == 1012:
                    backoff = 1.0
                    continue
                wait = min(backoff, 60.0) * random.uniform(0.8, 1.2)
                self.on_event("fallback", {"close_code": code, "poll_for_s": round(wait, 1)})
                await self._poll_for(session, wait)
                backoff = min(backoff * 2, 60.0)

    async def _socket(self, session: aiohttp.ClientSession) -> int | None:
        url = self.base_url.replace("http", "ws", 1) + f"/edge/ws?edge_agent_id={self.edge_agent_id}"
        try:
            ws = await session.ws_connect(url, headers=self._headers(), heartbeat=None)
        except (aiohttp.ClientError, OSError) as err:
            self.on_event("refused", {"error": str(err)})
            return None
        self.on_event("connected", {"url": url})
        pinger = asyncio.create_task(self._ping(ws))
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT and msg.type is not aiohttp.WSMsgType.BINARY:
                    continue
                frame = json.loads(msg.data)
                if frame.get("type") == "command":
                    await self._execute_over_socket(ws, frame["data"])
                elif frame.get("type") != "pong":
                    self.on_event(str(frame.get("type")), frame.get("data") or {})
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
        self.on_event("closed", {"code": ws.close_code})
        return ws.close_code

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await asyncio.sleep(PING_EVERY_S)
            await ws.send_json({"type": "ping", "data": {}})

    async def _execute_over_socket(
        self, ws: aiohttp.ClientWebSocketResponse, command: dict[str, Any]
    ) -> None:
        command_id = command["command_id"]
        if not self._is_new(command_id):
            self.on_event("duplicate", command)
            return
        self.on_event("command", command)
        for ack in (
            {"status": "received", "error": None},
            {"status": "executing", "error": None},
            self._final(),
        ):
            await ws.send_json({"type": "command_ack", "data": {"command_id": command_id, **ack}})
            self.on_event("ack", {"command_id": command_id, "status": ack["status"]})

    async def _poll_for(self, session: aiohttp.ClientSession, seconds: float) -> None:
        """Poll `/edge/sync` until `seconds` have passed, acking what it hands over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        acks: list[dict[str, Any]] = []
        while True:
            body = {
                "edge_agent_id": self.edge_agent_id,
                "pending_events": [],
                "status": {"mode": "sync"},
                "acks": acks,
            }
            try:
                async with session.post(
                    f"{self.base_url}/edge/sync", json=body, headers=self._headers()
                ) as r:
                    reply = await r.json()
                    if r.status != 200:
                        self.on_event("sync_error", {"status": r.status, **reply})
                    else:
                        acks = []
                        for command in reply["commands"]:
                            if self._is_new(command["command_id"]):
                                self.on_event("command", {**command, "via": "sync"})
                                for status in ("received", "executing"):
                                    acks.append(
                                        {"command_id": command["command_id"], "status": status, "error": None}
                                    )
                                acks.append({"command_id": command["command_id"], **self._final()})
            except (aiohttp.ClientError, OSError, ValueError) as err:
                self.on_event("sync_error", {"error": str(err)})
            if loop.time() >= deadline and not acks:
                return
            await asyncio.sleep(min(self.poll_interval_s, max(deadline - loop.time(), 0.1)))
