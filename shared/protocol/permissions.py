"""Who may publish and subscribe what on NATS: one user per service, least privilege.

Derived from the subjects, streams and buckets of `subjects.py`, so a renamed subject cannot be
forgotten here. Production puts these into each service's user JWT (`ikiro nats-permissions`
prints the `nsc` commands); the tests run a real nats-server with them (and prove that each
service works with its own and cannot publish what belongs to another).

Replies need no publish grant: every user may answer the requests it receives (`allow_responses`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import subjects

INBOX = "_INBOX.>"
PURGED = (subjects.OPEN_STREAM,)  # streams whose messages a service removes one subject at a time


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def following(bucket: str) -> tuple[str, ...]:
    """Reading another service's KV bucket with an ordered consumer, and nothing more."""
    name = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.INFO.{name}",
        f"$JS.API.CONSUMER.CREATE.{name}",
        f"$JS.API.CONSUMER.CREATE.{name}.>",
        f"$JS.API.CONSUMER.INFO.{name}.>",
        f"$JS.API.CONSUMER.DELETE.{name}.>",
        f"$JS.FC.{name}.>",
    )


def jetstream(streams: tuple[str, ...], buckets: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The JetStream API a service needs on its own streams and KV buckets: create and read them,
    write to the buckets, consume (durable pull, ordered push) and acknowledge."""
    names = (*streams, *(f"KV_{bucket}" for bucket in buckets))
    grants = ["$JS.API.INFO"]
    grants += [f"$JS.API.STREAM.PURGE.{stream}" for stream in streams if stream in PURGED]
    for name in names:
        grants += [
            f"$JS.API.STREAM.CREATE.{name}",
            f"$JS.API.STREAM.UPDATE.{name}",
            f"$JS.API.STREAM.INFO.{name}",
            f"$JS.API.STREAM.MSG.GET.{name}",
            f"$JS.API.DIRECT.GET.{name}.>",
            f"$JS.API.CONSUMER.CREATE.{name}",
            f"$JS.API.CONSUMER.CREATE.{name}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{name}.>",
            f"$JS.API.CONSUMER.INFO.{name}.>",
            f"$JS.API.CONSUMER.DELETE.{name}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{name}.>",
            f"$JS.ACK.{name}.>",
            f"$JS.FC.{name}.>",
        ]
    grants += [f"$KV.{bucket}.>" for bucket in buckets]
    return tuple(grants)


COMMAND_DISPATCHER = Permissions(
    publish=(
        subjects.LIFECYCLE_ALL,
        subjects.deliver("*"),
        subjects.PARTITION_ALL,
        subjects.DISPATCHER_HANDOFF,
        subjects.OPEN_ALL,
        *jetstream(
            (subjects.ACKS_STREAM, subjects.OPEN_STREAM),
            (subjects.COMMANDS_BUCKET, subjects.AGENTS_BUCKET, subjects.DISPATCHERS_BUCKET),
        ),
    ),
    subscribe=(
        subjects.COMMANDS_SUBMIT,
        subjects.COMMANDS_GET,
        subjects.COMMANDS_CANCEL,
        subjects.AGENTS_GET,
        subjects.AGENTS_COMMANDS,
        subjects.AGENTS_PURGE,
        subjects.AGENTS_PULL,
        subjects.ACKS_SUBMIT,
        subjects.PARTITION_ALL,
        subjects.DISPATCHER_HANDOFF,
        INBOX,
    ),
)

EDGE_GATEWAY = Permissions(
    publish=(
        subjects.ACKS_SUBMIT,
        *(subjects.partition_api("*", op) for op in ("pull", "acks")),
        *following(subjects.DISPATCHERS_BUCKET),
        subjects.ACKS_STORED,
        subjects.PRESENCE_ALL,
        subjects.status("*"),
        subjects.events("*"),
        *jetstream((subjects.ACKS_STREAM,), (subjects.AGENTS_BUCKET,)),
    ),
    subscribe=(subjects.deliver("*"), subjects.PRESENCE_ALL, INBOX),
)

MINIAPP_GATEWAY = Permissions(
    publish=(
        subjects.miniapp_presence("*"),
        subjects.miniapp_actions("*"),
        subjects.miniapp_typing("*"),
        *jetstream((), (subjects.MINIAPP_SESSIONS_BUCKET, subjects.MINIAPP_PRESENCE_BUCKET)),
    ),
    subscribe=(
        subjects.MINIAPP_STATE_UPDATE,
        subjects.MINIAPP_GET,
        subjects.MINIAPP_CONFIGURE,
        subjects.miniapp_actions("*"),
        subjects.miniapp_typing("*"),
        INBOX,
    ),
)

# The other backend services: the internal API and the events, nothing of the gateways' own.
BACKEND = Permissions(
    publish=(
        subjects.COMMANDS_SUBMIT,
        subjects.COMMANDS_GET,
        subjects.COMMANDS_CANCEL,
        subjects.AGENTS_GET,
        subjects.AGENTS_COMMANDS,
        subjects.AGENTS_PURGE,
        subjects.MINIAPP_STATE_UPDATE,
        subjects.MINIAPP_GET,
        subjects.MINIAPP_CONFIGURE,
    ),
    subscribe=(
        subjects.LIFECYCLE_ALL,
        subjects.PRESENCE_ALL,
        subjects.status("*"),
        subjects.events("*"),
        subjects.miniapp_presence("*"),
        subjects.miniapp_actions("*"),
        INBOX,
    ),
)

USERS = {
    "command-dispatcher": COMMAND_DISPATCHER,
    "edge-gateway": EDGE_GATEWAY,
    "miniapp-gateway": MINIAPP_GATEWAY,
    "backend": BACKEND,
}
