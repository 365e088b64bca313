"""The header parser that replaces nats-py's (`shared.broker.connection.parse_header_lines`) gives
the same result as nats-py's own on every shape of header block."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.broker.connection import _NATS_PARSE_HEADER_LINES, parse_header_lines

CASES = [
    b"",
    b"\r\n",
    b"Nats-Stream: KV_EDGE_COMMANDS\r\nNats-Subject: $KV.EDGE_COMMANDS.abc\r\nNats-Sequence: 12\r\n\r\n",
    b"Name:Value\r\nName2:\tValue2\r\n",
    b"Bad Name: x\r\nGood: y\r\n",
    b"\xffname: x\r\nok: \xff\xfe\r\n",
    b"no colon here\r\n: empty name\r\n",
    b"Dup: 1\r\nDup: 2\r\n",
    b"  Padded  :  value  \r\n",
]


def test_known_header_blocks_parse_as_nats_py_parses_them() -> None:
    for raw in CASES:
        assert parse_header_lines(raw) == _NATS_PARSE_HEADER_LINES(raw), raw


LINE = st.binary(max_size=30) | st.text(alphabet=" \t\x0b\x0c:aZ-\u00e9", max_size=20).map(str.encode)


@given(st.lists(LINE, max_size=6))
def test_any_header_block_parses_as_nats_py_parses_it(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines)
    assert parse_header_lines(raw) == _NATS_PARSE_HEADER_LINES(raw)
