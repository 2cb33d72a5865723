"""Uplinks: udev database, recorded route lookups, and path ranking."""

from __future__ import annotations

import errno
import ipaddress
import logging

import pytest

from agent import uplinks
from agent.netwatch import messages
from agent.netwatch.records import (IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_OPTIMISTIC,
                                    IFA_F_PERMANENT, IFA_F_TEMPORARY, IFA_F_TENTATIVE,
                                    IFF_LOOPBACK, IFF_UP, Address, Link)
from agent.uplinks import (PathCandidate, RouteLookup, UplinkMark, decode_route_reply,
                           encode_route_request, parse_udev_database, rank_paths,
                           read_udev_properties, read_uplink_marks, uplink_mark)
from tests.unit.data.netlink.recorded import load

ip = ipaddress.ip_address

# The udev database entry of a network interface as systemd-udevd 252 writes it.
UDEV_ENTRY = """\
I:4250913
E:ID_NET_NAMING_SCHEME=v252
E:ID_NET_NAME_MAC=enx020000000001
E:ID_NET_DRIVER=virtio_net
E:ID_PATH=pci-0000:00:03.0
E:ID_NET_LINK_FILE=/usr/lib/systemd/network/99-default.link
E:RMOBIKE_UPLINK=1
E:RMOBIKE_PRIORITY=10
E:SYSTEMD_ALIAS=/sys/subsystem/net/devices/wan0
G:systemd
Q:systemd
V:1
"""


# udev database


def test_udev_parse_properties():
    properties = parse_udev_database(UDEV_ENTRY)
    assert properties["RMOBIKE_UPLINK"] == "1"
    assert properties["RMOBIKE_PRIORITY"] == "10"
    assert properties["ID_NET_LINK_FILE"] == "/usr/lib/systemd/network/99-default.link"
    assert "systemd" not in properties  # G: and Q: lines are tags, not properties


def test_udev_value_with_equals_sign():
    assert parse_udev_database("E:KEY=a=b\nE:=x\nE:NOEQUALS\n") == {"KEY": "a=b"}


def test_udev_read_by_ifindex(tmp_path):
    (tmp_path / "n7").write_text(UDEV_ENTRY)
    assert read_udev_properties(7, tmp_path)["RMOBIKE_PRIORITY"] == "10"
    assert read_udev_properties(8, tmp_path) == {}


def test_udev_marks_read_each_call(tmp_path):
    assert read_uplink_marks([7], tmp_path) == {7: UplinkMark()}
    (tmp_path / "n7").write_text(UDEV_ENTRY)  # udev finished processing the link
    assert read_uplink_marks([7], tmp_path) == {7: UplinkMark(uplink=True, priority=10)}


@pytest.mark.parametrize("properties, mark", [
    ({}, UplinkMark(None, None)),
    ({"RMOBIKE_UPLINK": "1"}, UplinkMark(True, None)),
    ({"RMOBIKE_UPLINK": "0", "RMOBIKE_PRIORITY": "-5"}, UplinkMark(False, -5)),
    ({"RMOBIKE_UPLINK": "yes", "RMOBIKE_PRIORITY": "high"}, UplinkMark(None, None)),
])
def test_uplink_mark_values(properties, mark):
    assert uplink_mark(properties) == mark


def test_uplink_mark_invalid_logged(caplog):
    with caplog.at_level(logging.WARNING):
        uplink_mark({"RMOBIKE_PRIORITY": "high"})
    assert "RMOBIKE_PRIORITY='high'" in caplog.text


# Route lookups recorded from the kernel


def recorded_lookups() -> list[dict]:
    return load("route-get.json")["lookups"]


def recorded_ifindex(name: str) -> int:
    for text in load("dump.json")["replies"]:
        for message in messages.parse_messages(bytes.fromhex(text)):
            if message.type == messages.RTM_NEWLINK and message.record.name == name:
                return message.record.ifindex
    raise KeyError(name)


def decoded_lookup(index: int) -> RouteLookup | None:
    lookup = recorded_lookups()[index]
    (reply,) = messages.parse_messages(bytes.fromhex(lookup["reply"]))
    src = ip(lookup["src"]) if lookup["src"] else None
    return decode_route_reply(reply, requested_src=src)


