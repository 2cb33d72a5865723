"""Netlink watcher: recorded kernel messages through NetState and NetlinkSession."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from agent.netwatch import (AddressAdded, AddressRemoved, AddressUnusable, AddressUsable,
                            DownReason, LinkDown, LinkUp, NetlinkSession, NetState, Resynced,
                            RouteChanged, RuleChanged, messages)
from agent.netwatch.records import Address, Route
from agent.netwatch.session import DUMPS, MAX_DUMP_ATTEMPTS, RETRY_DELAY
from agent.netwatch.state import RTPROT_RMOBIKE
from tests.unit.data.netlink.recorded import (datagrams, load, records, rewrite_headers,
                                              step_datagrams, step_names)

ip = ipaddress.ip_address


def start_session(now: float = 0.0) -> tuple[NetlinkSession, list[bytes]]:
    """Return a session that consumed the recorded dump, and the requests it sent."""
    dump = load("dump.json")
    session = NetlinkSession()
    session.start(dump["port_id"], now)
    sent = session.data_to_send()
    for data in datagrams(dump["replies"]):
        session.receive(data, now)
        sent += session.data_to_send()
    return session, sent


def feed_dump(session: NetlinkSession, name: str, now: float, first_seq: int) -> list[bytes]:
    """Feed a recorded dump with its sequence numbers moved to start at ``first_seq``."""
    recorded = load(name)
    offset = first_seq - messages.NLMSGHDR.unpack_from(bytes.fromhex(recorded["requests"][0]))[3]
    sent = []
    for data in datagrams(recorded["replies"]):
        seq = messages.NLMSGHDR.unpack_from(data)[3] + offset
        session.receive(rewrite_headers(data, seq=seq), now)
        sent += session.data_to_send()
    return sent


def ifindex(state: NetState, name: str) -> int:
    return next(link.ifindex for link in state.links() if link.name == name)


def apply_datagrams(state: NetState, data_list: list[bytes]) -> list:
    events = []
    for data in data_list:
        for message in records(data):
            events += state.apply(message.record, message.deleted)
    return events


def run_steps_until(name: str) -> tuple[NetState, list]:
    """Apply the recorded steps in order up to ``name``; return the state and that step's events."""
    state = start_session()[0].state
    for step in step_names():
        events = apply_datagrams(state, step_datagrams(step))
        if step == name:
            return state, events
    raise KeyError(name)


def of_type(events: list, event_type: type) -> list:
    return [event for event in events if isinstance(event, event_type)]


# Dump and model


def test_dump_requests_match_recording():
    _, sent = start_session()
    assert [data.hex() for data in sent] == load("dump.json")["requests"]


def test_dump_requests_cover_every_table():
    _, sent = start_session()
    kinds = [(messages.NLMSGHDR.unpack_from(data)[1], data[16]) for data in sent]
    assert kinds == list(DUMPS)


def test_initial_dump_reports_only_resynced():
    session, _ = start_session()
    assert session.batches_to_deliver() == [[Resynced(initial=True)]]
    assert session.state.synced


def test_initial_dump_links():
    state = start_session()[0].state
    up = {link.name for link in state.links() if link.is_up}
    down = {link.name for link in state.links() if not link.is_up}
    assert up == {"lo", "u0", "r0", "u1", "r1"}
    assert down == {"u2", "r2"}


def test_usable_addresses_skip_link_local_and_loopback():
    state = start_session()[0].state
    usable = {address.address for address in state.usable_addresses()}
    assert usable == {ip("192.0.2.1"), ip("198.51.100.1"), ip("2001:db8:1::1"), ip("2001:db8:1::d")}


def test_deprecated_address_flag():
    state = start_session()[0].state
    flags = {a.address: a.deprecated for a in state.usable_addresses()}
    assert flags[ip("2001:db8:1::d")] is True
    assert flags[ip("2001:db8:1::1")] is False


def test_routes_skip_local_table_and_own_protocol():
    state = start_session()[0].state
    routes = state.routes()
    assert all(route.table != 255 for route in routes)
    assert all(route.protocol != RTPROT_RMOBIKE for route in routes)
    tables = {(route.table, str(route.dst)) for route in routes}
    assert (101, "0.0.0.0/0") in tables
    assert (254, "::/0") in tables
    assert (254, "203.0.113.0/24") not in tables


