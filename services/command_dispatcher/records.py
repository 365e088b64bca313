"""Command records as the dispatcher holds them, and the bytes they are stored and published as.

The stored JSON is the `edge.commands.get` shape (`shared.protocol.commands.CommandRecord`, plus
`sent_to`); in memory a record is a slots dataclass with epoch times, because the dispatcher reads
and writes several per command and a pydantic round trip per write was the largest cost it had.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.protocol import codec
from shared.protocol.commands import CommandState

# A record's times are written again with every write of it, and read by every replica: both
# directions are remembered (and kept paired, so a time read back is written back to the letter).
_ISO: dict[float, str] = {}
_EPOCH: dict[str, float] = {}
_REMEMBERED = 1 << 16


def iso_of_epoch(t: float) -> str:
    """ISO-8601 UTC with a `Z` (the form edge agents parse) of a unix time."""
    text = _ISO.get(t)
    if text is None:
        text = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
        _remember(t, text)
    return text


def epoch(text: str) -> float:
    t = _EPOCH.get(text)
    if t is None:
        t = datetime.fromisoformat(text).timestamp()
        _remember(t, text)
    return t


def _remember(t: float, text: str) -> None:
    if len(_ISO) >= _REMEMBERED:
        _ISO.clear()
        _EPOCH.clear()
    _ISO[t] = text
    _EPOCH[text] = t


@dataclass(slots=True)
class Record:
    command_id: str
    edge_agent_id: str
    command_type: str
    payload: dict[str, Any]
    priority: str
    ttl_s: int
    state: CommandState
    attempts: int
    error: str | None
    created_at: float
    updated_at: float
    expires_at: float
    history: list[tuple[CommandState, float]]
    sent_at: float | None = None
    sent_to: str | None = None  # the connection it was last sent to
    acked_at: float | None = None
    completed_at: float | None = None

    def moved(self, state: CommandState, now: float, **changes: Any) -> Record:
        """A copy in `state`, its history extended."""
        # Field by field: `dataclasses.replace` inspects the fields on every call, and every write
        # of a record makes one of these.
        copy = Record(
            self.command_id,
            self.edge_agent_id,
            self.command_type,
            self.payload,
            self.priority,
            self.ttl_s,
            state,
            self.attempts,
            self.error,
            self.created_at,
            now,
            self.expires_at,
            [*self.history, (state, now)],
            self.sent_at,
            self.sent_to,
            self.acked_at,
            self.completed_at,
        )
        for name, value in changes.items():
            setattr(copy, name, value)
        return copy

    def public(self) -> dict[str, Any]:
        """The record as `edge.commands.get` answers it."""
        body = self._json()
        del body["sent_to"]
        return body

    def _json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "edge_agent_id": self.edge_agent_id,
            "command_type": self.command_type,
            "payload": self.payload,
            "priority": self.priority,
            "ttl_s": self.ttl_s,
            "state": self.state.value,
            "attempts": self.attempts,
            "error": self.error,
            "created_at": iso_of_epoch(self.created_at),
            "updated_at": iso_of_epoch(self.updated_at),
            "expires_at": iso_of_epoch(self.expires_at),
            "history": [{"state": s.value, "at": iso_of_epoch(at)} for s, at in self.history],
            "sent_at": _iso_or_none(self.sent_at),
            "sent_to": self.sent_to,
            "acked_at": _iso_or_none(self.acked_at),
            "completed_at": _iso_or_none(self.completed_at),
        }


def _iso_or_none(t: float | None) -> str | None:
    return None if t is None else iso_of_epoch(t)


def _epoch_or_none(text: str | None) -> float | None:
    return None if text is None else epoch(text)


class RecordCodec:
    """How records are stored in the commands bucket."""

    @staticmethod
    def encode(record: Record) -> bytes:
        return codec.dumps(record._json())

    @staticmethod
    def decode(data: bytes) -> Record:
        body = orjson.loads(data)
        return Record(
            command_id=body["command_id"],
            edge_agent_id=body["edge_agent_id"],
            command_type=body["command_type"],
            payload=body["payload"],
            priority=body["priority"],
            ttl_s=body["ttl_s"],
            state=CommandState(body["state"]),
            attempts=body["attempts"],
            error=body["error"],
            created_at=epoch(body["created_at"]),
            updated_at=epoch(body["updated_at"]),
            expires_at=epoch(body["expires_at"]),
            history=[(CommandState(h["state"]), epoch(h["at"])) for h in body["history"]],
            sent_at=_epoch_or_none(body.get("sent_at")),
            sent_to=body.get("sent_to"),
            acked_at=_epoch_or_none(body.get("acked_at")),
            completed_at=_epoch_or_none(body.get("completed_at")),
        )


def command_data(record: Record) -> dict[str, Any]:
    """The command as pushed to an agent (socket `command` frame, sync response)."""
    return {
        "command_id": record.command_id,
        "command_type": record.command_type,
        "payload": record.payload,
        "priority": record.priority,
        "timestamp": iso_of_epoch(record.created_at),
    }


def lifecycle_events(old: Record | None, new: Record) -> list[bytes]:
    """One `edge.lifecycle` event per state `new` reached since `old` (a write may take several).

    `attempt` is the number of sends up to that state; only the last state carries the error.
    """
    seen = len(old.history) if old is not None else 0
    previous = new.history[seen - 1][0] if seen else None
    attempt = sum(1 for state, _ in new.history[:seen] if state is CommandState.SENT)
    last = len(new.history) - 1
    events = []
    for index in range(seen, len(new.history)):
        state, at = new.history[index]
        if state is CommandState.SENT:
            attempt += 1
        event = {
            "command_id": new.command_id,
            "edge_agent_id": new.edge_agent_id,
            "command_type": new.command_type,
            "state": state.value,
            "previous_state": None if previous is None else previous.value,
            "attempt": attempt,
            "error": new.error if index == last else None,
            "at": iso_of_epoch(at),
        }
        events.append(codec.dumps(event))
        previous = state
    return events
