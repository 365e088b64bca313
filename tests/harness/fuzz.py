"""Generated input for the fuzz tests: frames, bodies and ids of every shape a client could send,
and the calm client that shows the fuzzed service still serves everyone else.

The tests decide what each surface must answer. The default profile is derandomized so a run is
repeatable; `HYPOTHESIS_PROFILE=explore` searches wider.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.harness.ws import Socket

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Ids that would change a NATS subject if used as a token, or are not ids at all (each says "evil"
# where it can, so a subject that took one in is easy to spot).
EVIL_IDS = ["evil.x", "evil*", "evil>", "evil x", "", "e" * 129, "evïl", "evil\n", "evil/x", ".", ">"]

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=15,
)


@dataclass(frozen=True)
class Frame:
    """One WebSocket message: text or binary payload."""

    payload: str | bytes

    @property
    def size(self) -> int:
        return len(self.payload.encode() if isinstance(self.payload, str) else self.payload)


def envelopes(types: list[str], fields: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """`{"type", "data"}` frames with known and unknown types, right and wrong field types, fields
    missing and extra."""
    known = st.sampled_from(types)
    names = st.sampled_from(sorted({f for fs in fields.values() for f in fs}))
    data = JSON | st.dictionaries(names, JSON, max_size=4)
    envelope = st.fixed_dictionaries(
        {"type": known | st.text(max_size=20) | JSON_SCALARS, "data": data},
        optional={"extra": JSON},
    )
    return envelope.map(json.dumps) | JSON.map(json.dumps)


def raw_frames(limit: int) -> st.SearchStrategy[Frame]:
    """Bytes and text that are not a usable envelope: broken JSON, invalid UTF-8, control characters,
    duplicate keys, huge numbers, deep nesting, empty and limit-sized frames."""
    deep = st.integers(min_value=100, max_value=20_000).map(lambda n: "[" * n + "]" * n)
    return st.one_of(
        st.binary(max_size=64).map(Frame),
        st.text(max_size=64).map(Frame),
        st.just(Frame(b"\xff\xfe\xfd{")),
        st.just(Frame("")),
        st.just(Frame(b"")),
        st.just(Frame('{"type":"ping","type":"status","data":{},"data":[]}')),
        st.just(Frame('{"type":"ping","data":{"n":' + "9" * 5000 + "}}")),
        st.just(Frame('{"type":"\\u0000\\u0007","data":{"\\u0000":"\\u001b[31m"}}')),
        deep.map(Frame),
        st.just(Frame("x" * limit)),
        st.just(Frame(b"\x00" * limit)),
        st.just(Frame("y" * (limit + 1))),
    )


def frames(types: list[str], fields: dict[str, list[str]], limit: int) -> st.SearchStrategy[Frame]:
    return envelopes(types, fields).map(Frame) | raw_frames(limit)


def bodies() -> st.SearchStrategy[bytes]:
    """Request bodies: any JSON, objects with plausible and odd fields, and bytes that are not JSON."""
    fields = st.sampled_from(
        [
            "edge_agent_id",
            "command_id",
            "command_type",
            "payload",
            "priority",
            "ttl_s",
            "connection_id",
            "via_socket",
            "acks",
            "session_id",
            "patch",
            "base_version",
            "members",
        ]
    )
    objects = st.dictionaries(fields, JSON | st.sampled_from(EVIL_IDS), max_size=6)
    return st.one_of(
        JSON.map(lambda v: json.dumps(v).encode()),
        objects.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=128),
    )


def leaked(subjects: list[str]) -> list[str]:
    """The subjects an evil id made its way into (or left with an empty token)."""
    return [s for s in subjects if "evil" in s or s.endswith(".") or ".." in s]


class Calm:
    """A well-behaved client on the fuzzed service: its ping must stay as quick as before."""

    def __init__(self, socket: Socket, baseline_s: float) -> None:
        self.socket = socket
        self.bound_s = max(10 * baseline_s, 0.25)

    @classmethod
    async def measured(cls, socket: Socket) -> Calm:
        """Its usual round trip: the median of ten pings before any fuzzing."""
        rtts = []
        for _ in range(10):
            started = time.monotonic()
            await socket.ping_pong()
            rtts.append(time.monotonic() - started)
        return cls(socket, statistics.median(rtts))

    async def check(self) -> None:
        started = time.monotonic()
        await self.socket.ping_pong()
        assert time.monotonic() - started <= self.bound_s
