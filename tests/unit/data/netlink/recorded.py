"""Load the rtnetlink messages recorded in this folder (see README.md)."""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path

from agent.netwatch import messages

DATA = Path(__file__).parent


@cache
def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def datagrams(hex_list: list[str]) -> list[bytes]:
    return [bytes.fromhex(text) for text in hex_list]


def step_datagrams(name: str) -> list[bytes]:
    for step in load("steps.json")["steps"]:
        if step["name"] == name:
            return datagrams(step["datagrams"])
    raise KeyError(f"no recorded step {name!r} in steps.json")


def step_names() -> list[str]:
    return [step["name"] for step in load("steps.json")["steps"]]


def records(data: bytes) -> list[messages.Message]:
    return [message for message in messages.parse_messages(data) if message.record is not None]


def rewrite_headers(data: bytes, seq: int | None = None, set_flags: int = 0,
                    pid: int | None = None) -> bytes:
    """Return the datagram with each message's nlmsg_seq and nlmsg_pid replaced, and ``set_flags`` added."""
    out = bytearray(data)
    offset = 0
    while offset < len(out):
        length, msg_type, flags, old_seq, old_pid = messages.NLMSGHDR.unpack_from(out, offset)
        messages.NLMSGHDR.pack_into(out, offset, length, msg_type, flags | set_flags,
                                    old_seq if seq is None else seq,
                                    old_pid if pid is None else pid)
        offset += (length + 3) & ~3
    return bytes(out)


def first_seq(data: bytes) -> int:
    return struct.unpack_from("=I", data, 8)[0]