def test_rules_skip_own_protocol():
    rules = start_session()[0].state.rules()
    priorities = {(rule.family, rule.priority) for rule in rules}
    assert (socket.AF_INET, 1000) in priorities
    assert (socket.AF_INET, 1001) in priorities
    assert (socket.AF_INET, 1002) not in priorities
    fwmark_rule = next(rule for rule in rules if rule.priority == 1001)
    assert fwmark_rule.fwmark == 0x9
    assert fwmark_rule.table == 101


# Notifications, step by step


def test_link_admin_down():
    state, events = run_steps_until("link-admin-down")
    u0, r0 = ifindex(state, "u0"), ifindex(state, "r0")
    assert LinkDown(state.link(u0), DownReason.ADMIN) in events
    assert LinkDown(state.link(r0), DownReason.CARRIER) in events
    removed = of_type(events, AddressRemoved)
    assert {event.address.address for event in removed} >= {ip("2001:db8:1::1"), ip("2001:db8:1::d")}
    assert all(event.address.ifindex == u0 for event in removed)


def test_link_admin_down_forgets_ipv4_routes():
    # IPv4 drops routes through a link that goes down without RTM_DELROUTE.
    state, _ = run_steps_until("link-admin-down")
    u0 = ifindex(state, "u0")
    assert not [route for route in state.routes() if route.family == socket.AF_INET and u0 in route.oifs]


def test_link_admin_down_removes_usable_addresses():
    state, _ = run_steps_until("link-admin-down")
    usable = {address.address for address in state.usable_addresses()}
    assert usable == {ip("198.51.100.1")}


def test_link_admin_up_reports_one_link_up():
    state, events = run_steps_until("link-admin-up")
    u0 = ifindex(state, "u0")
    ups = [event for event in of_type(events, LinkUp) if event.link.ifindex == u0]
    assert len(ups) == 1
    assert ups[0].link.operstate == "UP"


def test_carrier_loss():
    state, events = run_steps_until("carrier-loss")
    u1, r1 = ifindex(state, "u1"), ifindex(state, "r1")
    assert LinkDown(state.link(r1), DownReason.ADMIN) in events
    assert LinkDown(state.link(u1), DownReason.CARRIER) in events
    assert state.link(u1).admin_up
    assert not state.link(u1).carrier


def test_carrier_back():
    state, events = run_steps_until("carrier-back")
    u1 = ifindex(state, "u1")
    assert LinkUp(state.link(u1)) in events


def test_address_dad_tentative_then_usable():
    _, events = run_steps_until("address-dad")
    mine = [event for event in events if getattr(event, "address", None)
            and event.address.address == ip("2001:db8:2::1")]
    assert [type(event) for event in mine] == [AddressAdded, AddressUsable]
    assert mine[0].address.tentative
    assert not mine[0].address.usable
    assert mine[1].address.usable


def test_address_dadfailed():
    state, events = run_steps_until("address-dadfailed")
    u0 = ifindex(state, "u0")
    mine = [event for event in events if getattr(event, "address", None)
            and event.address.ifindex == u0]
    assert [type(event) for event in mine] == [AddressAdded, AddressUnusable]
    assert mine[1].address.dadfailed
    assert ip("2001:db8:3::1") not in {a.address for a in state.usable_addresses()
                                       if a.ifindex == u0}


def test_address_removed():
    state, events = run_steps_until("address-del")
    removed = [event.address.address for event in of_type(events, AddressRemoved)]
    assert removed == [ip("198.51.100.1")]
    routes = [event.route for event in of_type(events, RouteChanged)]
    assert [(str(route.dst), route.table) for route in routes] == [("198.51.100.0/24", 254)]
    assert of_type(events, RouteChanged)[0].removed


