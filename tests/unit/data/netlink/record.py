"""Record rtnetlink messages from the running kernel for the unit tests.

Run as root from the checkout: ``.venv/bin/python -m tests.unit.data.netlink.record``.
It creates a network namespace, builds the links, addresses, routes and
rules listed in SETUP, records the replies to the watcher's full dump, then
runs each step of STEPS and records the notifications it causes. The
namespace is deleted at the end. Output, next to this file:

- ``dump.json``: the dump requests and the kernel's reply datagrams.
- ``steps.json``: per step, its commands and the notification datagrams.
- ``dump-after.json``: a second dump after the last step, with sequence
  numbers that follow the first dump's (as a resync sends them).
- ``route-get.json``: RTM_GETROUTE requests from ``agent.uplinks`` and the
  kernel's replies, taken after SETUP and before the steps.

Datagrams are stored as hex, exactly as received.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from pathlib import Path

from agent.netwatch.session import DUMPS, NetlinkSession
from agent.netwatch.watcher import open_rtnetlink_socket
from agent.uplinks import encode_route_request
from tests.lab.netns import Namespace

HERE = Path(__file__).parent
QUIET = 0.3  # seconds without a datagram that end a step
STEP_LIMIT = 4.0  # seconds; the longest any step is recorded
# DAD starts after a random delay of up to 1 s (RFC 4862 §5.4.2), so the
# steps that wait for it record for the whole STEP_LIMIT.
WAIT_FOR_DAD = {"address-dad", "address-dadfailed"}

# No DAD unless a step turns it on, so that the dump does not depend on timing.
SETUP = [
    "sysctl -qw net.ipv6.conf.all.accept_dad=0",
    "sysctl -qw net.ipv6.conf.default.accept_dad=0",
    "ip link add u0 type veth peer name r0",
    "ip link add u1 type veth peer name r1",
    "ip link add u2 type veth peer name r2",
    "ip link set u0 up", "ip link set r0 up", "ip link set u1 up", "ip link set r1 up",
    "ip addr add 192.0.2.1/24 dev u0",
    "ip addr add 198.51.100.1/24 dev u1",
    "ip -6 addr add 2001:db8:1::1/64 dev u0",
    "ip -6 addr add 2001:db8:1::d/64 dev u0 preferred_lft 0",
    "ip route add default via 192.0.2.254",
    "ip route add default via 198.51.100.254 table 101",
    "ip route add 203.0.113.0/24 via 198.51.100.254 proto 147",
    "ip -6 route add default via 2001:db8:1::fe",
    "ip rule add from 198.51.100.1 table 101 priority 1000",
    "ip rule add fwmark 0x9 table 101 priority 1001",
    "ip rule add to 203.0.113.0/24 table 101 priority 1002 protocol 147",
]

STEPS = [
    ("link-admin-down", ["ip link set u0 down"]),
    ("link-admin-up", ["ip link set u0 up"]),
    ("carrier-loss", ["ip link set r1 down"]),
    ("carrier-back", ["ip link set r1 up"]),
    ("address-dad", ["sysctl -qw net.ipv6.conf.u1.accept_dad=1",
                     "sysctl -qw net.ipv6.conf.u1.dad_transmits=1",
                     "sysctl -qw net.ipv6.neigh.u1.retrans_time_ms=100",
                     "ip -6 addr add 2001:db8:2::1/64 dev u1"]),
    ("address-dadfailed", ["sysctl -qw net.ipv6.conf.u0.accept_dad=1",
                           "sysctl -qw net.ipv6.conf.u0.dad_transmits=1",
                           "sysctl -qw net.ipv6.neigh.u0.retrans_time_ms=100",
                           "ip -6 addr add 2001:db8:3::1/64 dev r0 nodad",
                           "ip -6 addr add 2001:db8:3::1/64 dev u0"]),
    ("address-del", ["ip addr del 198.51.100.1/24 dev u1"]),
    ("route-add", ["ip route add 192.0.2.128/25 via 192.0.2.254 table 102 metric 5"]),
    ("route-replace", ["ip route replace 192.0.2.128/25 via 192.0.2.253 table 102 metric 5"]),
    ("route-del", ["ip route del 192.0.2.128/25 table 102 metric 5"]),
    ("rule-add", ["ip rule add fwmark 0x20 table 102 priority 1100"]),
    ("rule-del", ["ip rule del fwmark 0x20 table 102 priority 1100"]),
    ("own-route", ["ip route add 198.18.0.0/15 dev u0 proto 147"]),
    ("link-delete", ["ip link del u1"]),
]


# (dst, src, mark): lookups through the main table, the source rule, the
# fwmark rule, a non-local source, and unreachable routes of both families.
LOOKUPS = [
    ("198.18.5.5", None, None),
    ("203.0.113.5", "198.51.100.1", None),
    ("192.0.2.77", None, 0x9),
    ("203.0.113.5", "203.0.113.77", None),
    ("2001:db8:ff::5", None, None),
    ("2001:db8:ff::5", "2001:db8:1::d", None),
    ("192.0.2.200", None, None),
    ("2001:db8:e::1", None, None),
]
LOOKUP_SETUP = ["ip route add unreachable 192.0.2.200/32",
                "ip -6 route add unreachable 2001:db8:e::/48"]


def record_dump(sock: socket.socket, first_seq: int = 1) -> dict:
    session = NetlinkSession(first_seq=first_seq)
    port_id = sock.getsockname()[0]
    session.start(port_id, time.monotonic())
    requests, replies = [], []
    deadline = time.monotonic() + STEP_LIMIT
    while not session.state.synced:
        for data in session.data_to_send():
            requests.append(data.hex())
            sock.send(data)
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data = sock.recv(1 << 16)
        replies.append(data.hex())
        session.receive(data, time.monotonic())
    return {"port_id": port_id, "requests": requests, "replies": replies}


def record_step(sock: socket.socket, namespace: Namespace, commands: list[str],
                wait_whole_limit: bool) -> list[str]:
    for command in commands:
        namespace.run(command)
    datagrams = []
    deadline = time.monotonic() + STEP_LIMIT
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining if wait_whole_limit else min(QUIET, remaining))
        try:
            datagrams.append(sock.recv(1 << 16).hex())
        except TimeoutError:
            if not wait_whole_limit:
                break
    return datagrams


def record_lookups(namespace: Namespace) -> list[dict]:
    for command in LOOKUP_SETUP:
        namespace.run(command)
    with namespace.entered():
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    lookups = []
    with sock:
        sock.settimeout(STEP_LIMIT)
        sock.bind((0, 0))
        for seq, (dst, src, mark) in enumerate(LOOKUPS, start=1):
            request = encode_route_request(ipaddress.ip_address(dst), seq,
                                           src=ipaddress.ip_address(src) if src else None,
                                           mark=mark)
            sock.send(request)
            lookups.append({"dst": dst, "src": src, "mark": mark,
                            "request": request.hex(), "reply": sock.recv(1 << 16).hex()})
    for command in LOOKUP_SETUP:
        namespace.run(command.replace(" add ", " del ", 1))
    return lookups


def main() -> None:
    with Namespace("record") as namespace:
        for command in SETUP:
            namespace.run(command)
        with namespace.entered():
            sock = open_rtnetlink_socket()
        sock.setblocking(True)
        with sock:
            dump = record_dump(sock)
            lookups = record_lookups(namespace)
            # The lookup routes came and went; those notifications belong to no step.
            record_step(sock, namespace, [], wait_whole_limit=False)
            steps = [{"name": name, "commands": commands,
                      "datagrams": record_step(sock, namespace, commands, name in WAIT_FOR_DAD)}
                     for name, commands in STEPS]
            dump_after = record_dump(sock, first_seq=len(DUMPS) + 1)

    dump["setup"] = SETUP
    (HERE / "dump.json").write_text(json.dumps(dump, indent=1) + "\n")
    (HERE / "dump-after.json").write_text(json.dumps(dump_after, indent=1) + "\n")
    (HERE / "route-get.json").write_text(json.dumps({"setup": SETUP + LOOKUP_SETUP,
                                                     "lookups": lookups}, indent=1) + "\n")
    (HERE / "steps.json").write_text(json.dumps({"setup": SETUP, "steps": steps}, indent=1) + "\n")
    for step in steps:
        print(f"{step['name']}: {len(step['datagrams'])} datagrams")


if __name__ == "__main__":
    main()
