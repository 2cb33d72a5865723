"""IKE sockets: pktinfo in both directions, the bypass policy, and a loopback exchange."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent.sockets import (
    IN6_PKTINFO,
    IN_PKTINFO,
    IP_PKTINFO,
    IPV6_PKTINFO,
    IkeSockets,
    bypass_policy,
    decode_pktinfo,
    encode_pktinfo,
)
from xfrm import codec
from xfrm.model import Action, Direction


def test_encode_pktinfo_ipv4():
    level, kind, data = encode_pktinfo("192.0.2.10")

    assert (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)
    ifindex, spec_dst, _ = IN_PKTINFO.unpack(data)
    assert ifindex == 0
    assert spec_dst == socket.inet_aton("192.0.2.10")


def test_encode_pktinfo_ipv6():
    level, kind, data = encode_pktinfo("2001:db8::10")

    assert (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO)
    address, ifindex = IN6_PKTINFO.unpack(data)
    assert address == socket.inet_pton(socket.AF_INET6, "2001:db8::10")
    assert ifindex == 0


def test_decode_pktinfo_destination():
    ipv4 = IN_PKTINFO.pack(3, socket.inet_aton("192.0.2.99"), socket.inet_aton("192.0.2.10"))
    ipv6 = IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, "2001:db8::10"), 3)

    assert decode_pktinfo([(socket.IPPROTO_IP, IP_PKTINFO, ipv4)]) == "192.0.2.10"
    assert decode_pktinfo([(socket.IPPROTO_IPV6, IPV6_PKTINFO, ipv6)]) == "2001:db8::10"
    assert decode_pktinfo([]) is None
    assert decode_pktinfo([(socket.IPPROTO_IP, IP_PKTINFO, b"\0" * 4)]) is None


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("direction", [Direction.IN, Direction.OUT])
def test_bypass_policy_allows_all(family, direction):
    data = bypass_policy(family, direction)

    values = codec.USERPOLICY_INFO.unpack(data)
    assert len(data) == codec.USERPOLICY_INFO.size
    assert values["dir"] == direction
    assert values["action"] == Action.ALLOW
    assert values["sel.family"] == family
    assert values["sel.prefixlen_s"] == values["sel.prefixlen_d"] == 0


def free_ports(count: int) -> list[int]:
    """Return UDP ports that were free a moment ago, on both address families."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def exchange(sends: list[tuple[bytes, tuple, tuple]]) -> tuple[list, list[bool]]:
    port, natt_port = free_ports(2)
    sockets = IkeSockets(port, natt_port, bypass=False)
    sockets.open()
    received: list = []
    try:
        sockets.start(asyncio.get_running_loop(), lambda data, local, remote: received.append((data, local, remote)))
        results = []
        for data, local, remote in sends:
            fill = {"IKE": port, "NATT": natt_port}
            results.append(sockets.send(data, (local[0], fill[local[1]]), (remote[0], fill[remote[1]])))
        for _ in range(50):
            if len(received) >= sum(results):
                break
            await asyncio.sleep(0.01)
        return [(data, (l[0], "IKE" if l[1] == port else "NATT"), (r[0], "IKE" if r[1] == port else "NATT"))
                for data, l, r in received], results
    finally:
        sockets.close()


def test_loopback_source_and_destination():
    received, results = asyncio.run(exchange([
        (b"from .1", ("127.0.0.1", "IKE"), ("127.0.0.1", "NATT")),
        (b"from .2", ("127.0.0.2", "NATT"), ("127.0.0.1", "IKE")),
    ]))

    assert results == [True, True]
    assert sorted(received) == [
        (b"from .1", ("127.0.0.1", "NATT"), ("127.0.0.1", "IKE")),
        (b"from .2", ("127.0.0.1", "IKE"), ("127.0.0.2", "NATT")),
    ]


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback address")
def test_loopback_ipv6():
    received, results = asyncio.run(exchange([(b"\0\0\0\0ike", ("::1", "NATT"), ("::1", "IKE"))]))

    assert results == [True]
    assert received == [(b"\0\0\0\0ike", ("::1", "IKE"), ("::1", "NATT"))]


def test_send_from_foreign_address_fails_quietly(caplog):
    # 192.0.2.99 is not local: the kernel rejects it as a source, and send() reports it.
    received, results = asyncio.run(exchange([(b"x", ("192.0.2.99", "IKE"), ("127.0.0.1", "NATT"))] * 3))

    assert results == [False, False, False]
    assert received == []
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