def test_route_request_matches_recording():
    for seq, lookup in enumerate(recorded_lookups(), start=1):
        request = encode_route_request(ip(lookup["dst"]), seq,
                                       src=ip(lookup["src"]) if lookup["src"] else None,
                                       mark=lookup["mark"])
        assert request.hex() == lookup["request"], lookup


def test_route_reply_main_table():
    assert decoded_lookup(0) == RouteLookup(ip("192.0.2.1"), recorded_ifindex("u0"),
                                            ip("192.0.2.254"), 254)


def test_route_reply_source_rule():
    assert decoded_lookup(1) == RouteLookup(ip("198.51.100.1"), recorded_ifindex("u1"),
                                            ip("198.51.100.254"), 101)


def test_route_reply_fwmark_rule():
    found = decoded_lookup(2)
    assert found.table == 101
    assert found.oif == recorded_ifindex("u1")


def test_route_reply_non_local_source():
    assert decoded_lookup(3) is None


def test_route_reply_ipv6():
    assert decoded_lookup(4) == RouteLookup(ip("2001:db8:1::1"), recorded_ifindex("u0"),
                                            ip("2001:db8:1::fe"), 254)


def test_route_reply_ipv6_requested_source():
    # The kernel's RTA_PREFSRC names 2001:db8:1::1; the packet leaves from the requested one.
    assert decoded_lookup(5).src == ip("2001:db8:1::d")


def test_route_reply_unreachable():
    assert decoded_lookup(6) is None
    assert decoded_lookup(7) is None


def test_route_reply_other_error_raises():
    error = messages.Message(messages.NLMSG_ERROR, 0, 1, 0, error=errno.EIO)
    with pytest.raises(uplinks.RouteLookupError):
        decode_route_reply(error)


def test_fast_reply_parser_agrees():
    for index, lookup in enumerate(recorded_lookups()):
        data = bytes.fromhex(lookup["reply"])
        (message,) = messages.parse_messages(data)
        src = ip(lookup["src"]) if lookup["src"] else None

        found, fast = uplinks.parse_route_reply(data, message.seq, requested_src=src)

        assert found, index
        assert fast == decode_route_reply(message, requested_src=src), index


def test_fast_parser_skips_other_seq():
    data = bytes.fromhex(recorded_lookups()[0]["reply"])
    (message,) = messages.parse_messages(data)

    assert uplinks.parse_route_reply(data, message.seq + 1) == (False, None)


def test_fast_parser_rejects_truncated():
    data = bytes.fromhex(recorded_lookups()[0]["reply"])
    (message,) = messages.parse_messages(data)
    # The first route attribute (after the 16-octet nlmsghdr and 12-octet rtmsg) claims 65535 octets.
    broken = data[:28] + bytes([0xFF, 0xFF]) + data[30:]

    with pytest.raises(uplinks.RouteLookupError):
        uplinks.parse_route_reply(broken, message.seq)


def test_route_request_family_mismatch():
    with pytest.raises(ValueError, match="different families"):
        encode_route_request(ip("192.0.2.1"), 1, src=ip("2001:db8::1"))


# Ranking

LO, WAN0, WAN1, LAN0, WWAN0 = 1, 2, 3, 4, 5
LINKS = {
    LO: Link(LO, "lo", IFF_UP | IFF_LOOPBACK, "UNKNOWN", True),
    WAN0: Link(WAN0, "wan0", IFF_UP, "UP", True),
    WAN1: Link(WAN1, "wan1", IFF_UP, "UP", True),
    LAN0: Link(LAN0, "lan0", IFF_UP, "UP", True),
    WWAN0: Link(WWAN0, "wwan0", IFF_UP, "LOWERLAYERDOWN", False),
}
REMOTE4 = ip("203.0.113.20")
REMOTE6 = ip("2001:db8:20::20")


def addr(ifindex: int, text: str, flags: int = IFA_F_PERMANENT) -> Address:
    return Address(ifindex, ip(text), 64 if ":" in text else 24, flags, 0)


