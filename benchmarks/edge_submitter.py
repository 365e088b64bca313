"""Commands as load: submits to the product, or requests the bare relay, and times each to its end.

`python -m benchmarks.edge_submitter --nats URL --target product|bare --prefix P --agents N`,
driven over stdin/stdout (`control`).

- product: `edge.commands.submit` (a `send_message_now` with a fresh `command_id`); a command is
  done at its `completed` lifecycle event (one subscription to `edge.lifecycle.>`, registered
  before the submit, since events may overtake the submit's reply).
- bare: a NATS request on `bench.deliver.<agent>`, done at the relay's reply (sent when the
  agent acks `completed`).

Ops:
- `load {concurrency, start_at, duration_s}`: closed loop, `concurrency` commands in flight over
  the agents in turn, from now (warm-up) to the end of the window; latencies (ms) of the commands
  completed within the window [start_at, start_at + duration_s] (monotonic clock), errors.
- `sequential {count}`: one at a time; submit -> `sent` event and submit -> done (ms).
- `submit_each {agents, concurrency}`: one command per listed agent (product only), replies
  awaited, completions kept; `wait_completed {bound_s}` then reports how many completed
  and the monotonic time of the last.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg

from shared.protocol import subjects

from . import control
from .bare_edge_relay import deliver_subject
from .edge_agents import agent_ids

PAYLOAD = {"thread_id": "t", "text": "x"}
REQUEST_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Track:
    """One command in flight: when it was seen `sent`, and its end."""

    done: asyncio.Future[tuple[float, str]]
    sent_at: float | None = None


@dataclass(slots=True)
class Completions:
    """Commands of `submit_each`, followed to `completed` after their submitter has moved on."""

    expected: set[str] = field(default_factory=set)
    completed: dict[str, float] = field(default_factory=dict)
    other_final: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Submitter:
    def __init__(self, nc: Any, target: str, agents: list[str]) -> None:
        self.nc = nc
        self.target = target
        self.agents = agents
        self.tracks: dict[str, Track] = {}
        self.storm = Completions()
        self.next_agent = 0

    async def start(self) -> None:
        """Subscribe to every lifecycle event (product only), once."""
        if self.target == "product":
            await self.nc.subscribe(subjects.LIFECYCLE_ALL, cb=self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        now = time.monotonic()
        command_id = msg.subject[msg.subject.rindex(".") + 1 :]
        state = orjson.loads(msg.data)["state"]
        if command_id in self.storm.expected:
            if state == "completed":
                self.storm.completed[command_id] = now
                self.storm.changed.set()
            elif state in ("failed", "expired", "cancelled"):
                self.storm.other_final[command_id] = state
                self.storm.changed.set()
        track = self.tracks.get(command_id)
        if track is None:
            return
        if state == "sent" and track.sent_at is None:
            track.sent_at = now
        elif state in ("completed", "failed", "expired", "cancelled"):
            del self.tracks[command_id]
            if not track.done.done():
                track.done.set_result((now, state))

    def _agent(self) -> str:
        agent = self.agents[self.next_agent % len(self.agents)]
        self.next_agent += 1
        return agent

    async def one(self) -> tuple[float, float | None]:
        """Run one command to its end: (ms to done, ms to `sent` or None). Raises on failure."""
        agent = self._agent()
        command_id = str(uuid.uuid4())
        t0 = time.monotonic()
        if self.target == "bare":
            body = {
                "command_id": command_id,
                "command_type": "send_message_now",
                "payload": PAYLOAD,
                "priority": "normal",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            await self.nc.request(deliver_subject(agent), orjson.dumps(body), timeout=REQUEST_TIMEOUT_S)
            return (time.monotonic() - t0) * 1000, None
        track = Track(asyncio.get_running_loop().create_future())
        self.tracks[command_id] = track
        try:
            await self._submit(agent, command_id)
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                done_at, state = await track.done
        finally:
            self.tracks.pop(command_id, None)
        if state != "completed":
            raise RuntimeError(f"command ended {state}")
        sent_ms = (track.sent_at - t0) * 1000 if track.sent_at is not None else None
        return (done_at - t0) * 1000, sent_ms

    async def _submit(self, agent: str, command_id: str) -> None:
        body = {
            "edge_agent_id": agent,
            "command_type": "send_message_now",
            "payload": PAYLOAD,
            "command_id": command_id,
        }
        reply = await self.nc.request(subjects.COMMANDS_SUBMIT, orjson.dumps(body), timeout=REQUEST_TIMEOUT_S)
        answer = orjson.loads(reply.data)
        if not answer.get("ok"):
            raise RuntimeError(f"submit refused: {answer.get('error')}")

    async def load(self, args: dict[str, Any]) -> dict[str, Any]:
        """Keep `concurrency` commands in flight from now until `start_at + duration_s`.

        What completes before `start_at` is warm-up; the reply counts and times the commands that
        completed within the window, so a throughput is `len(latencies_ms) / duration_s`.
        """
        concurrency: int = args["concurrency"]
        start_at: float = args["start_at"]
        end_at = start_at + args["duration_s"]
        latencies: list[float] = []
        errors: list[str] = []

        async def worker() -> None:
            while time.monotonic() < end_at:
                try:
                    done_ms, _ = await self.one()
                except Exception as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    continue
                if start_at <= time.monotonic() <= end_at:
                    latencies.append(round(done_ms, 3))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"latencies_ms": latencies, "errors": len(errors), "error_samples": errors[:5]}

    async def sequential(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `sequential`: `count` commands one at a time."""
        done: list[float] = []
        sent: list[float] = []
        errors: list[str] = []
        for _ in range(args["count"]):
            try:
                done_ms, sent_ms = await self.one()
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            done.append(round(done_ms, 3))
            if sent_ms is not None:
                sent.append(round(sent_ms, 3))
        return {"done_ms": done, "sent_ms": sent, "errors": len(errors), "error_samples": errors[:5]}

    async def submit_each(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `submit_each`: one command per agent; completions are followed from now on."""
        ids: list[str] = agent_ids(args["prefix"], args["first"], args["count"])
        slots = asyncio.Semaphore(args.get("concurrency", 256))
        errors: list[str] = []
        started = time.monotonic()

        async def one(agent: str) -> None:
            command_id = str(uuid.uuid4())
            self.storm.expected.add(command_id)
            async with slots:
                try:
                    await self._submit(agent, command_id)
                except Exception as err:
                    self.storm.expected.discard(command_id)
                    errors.append(f"{type(err).__name__}: {err}")

        await asyncio.gather(*(one(a) for a in ids))
        return {
            "submitted": len(ids) - len(errors),
            "errors": len(errors),
            "error_samples": errors[:5],
            "started_at": started,
            "done_at": time.monotonic(),
        }

    async def wait_completed(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `wait_completed`: wait until every `submit_each` command ended, or `bound_s`."""
        storm = self.storm
        deadline = time.monotonic() + args["bound_s"]
        while len(storm.completed) + len(storm.other_final) < len(storm.expected):
            storm.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    await storm.changed.wait()
            except TimeoutError:
                break
        times = sorted(storm.completed.values())
        return {
            "expected": len(storm.expected),
            "completed": len(times),
            "other_final": sorted(set(storm.other_final.values())),
            "other_final_count": len(storm.other_final),
            "first_at": times[0] if times else None,
            "last_at": times[-1] if times else None,
        }


async def main() -> None:
    """Connect to NATS, subscribe to lifecycle events, then answer ops."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edge_submitter")
    parser.add_argument("--nats", required=True)
    parser.add_argument("--target", choices=["product", "bare"], required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--agents", type=int, required=True)
    args = parser.parse_args()
    nc = await nats.connect(args.nats, max_reconnect_attempts=-1)
    submitter = Submitter(nc, args.target, agent_ids(args.prefix, 0, args.agents))
    await submitter.start()

    async def close() -> None:
        await nc.close()

    await control.serve_ops(
        {
            "load": submitter.load,
            "sequential": submitter.sequential,
            "submit_each": submitter.submit_each,
            "wait_completed": submitter.wait_completed,
        },
        close,
    )


if __name__ == "__main__":
    control.run(main)
