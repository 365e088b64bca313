"""Parsing browser frames: every unusable frame maps to the contract's error code."""

from __future__ import annotations

import pytest

from shared.protocol.codec import encode, error_frame
from shared.protocol.errors import ErrorCode, IkiroError
from shared.protocol.miniapp import (
    ActionFrame,
    AuthFrame,
    PingFrame,
    StateUpdateFrame,
    TypingFrame,
    parse_inbound,
)


def test_each_client_type_parses() -> None:
    assert isinstance(parse_inbound(b'{"type":"ping","data":{}}'), PingFrame)
    assert isinstance(parse_inbound(b'{"type":"ping"}'), PingFrame)
    update = parse_inbound(
        b'{"type":"state_update","data":{"patch":{"a":1},"base_version":3,"client_msg_id":"m"}}'
    )
    assert isinstance(update, StateUpdateFrame) and update.data.base_version == 3
    assert isinstance(parse_inbound(b'{"type":"action","data":{"action":"vote","payload":[1]}}'), ActionFrame)
    assert isinstance(parse_inbound(b'{"type":"typing","data":{"is_typing":true}}'), TypingFrame)
    assert isinstance(parse_inbound(b'{"type":"auth","data":{"token":"x"}}'), AuthFrame)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", ErrorCode.INVALID_JSON),
        (b"", ErrorCode.INVALID_JSON),
        (b'{"type":"teleport","data":{}}', ErrorCode.UNKNOWN_TYPE),
        (b'{"data":{}}', ErrorCode.INVALID_FRAME),
        (b"[1,2]", ErrorCode.INVALID_FRAME),
        (b'{"type":"state_update","data":{"patch":[1]}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"state_update","data":{"patch":"x"}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"state_update","data":{"patch":{},"base_version":"1"}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"state_update","data":{"patch":{},"base_version":1.5}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"state_update","data":{"patch":{},"base_version":true}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"state_update","data":{"patch":{},"base_version":-1}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"action","data":{"payload":1}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"action","data":{"action":""}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"typing","data":{"is_typing":"yes"}}', ErrorCode.INVALID_FRAME),
        (b'{"type":"auth","data":{}}', ErrorCode.INVALID_FRAME),
    ],
)
def test_unusable_frames_get_the_contract_code(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(IkiroError) as caught:
        parse_inbound(raw)
    assert caught.value.code is code


def test_refused_frame_error_carries_its_client_msg_id() -> None:
    with pytest.raises(IkiroError) as caught:
        parse_inbound(b'{"type":"state_update","data":{"patch":[],"client_msg_id":"m-7"}}')
    assert caught.value.extra["client_msg_id"] == "m-7"
    assert b'"client_msg_id":"m-7"' in error_frame(caught.value)


def test_encode_omits_unset_optionals_but_keeps_nulls_inside_a_patch() -> None:
    from shared.protocol.miniapp import Source, StateUpdateData

    frame = encode("state_update", StateUpdateData(patch={"gone": None}, version=2, source=Source.SERVER))
    assert frame == b'{"type":"state_update","data":{"patch":{"gone":null},"version":2,"source":"server"}}'