A_WAN0 = addr(WAN0, "198.51.100.10")
A_WAN1 = addr(WAN1, "192.0.2.10")
A_LAN0 = addr(LAN0, "10.1.0.1")
A_WWAN0 = addr(WWAN0, "100.64.0.10")
A6_WAN0 = addr(WAN0, "2001:db8:a::10")


def routes_all(remote, local):
    """Every local address reaches every remote through its own link; the kernel picks wan0."""
    if local is None:
        return RouteLookup(A_WAN0.address if remote.version == 4 else A6_WAN0.address, WAN0, None)
    owner = next(a.ifindex for a in ALL_ADDRESSES if a.address == local)
    return RouteLookup(local, owner, None)


ALL_ADDRESSES = [A_WAN0, A_WAN1, A_LAN0, A_WWAN0, A6_WAN0]


def pairs(candidates: list[PathCandidate]) -> list[tuple[str, str]]:
    return [(str(c.local), str(c.remote)) for c in candidates]


def test_rank_any_local_kernel_choice_first():
    ranked = rank_paths([], [REMOTE4], ALL_ADDRESSES, LINKS, {}, routes_all)
    # After the kernel's choice, ties fall back to the interface index.
    assert pairs(ranked) == [("198.51.100.10", str(REMOTE4)), ("192.0.2.10", str(REMOTE4)),
                             ("10.1.0.1", str(REMOTE4))]


def test_rank_link_down_excluded():
    ranked = rank_paths([], [REMOTE4], ALL_ADDRESSES, LINKS, {}, routes_all)
    assert "100.64.0.10" not in {str(c.local) for c in ranked}


def test_rank_config_order_wins():
    marks = {WAN0: UplinkMark(True, 1), WAN1: UplinkMark(True, 50)}
    ranked = rank_paths(["192.0.2.10", "198.51.100.0/24"], [REMOTE4], ALL_ADDRESSES, LINKS,
                        marks, routes_all)
    assert pairs(ranked) == [("192.0.2.10", str(REMOTE4)), ("198.51.100.10", str(REMOTE4))]


def test_rank_udev_priority_orders():
    marks = {WAN0: UplinkMark(None, 200), WAN1: UplinkMark(None, 10)}
    ranked = rank_paths([], [REMOTE4], ALL_ADDRESSES, LINKS, marks, routes_all)
    assert pairs(ranked)[0] == ("192.0.2.10", str(REMOTE4))
    assert pairs(ranked)[-1] == ("198.51.100.10", str(REMOTE4))  # 200 is after the default 100


def test_rank_udev_uplink_marks_restrict():
    marks = {WAN0: UplinkMark(True, None), WAN1: UplinkMark(True, None)}
    ranked = rank_paths([], [REMOTE4], ALL_ADDRESSES, LINKS, marks, routes_all)
    assert {str(c.local) for c in ranked} == {"198.51.100.10", "192.0.2.10"}


def test_rank_udev_uplink_zero_excludes():
    marks = {LAN0: UplinkMark(False, None)}
    ranked = rank_paths([], [REMOTE4], ALL_ADDRESSES, LINKS, marks, routes_all)
    assert {str(c.local) for c in ranked} == {"198.51.100.10", "192.0.2.10"}


def test_rank_config_overrides_uplink_zero():
    marks = {LAN0: UplinkMark(False, None)}
    ranked = rank_paths(["10.1.0.1"], [REMOTE4], ALL_ADDRESSES, LINKS, marks, routes_all)
    assert pairs(ranked) == [("10.1.0.1", str(REMOTE4))]


@pytest.mark.parametrize("text, flags", [
    ("fe80::10", IFA_F_PERMANENT),
    ("169.254.7.7", IFA_F_PERMANENT),
    ("2001:db8:a::11", IFA_F_TENTATIVE),
    ("2001:db8:a::12", IFA_F_TENTATIVE | IFA_F_DADFAILED),
    ("2001:db8:a::13", IFA_F_DADFAILED),
])
def test_rank_unusable_local_excluded(text, flags):
    address = addr(WAN0, text, flags)
    ranked = rank_paths([], [REMOTE6 if ":" in text else REMOTE4], [address], LINKS, {},
                        lambda remote, local: RouteLookup(local, WAN0, None))
    assert ranked == []