def test_route_add_replace_delete():
    state, added = run_steps_until("route-add")
    assert [(event.route.gateway, event.removed) for event in added] == [(ip("192.0.2.254"), False)]

    replaced = apply_datagrams(state, step_datagrams("route-replace"))
    assert [(event.route.gateway, event.removed) for event in replaced] == [(ip("192.0.2.253"), False)]
    assert [route.gateway for route in state.routes() if route.table == 102] == [ip("192.0.2.253")]

    deleted = apply_datagrams(state, step_datagrams("route-del"))
    assert [event.removed for event in deleted] == [True]
    assert [route for route in state.routes() if route.table == 102] == []


def test_rule_add_and_delete():
    state, added = run_steps_until("rule-add")
    assert [(type(event), event.rule.fwmark, event.removed) for event in added] == [
        (RuleChanged, 0x20, False)]
    deleted = apply_datagrams(state, step_datagrams("rule-del"))
    assert [(event.rule.fwmark, event.removed) for event in deleted] == [(0x20, True)]


def test_own_route_ignored():
    state, events = run_steps_until("own-route")
    assert events == []
    assert all(route.protocol != RTPROT_RMOBIKE for route in state.routes())


def test_link_delete():
    before, _ = run_steps_until("address-del")
    u1 = ifindex(before, "u1")
    state, events = run_steps_until("link-delete")
    removed = [event for event in of_type(events, LinkDown) if event.reason is DownReason.REMOVED]
    assert {event.link.name for event in removed} == {"u1", "r1"}
    assert state.link(u1) is None
    assert state.addresses(u1) == []
    assert all(u1 not in route.oifs for route in state.routes())


# Filtering


