"""Wire models of the MiniApp WebSocket protocol and its internal NATS API (DESIGN section 5).

Browser -> gateway frames are one discriminated union parsed in one pass by `MINIAPP_INBOUND`.
Gateway -> browser frames are built from the `*Data` models with `codec.encode`. The records the gateway
keeps in JetStream (session state, presence) and the events it publishes live here too: any
service may read them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, ValidationError

from shared.protocol.errors import ErrorCode, refusal
from shared.protocol.subjects import TOKEN_RE

SessionId = Annotated[str, Field(pattern=TOKEN_RE.pattern)]
ClientMsgId = Annotated[str, Field(min_length=1, max_length=128)]
# A user id (a token's `sub`): 1 to 256 printable ASCII characters, no spaces.
USER_ID_PATTERN = r"^[!-~]{1,256}$"
UserId = Annotated[str, Field(pattern=USER_ID_PATTERN)]

MAX_FRAME_BYTES = 64 * 1024
MAX_STATE_BYTES = 256 * 1024
MAX_CONNECTIONS_PER_SESSION = 200
# Sockets one user may hold in one session, so that no user can fill it (close 4029).
MAX_SOCKETS_PER_USER = 5
# Write ids a session record remembers (`SessionRecord.writes`).
RECENT_WRITES = 16
# Members a session may list (DESIGN section 5, "Who may join").
MAX_MEMBERS = 1000
# What a member list can add to a session record: every id at its longest, quoted, with commas.
MAX_MEMBERS_BYTES = MAX_MEMBERS * (256 + 3) + 64


class Source(StrEnum):
    PEER = "peer"
    SERVER = "server"


class PresenceEvent(StrEnum):
    JOINED = "joined"
    LEFT = "left"
    TYPING = "typing"


# --- Browser -> gateway ---


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StateUpdateIn(_Data):
    patch: dict[str, Any]
    base_version: StrictInt | None = Field(default=None, ge=0)
    client_msg_id: ClientMsgId | None = None


class ActionIn(_Data):
    action: str = Field(min_length=1, max_length=128)
    payload: Any = None
    client_msg_id: ClientMsgId | None = None


class TypingIn(_Data):
    is_typing: StrictBool


class AuthIn(_Data):
    # Any string: an empty or oversized one is a bad token (`invalid_token`), not a bad frame.
    token: str


class PingFrame(BaseModel):
    type: Literal["ping"]
    data: dict[str, Any] = Field(default_factory=dict)


class StateUpdateFrame(BaseModel):
    type: Literal["state_update"]
    data: StateUpdateIn


class ActionFrame(BaseModel):
    type: Literal["action"]
    data: ActionIn


class TypingFrame(BaseModel):
    type: Literal["typing"]
    data: TypingIn


class AuthFrame(BaseModel):
    type: Literal["auth"]
    data: AuthIn


InboundFrame = PingFrame | StateUpdateFrame | ActionFrame | TypingFrame | AuthFrame
MINIAPP_INBOUND: TypeAdapter[InboundFrame] = TypeAdapter(Annotated[InboundFrame, Field(discriminator="type")])


def parse_inbound(raw: bytes | str) -> InboundFrame:
    """Parse one browser frame, or raise the `IkiroError` its `error` frame carries."""
    try:
        return MINIAPP_INBOUND.validate_json(raw)
    except ValidationError as err:
        client_msg_id = client_msg_id_of(raw)
        raise refusal(
            err, ErrorCode.INVALID_FRAME, **({"client_msg_id": client_msg_id} if client_msg_id else {})
        ) from None


def client_msg_id_of(raw: bytes | str) -> str | None:
    """The `client_msg_id` of a refused frame (even an unparsed one), so the error can name it."""
    try:
        body = orjson.loads(raw)
        value = body["data"]["client_msg_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


# --- Gateway -> browser ---


class Peer(BaseModel):
    user_id: str
    connection_id: str


class ConnectedData(BaseModel):
    session_id: str
    user_id: str
    connection_id: str
    connection_count: int
    peers: list[Peer]
    state: dict[str, Any]
    version: int


class PresenceData(BaseModel):
    event: PresenceEvent
    user_id: str
    connection_id: str
    connection_count: int
    is_typing: bool | None = None


class StateUpdateData(BaseModel):
    patch: dict[str, Any]
    version: int
    source: Source
    user_id: str | None = None
    connection_id: str | None = None
    client_msg_id: str | None = None


class ActionData(BaseModel):
    action: str
    payload: Any = None
    user_id: str
    connection_id: str


class AuthOkData(BaseModel):
    expires_at: int


# --- Internal NATS API ---


class StateUpdateRequest(BaseModel):
    session_id: SessionId
    patch: dict[str, Any]
    base_version: StrictInt | None = Field(default=None, ge=0)


class StateUpdateReply(BaseModel):
    version: int


class GetRequest(BaseModel):
    session_id: SessionId


class GetReply(BaseModel):
    state: dict[str, Any]
    version: int
    connection_count: int
    peers: list[Peer]
    members: list[str] | None


class ConfigureRequest(BaseModel):
    """Who may join the session: a list of user ids, or None for every authenticated user."""

    session_id: SessionId
    members: Annotated[list[UserId], Field(max_length=MAX_MEMBERS)] | None


class ConfigureReply(BaseModel):
    members: list[str] | None
    closed: int  # connections closed because their user is no longer listed


class PresenceNotice(BaseModel):
    """Published on `miniapp.presence.<session_id>` for backend consumers."""

    session_id: str
    event: PresenceEvent
    user_id: str
    connection_id: str
    connection_count: int
    at: str


class ActionNotice(BaseModel):
    """Published on `miniapp.actions.<session_id>`; gateways relay it to the other sockets."""

    session_id: str
    user_id: str
    connection_id: str
    action: str
    payload: Any = None
    at: str


class TypingNotice(BaseModel):
    """Gateway-to-gateway relay of a `typing` frame (not part of the public API)."""

    user_id: str
    connection_id: str
    is_typing: bool


STATE_UPDATE_REQUEST: TypeAdapter[StateUpdateRequest] = TypeAdapter(StateUpdateRequest)
GET_REQUEST: TypeAdapter[GetRequest] = TypeAdapter(GetRequest)
CONFIGURE_REQUEST: TypeAdapter[ConfigureRequest] = TypeAdapter(ConfigureRequest)
ACTION_NOTICE: TypeAdapter[ActionNotice] = TypeAdapter(ActionNotice)
TYPING_NOTICE: TypeAdapter[TypingNotice] = TypeAdapter(TypingNotice)


# --- JetStream records ---


class Update(BaseModel):
    """One accepted update: the patch that made `version`, and who sent it."""

    version: int
    patch: dict[str, Any]
    source: Source
    user_id: str | None = None
    connection_id: str | None = None
    client_msg_id: str | None = None


class SessionRecord(BaseModel):
    """The value of a session's key: the state after `version`, the updates that made it since the
    previous record (several, when they were written together), and who may join.

    `updates` is empty for a record that changes no state (same version): one that only renews the
    session's idle TTL, or sets its members.
    """

    state: dict[str, Any] = Field(default_factory=dict)
    version: int = 0
    updates: list[Update] = Field(default_factory=list)
    at: float = 0.0  # unix seconds when it was written
    # Set by `miniapp.sessions.configure`: the listed users may join (None: every authenticated
    # user). An unconfigured session follows MINIAPP_SESSION_ACCESS.
    configured: bool = False
    members: list[str] | None = None
    # Ids of the last writes that made versions, newest last: a writer whose write timed out (it may
    # or may not have landed) finds here whether it did, instead of applying its updates twice.
    writes: list[str] = Field(default_factory=list)

    def admits(self, user_id: str, open_by_default: bool) -> bool:
        """Whether `user_id` may be in this session."""
        if not self.configured:
            return open_by_default
        return self.members is None or user_id in self.members


class ConnectionStatus(StrEnum):
    PENDING = "pending"  # written, not yet admitted under the session cap
    ACTIVE = "active"


class ConnectionRecord(BaseModel):
    """One connection's presence entry; its replica's lease keeps it alive."""

    session_id: str
    connection_id: str
    user_id: str
    replica_id: str
    status: ConnectionStatus
    created_rev: int | None = None  # revision of the first write: the admission order


SESSION_RECORD: TypeAdapter[SessionRecord] = TypeAdapter(SessionRecord)
CONNECTION_RECORD: TypeAdapter[ConnectionRecord] = TypeAdapter(ConnectionRecord)
