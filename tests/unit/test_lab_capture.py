"""Tests for the cleartext capture's tcpdump filter and output parsing."""

from ipaddress import IPv4Network, IPv6Network

import pytest

from tests.lab.capture import bpf_filter, parse_line

LAN1 = IPv4Network("10.1.0.0/24")
LAN2 = IPv4Network("10.2.0.0/24")
LAN1_V6 = IPv6Network("2001:db8:1::/64")
LAN2_V6 = IPv6Network("2001:db8:2::/64")


def test_filter_both_directions() -> None:
    text = bpf_filter([LAN1, LAN2])

    assert "(ip and src net 10.1.0.0/24 and dst net 10.2.0.0/24)" in text
    assert "(ip and src net 10.2.0.0/24 and dst net 10.1.0.0/24)" in text
    assert text.count(" or ") == 1


def test_filter_skips_mixed_versions() -> None:
    text = bpf_filter([LAN1, LAN2, LAN1_V6, LAN2_V6])

    assert "(ip6 and src net 2001:db8:1::/64 and dst net 2001:db8:2::/64)" in text
    assert "10.1.0.0/24 and dst net 2001:db8" not in text
    assert text.count(" or ") == 3


@pytest.mark.parametrize("subnets", [[LAN1], [LAN1, LAN2_V6]], ids=["one", "mixed"])
def test_filter_rejects_unpairable_subnets(subnets) -> None:
    with pytest.raises(ValueError):
        bpf_filter(subnets)


def test_parse_udp_ipv4() -> None:
    line = "1796420515.809778 IP 10.1.0.10.35165 > 10.2.0.10.5001: UDP, length 64"

    packet = parse_line(line, "rmb-gw1-1-1", "up0")

    assert packet is not None
    assert packet.source == "10.1.0.10"
    assert packet.destination == "10.2.0.10"
    assert packet.timestamp == pytest.approx(1796420515.809778)
    assert packet.interface == "up0"
    assert packet.line == line


def test_parse_udp_ipv6() -> None:
    line = "1796420517.796926 IP6 2001:db8:2::10.55735 > 2001:db8:1::10.5002: UDP, length 64"

    packet = parse_line(line, "rmb-gw2-1-3", "up0")

    assert packet is not None
    assert packet.source == "2001:db8:2::10"
    assert packet.destination == "2001:db8:1::10"


def test_parse_icmp_without_ports() -> None:
    line = "1796420517.1 IP 10.1.0.10 > 10.2.0.10: ICMP echo request, id 1, seq 1, length 64"

    packet = parse_line(line, "ns", "up1")

    assert packet is not None
    assert packet.source == "10.1.0.10"
    assert packet.destination == "10.2.0.10"


@pytest.mark.parametrize("line", [
    "",
    "tcpdump: verbose output suppressed, use -v[v]... for full protocol decode",
    "1796420517.1 ARP, Request who-has 192.0.2.1 tell 192.0.2.10, length 28",
    "1796420517.1 IP not-an-address > 10.2.0.10: UDP",
], ids=["empty", "banner", "arp", "garbage"])
def test_parse_ignores_other_lines(line: str) -> None:
    assert parse_line(line, "ns", "up0") is None