def raw_messages(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        length = messages.NLMSGHDR.unpack_from(data, offset)[0]
        out.append(data[offset:offset + length])
        offset += (length + 3) & ~3
    return out


def recorded_link_message(name: str) -> bytes:
    for data in datagrams(load("dump.json")["replies"]):
        for raw in raw_messages(data):
            message = messages.parse_messages(raw)[0]
            if message.type == messages.RTM_NEWLINK and message.record.name == name:
                return rewrite_headers(raw, seq=0, pid=0)  # as a kernel notification
    raise KeyError(name)


def test_xfrm_interface_ignored():
    session, _ = start_session()
    state = session.state
    # A recorded veth announcement turned into one of a new XFRM interface:
    # same-length kind string, and an interface index not in use.
    raw = bytearray(recorded_link_message("u2"))
    assert raw.count(b"veth\0") == 1
    index = 99
    struct.pack_into("=i", raw, messages.NLMSGHDR.size + 4, index)  # ifi_index
    xfrm = bytes(raw).replace(b"veth\0", b"xfrm\0")
    assert messages.parse_messages(xfrm)[0].record.kind == "xfrm"

    # The kernel announces the interface, an address and a route on it.
    session.receive(xfrm, 1.0)
    assert session.batches_to_deliver() == [[Resynced(initial=True)]]  # from the dump only
    address = Address(index, ip("203.0.113.9"), 32, 0x80, 0)
    route = Route(socket.AF_INET, 254, ipaddress.ip_network("10.9.0.0/16"), 0, 0, 3, 1, 0,
                  oif=index)
    assert state.apply(address) == []
    assert state.apply(route) == []
    assert state.link(index) is None
    assert state.addresses(index) == []
    assert route not in state.routes()


def test_per_family_link_message_skipped():
    raw = bytearray(recorded_link_message("u0"))
    raw[messages.NLMSGHDR.size] = socket.AF_INET6  # ifi_family
    assert messages.parse_messages(bytes(raw))[0].record is None


def test_truncated_datagram_rejected():
    data = datagrams(load("dump.json")["replies"])[0]
    with pytest.raises(messages.NetlinkDecodeError):
        messages.parse_messages(data[:-5])


def test_group_bitmask():
    assert messages.bitmask_of_groups((messages.RTNLGRP_LINK, messages.RTNLGRP_IPV6_RULE)) == 0x40001
    with pytest.raises(ValueError):
        messages.bitmask_of_groups((33,))


# Coalescing the recorded burst


def test_burst_first_event_at_once():
    session, _ = start_session(now=0.0)
    session.batches_to_deliver()
    session.handle_timer(1.0)  # the window after the dump ends quietly
    for data in step_datagrams("link-admin-down"):
        session.receive(data, 2.0)
    batches = session.batches_to_deliver()
    assert len(batches) == 1
    assert [type(event) for event in batches[0]] == [LinkDown]
    assert batches[0][0].link.name == "u0"


def test_burst_rest_merged_after_window():
    session, _ = start_session(now=0.0)
    session.handle_timer(1.0)
    for data in step_datagrams("link-admin-down"):
        session.receive(data, 2.0)
    session.batches_to_deliver()

    deadline = session.next_deadline()
    assert deadline == pytest.approx(2.0 + session.coalescer.min_window)
    session.handle_timer(deadline)
    batches = session.batches_to_deliver()
    assert len(batches) == 1
    assert {type(event) for event in batches[0]} == {RouteChanged, AddressRemoved, LinkDown}
    assert [event.link.name for event in of_type(batches[0], LinkDown)] == ["r0"]


# Resync


def test_overrun_resync_sends_new_dump():
    session, _ = start_session()
    session.handle_overrun(1.0)
    sent = session.data_to_send()
    assert [messages.NLMSGHDR.unpack_from(data)[1:4:2] for data in sent] == [
        (messages.RTM_GETLINK, len(DUMPS) + 1)]


def test_overrun_resync_reports_differences():
    session, _ = start_session()
    session.batches_to_deliver()
    # Every step's notifications are lost; the next dump shows the result.
    session.handle_overrun(1.0)
    session.data_to_send()
    feed_dump(session, "dump-after.json", 1.0, first_seq=len(DUMPS) + 1)
    events = [event for batch in session.batches_to_deliver() for event in batch]

    assert events[-1] == Resynced(initial=False)
    removed_links = {e.link.name for e in of_type(events, LinkDown) if e.reason is DownReason.REMOVED}
    assert removed_links == {"u1", "r1"}
    assert ip("198.51.100.1") in {e.address.address for e in of_type(events, AddressRemoved)}
    # DAD failed on u0; on r0 the same address was added without DAD. Merging
    # keeps only the newest event per address: AddressUsable for r0's.
    r0 = ifindex(session.state, "r0")
    failed = [e.address for e in of_type(events, AddressAdded) if e.address.address == ip("2001:db8:3::1")]
    assert [address.dadfailed for address in failed] == [True]
    usable = [e.address for e in of_type(events, AddressUsable) if e.address.address == ip("2001:db8:3::1")]
    assert [address.ifindex for address in usable] == [r0]


def test_overrun_resync_matches_fresh_dump():
    session, _ = start_session()
    session.handle_overrun(1.0)
    session.data_to_send()
    feed_dump(session, "dump-after.json", 1.0, first_seq=len(DUMPS) + 1)

    fresh = NetlinkSession()
    fresh.start(load("dump-after.json")["port_id"], 0.0)
    feed_dump(fresh, "dump-after.json", 0.0, first_seq=1)
    for query in ("links", "addresses", "routes", "rules"):
        assert sorted(map(repr, getattr(session.state, query)())) == \
            sorted(map(repr, getattr(fresh.state, query)())), query


def test_notification_during_resync_replayed():
    session, _ = start_session()
    session.batches_to_deliver()
    session.handle_overrun(1.0)
    session.data_to_send()
    for data in step_datagrams("route-add"):
        session.receive(data, 1.0)
    assert session.batches_to_deliver() == []

    feed_dump(session, "dump.json", 1.0, first_seq=len(DUMPS) + 1)
    events = [event for batch in session.batches_to_deliver() for event in batch]
    assert [route.table for route in session.state.routes() if route.table == 102] == [102]
    assert [(type(e), e.route.table) for e in events if isinstance(e, RouteChanged)] == [
        (RouteChanged, 102)]


def test_overrun_during_dump_restarts_after_it():
    dump = load("dump.json")
    session = NetlinkSession()
    session.start(dump["port_id"], 0.0)
    session.data_to_send()
    session.handle_overrun(0.0)
    assert session.data_to_send() == []  # one dump per socket: wait for this one

    link_replies = [d for d in datagrams(dump["replies"]) if messages.NLMSGHDR.unpack_from(d)[3] == 1]
    for data in link_replies:
        session.receive(data, 0.0)
    restarted = session.data_to_send()
    assert [messages.NLMSGHDR.unpack_from(data)[1:4:2] for data in restarted] == [
        (messages.RTM_GETLINK, 2)]
    assert not session.state.synced

    feed_dump(session, "dump.json", 0.0, first_seq=2)
    assert session.state.synced


def test_interrupted_dump_restarts():
    dump = load("dump.json")
    session = NetlinkSession()
    session.start(dump["port_id"], 0.0)
    session.data_to_send()
    for data in datagrams(dump["replies"]):
        if messages.NLMSGHDR.unpack_from(data)[3] == 2:  # the address dump
            data = rewrite_headers(data, set_flags=messages.NLM_F_DUMP_INTR)
        session.receive(data, 0.0)
        session.data_to_send()
    assert not session.state.synced
    assert session.batches_to_deliver() == []

    feed_dump(session, "dump.json", 0.0, first_seq=len(DUMPS) + 1)
    assert session.state.synced
    assert session.batches_to_deliver() == [[Resynced(initial=True)]]


def test_interrupted_dump_retry_timer():
    dump = load("dump.json")
    session = NetlinkSession()
    session.start(dump["port_id"], 0.0)
    session.data_to_send()
    for attempt in range(MAX_DUMP_ATTEMPTS):
        first = 1 + attempt * len(DUMPS)
        for data in datagrams(dump["replies"]):
            seq = messages.NLMSGHDR.unpack_from(data)[3] - 1 + first
            session.receive(rewrite_headers(data, seq=seq, set_flags=messages.NLM_F_DUMP_INTR), 0.0)
    sent = session.data_to_send()
    assert len(sent) == MAX_DUMP_ATTEMPTS * len(DUMPS) - 1  # no new dump after the last attempt
    assert session.next_deadline() == pytest.approx(RETRY_DELAY)

    session.handle_timer(RETRY_DELAY)
    retried = session.data_to_send()
    assert [messages.NLMSGHDR.unpack_from(data)[1] for data in retried] == [messages.RTM_GETLINK]


def test_late_dump_reply_dropped():
    # A reply to an earlier request of this socket is stale, not a notification.
    session, _ = start_session()
    session.batches_to_deliver()
    stale = recorded_link_message("u0")
    stale_down = bytearray(rewrite_headers(stale, seq=1, pid=load("dump.json")["port_id"]))
    struct.pack_into("=I", stale_down, messages.NLMSGHDR.size + 8, 0)  # ifi_flags: down
    session.receive(bytes(stale_down), 1.0)
    assert session.batches_to_deliver() == []
    assert session.state.link(ifindex(session.state, "u0")).is_up


def test_overrun_replaces_scheduled_retry():
    dump = load("dump.json")
    session = NetlinkSession()
    session.start(dump["port_id"], 0.0)
    for attempt in range(MAX_DUMP_ATTEMPTS):
        first = 1 + attempt * len(DUMPS)
        for data in datagrams(dump["replies"]):
            seq = messages.NLMSGHDR.unpack_from(data)[3] - 1 + first
            session.receive(rewrite_headers(data, seq=seq, set_flags=messages.NLM_F_DUMP_INTR), 0.0)
    session.data_to_send()
    assert session.next_deadline() == pytest.approx(RETRY_DELAY)

    session.handle_overrun(0.5)
    assert len(session.data_to_send()) == 1
    assert session.next_deadline() != pytest.approx(RETRY_DELAY)


def test_dump_error_skips_table():
    dump = load("dump.json")
    session = NetlinkSession()
    session.start(dump["port_id"], 0.0)
    session.data_to_send()
    for data in datagrams(dump["replies"]):
        if messages.NLMSGHDR.unpack_from(data)[3] == 5:  # the IPv6 rule dump fails with EAFNOSUPPORT
            body = struct.pack("=i", -errno.EAFNOSUPPORT) + bytes(16)  # struct nlmsgerr
            data = messages.NLMSGHDR.pack(messages.NLMSGHDR.size + len(body), messages.NLMSG_ERROR,
                                          0, 5, dump["port_id"]) + body
        session.receive(data, 0.0)
    assert session.state.synced
    assert all(rule.family == socket.AF_INET for rule in session.state.rules())