def test_rank_loopback_link_excluded():
    loop = addr(LO, "192.0.2.99")
    ranked = rank_paths([], [REMOTE4], [loop], LINKS, {},
                        lambda remote, local: RouteLookup(local, LO, None))
    assert ranked == []


def wan0_routes(remote, local):
    return RouteLookup(local, WAN0, None)


def test_rank_deprecated_dropped_when_better_exists():
    deprecated = addr(WAN0, "2001:db8:a::d", IFA_F_DEPRECATED)
    ranked = rank_paths([], [REMOTE6], [deprecated, A6_WAN0], LINKS, {}, wan0_routes)
    assert pairs(ranked) == [("2001:db8:a::10", str(REMOTE6))]


def test_rank_deprecated_kept_when_alone():
    deprecated = addr(WAN0, "2001:db8:a::d", IFA_F_DEPRECATED)
    ranked = rank_paths([], [REMOTE6], [deprecated], LINKS, {}, wan0_routes)
    assert pairs(ranked) == [("2001:db8:a::d", str(REMOTE6))]


def test_rank_optimistic_after_settled():
    optimistic = addr(WAN0, "2001:db8:a::0", IFA_F_TENTATIVE | IFA_F_OPTIMISTIC)
    ranked = rank_paths([], [REMOTE6], [optimistic, A6_WAN0], LINKS, {}, wan0_routes)
    assert pairs(ranked) == [("2001:db8:a::10", str(REMOTE6)), ("2001:db8:a::", str(REMOTE6))]


def test_rank_temporary_after_stable():
    temporary = addr(WAN0, "2001:db8:a::1", IFA_F_TEMPORARY)
    ranked = rank_paths([], [REMOTE6], [temporary, A6_WAN0], LINKS, {}, wan0_routes)
    assert pairs(ranked) == [("2001:db8:a::10", str(REMOTE6)), ("2001:db8:a::1", str(REMOTE6))]


def test_rank_no_route_excluded():
    def lookup(remote, local):
        return None if local == A_WAN1.address else routes_all(remote, local)
    ranked = rank_paths([], [REMOTE4], [A_WAN0, A_WAN1], LINKS, {}, lookup)
    assert pairs(ranked) == [("198.51.100.10", str(REMOTE4))]


def test_rank_route_through_other_link_last():
    # wan1's address would leave through wan0: likely dropped upstream, so
    # it ranks last despite its better udev priority.
    def lookup(remote, local):
        return RouteLookup(local, WAN0, None)
    marks = {WAN1: UplinkMark(None, 1)}
    ranked = rank_paths([], [REMOTE4], [A_WAN0, A_WAN1], LINKS, marks, lookup)
    assert [c.leaves_own_link for c in ranked] == [True, False]
    assert pairs(ranked)[0] == ("198.51.100.10", str(REMOTE4))


def test_rank_families_paired():
    ranked = rank_paths([], [REMOTE6, REMOTE4], [A_WAN0, A6_WAN0], LINKS, {}, routes_all)
    assert sorted(pairs(ranked)) == sorted([("2001:db8:a::10", str(REMOTE6)),
                                            ("198.51.100.10", str(REMOTE4))])


def test_rank_remote_order_breaks_ties():
    second = ip("203.0.113.21")
    ranked = rank_paths([], [second, REMOTE4], [A_WAN0], LINKS, {}, routes_all)
    assert pairs(ranked) == [("198.51.100.10", str(second)), ("198.51.100.10", str(REMOTE4))]


def test_rank_local_before_remote_order():
    second = ip("203.0.113.21")
    marks = {WAN1: UplinkMark(None, 1)}
    ranked = rank_paths([], [REMOTE4, second], [A_WAN0, A_WAN1], LINKS, marks, routes_all)
    assert pairs(ranked) == [("192.0.2.10", str(REMOTE4)), ("192.0.2.10", str(second)),
                             ("198.51.100.10", str(REMOTE4)), ("198.51.100.10", str(second))]
