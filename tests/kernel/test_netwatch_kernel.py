"""NetWatcher and route lookups on the running kernel, in a namespace each test creates.

Links, addresses, routes and rules need no ESP, so these tests run on any
Linux host as root, as well as in the lab VM. Every wait is bounded by
EVENT_TIMEOUT; nothing here asserts how fast an event arrives.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Callable

import pytest

from agent.netwatch import (AddressRemoved, DownReason, LinkDown, LinkUp, NetEvent, NetWatcher,
                            RouteChanged, RuleChanged)
from agent.netwatch.state import RTPROT_RMOBIKE
from agent.uplinks import RouteResolver
from tests.lab.netns import Namespace, local_mac

# Marked lab so that `make test` runs it in the lab boot with the other kernel tests.
pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root to create a network namespace")]

EVENT_TIMEOUT = 10.0  # seconds; generous for `ip` under QEMU TCG in the lab VM
ip = ipaddress.ip_address

SETUP = [
    "ip addr add 192.0.2.1/24 dev u0",
    "ip -6 addr add 2001:db8:1::1/64 dev u0 nodad",
    "ip route add default via 192.0.2.254",
    "ip addr add 198.51.100.1/24 dev u1",
    "ip route add default via 198.51.100.254 table 101",
    "ip rule add fwmark 0x9 table 101 priority 1001",
    "ip rule add from 198.51.100.1 table 101 priority 1000",
]


def build_uplinks(ns: Namespace) -> None:
    for n, (uplink, peer) in enumerate([("u0", "r0"), ("u1", "r1")]):
        ns.run(["ip", "link", "add", uplink, "address", local_mac(2 * n + 1), "type", "veth",
                "peer", "name", peer, "address", local_mac(2 * n + 2)])
        ns.run(["ip", "link", "set", uplink, "up"])
        ns.run(["ip", "link", "set", peer, "up"])
    for command in SETUP:
        ns.run(command)


class Recorder:
    """Collects the watcher's batches and waits, bounded, for a matching event."""

    def __init__(self) -> None:
        self.events: list[NetEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, batch) -> None:
        self.events += batch
        self._changed.set()

    async def wait_for(self, match: Callable[[NetEvent], bool]) -> NetEvent:
        async def first_match() -> NetEvent:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if match(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(first_match(), EVENT_TIMEOUT)


async def start_watcher(ns: Namespace) -> tuple[NetWatcher, Recorder]:
    recorder = Recorder()
    watcher = NetWatcher(recorder)
    with ns.entered():  # the socket stays in the namespace after the block
        await watcher.start(timeout=EVENT_TIMEOUT)
    return watcher, recorder


def run_async(ns: Namespace, scenario) -> None:
    async def main() -> None:
        watcher, recorder = await start_watcher(ns)
        try:
            await scenario(watcher, recorder)
        finally:
            watcher.stop()
    asyncio.run(main())


def link_index(watcher: NetWatcher, name: str) -> int:
    return next(link.ifindex for link in watcher.state.links() if link.name == name)


def test_watcher_initial_state(netns):
    build_uplinks(netns)

    async def scenario(watcher, recorder):
        usable = {a.address for a in watcher.state.usable_addresses()}
        assert usable == {ip("192.0.2.1"), ip("198.51.100.1"), ip("2001:db8:1::1")}
        assert watcher.state.link(link_index(watcher, "u0")).is_up
        assert {rule.priority for rule in watcher.state.rules()} >= {1000, 1001}

    run_async(netns, scenario)


def test_watcher_link_admin_down(netns):
    build_uplinks(netns)

    async def scenario(watcher, recorder):
        u0 = link_index(watcher, "u0")
        netns.run("ip link set u0 down")
        event = await recorder.wait_for(lambda e: isinstance(e, LinkDown) and e.link.ifindex == u0)
        assert event.reason is DownReason.ADMIN
        assert ip("192.0.2.1") not in {a.address for a in watcher.state.usable_addresses()}

    run_async(netns, scenario)


def test_watcher_carrier_loss_and_back(netns):
    build_uplinks(netns)

    async def scenario(watcher, recorder):
        u1 = link_index(watcher, "u1")
        netns.run("ip link set r1 down")
        event = await recorder.wait_for(lambda e: isinstance(e, LinkDown) and e.link.ifindex == u1)
        assert event.reason is DownReason.CARRIER

        netns.run("ip link set r1 up")
        await recorder.wait_for(lambda e: isinstance(e, LinkUp) and e.link.ifindex == u1)
        assert watcher.state.link(u1).is_up

    run_async(netns, scenario)


def test_watcher_address_removed(netns):
    build_uplinks(netns)

    async def scenario(watcher, recorder):
        netns.run("ip addr del 198.51.100.1/24 dev u1")
        event = await recorder.wait_for(lambda e: isinstance(e, AddressRemoved))
        assert event.address.address == ip("198.51.100.1")
        assert ip("198.51.100.1") not in {a.address for a in watcher.state.usable_addresses()}

    run_async(netns, scenario)


def test_watcher_route_replaced(netns):
    build_uplinks(netns)

    async def scenario(watcher, recorder):
        netns.run("ip route replace default via 192.0.2.253")
        event = await recorder.wait_for(lambda e: isinstance(e, RouteChanged)
                                        and e.route.gateway == ip("192.0.2.253"))
        assert not event.removed
        defaults = [r for r in watcher.state.routes()
                    if r.table == 254 and str(r.dst) == "0.0.0.0/0"]
        assert [route.gateway for route in defaults] == [ip("192.0.2.253")]

    run_async(netns, scenario)


def test_watcher_ignores_own_route(netns):
    build_uplinks(netns)

    async def scenario(watcher, recorder):
        netns.run(f"ip route add 198.18.0.0/15 dev u0 proto {RTPROT_RMOBIKE}")
        netns.run("ip rule add fwmark 0x30 table 102 priority 1200")
        # Notifications arrive in kernel order: once the rule's event is
        # here, an event for the route before it would be here too.
        await recorder.wait_for(lambda e: isinstance(e, RuleChanged) and e.rule.fwmark == 0x30)
        routes = [e.route for e in recorder.events if isinstance(e, RouteChanged)]
        assert [r for r in routes if str(r.dst) == "198.18.0.0/15"] == []

    run_async(netns, scenario)


def test_route_lookup_honours_rules(netns):
    build_uplinks(netns)
    with netns.entered():
        resolver = RouteResolver()
    with resolver:
        main = resolver.lookup("203.0.113.5")
        by_mark = resolver.lookup("203.0.113.5", mark=0x9)
        by_source = resolver.lookup("203.0.113.5", src="198.51.100.1")
        foreign_source = resolver.lookup("203.0.113.5", src="203.0.113.77")

    assert (main.src, main.gateway, main.table) == (ip("192.0.2.1"), ip("192.0.2.254"), 254)
    assert (by_mark.gateway, by_mark.table) == (ip("198.51.100.254"), 101)
    assert (by_source.src, by_source.table) == (ip("198.51.100.1"), 101)
    assert foreign_source is None
