"""Tests for agent.ike.ts: traffic selector narrowing (RFC 7296 §2.9)."""

import pytest

from agent.ike.payloads import TrafficSelector
from agent.ike.ts import contains, intersect, narrow, within

TS = TrafficSelector.from_network


def test_intersect_nested_networks():
    assert intersect(TS("10.0.0.0/8"), TS("10.1.0.0/16")) == TS("10.1.0.0/16")


def test_intersect_disjoint():
    assert intersect(TS("10.0.0.0/16"), TS("10.1.0.0/16")) is None


def test_intersect_families_differ():
    assert intersect(TS("0.0.0.0/0"), TS("::/0")) is None


def test_intersect_protocol_and_ports():
    web = TS("10.0.0.0/8", ip_protocol=6, ports=(80, 443))
    any_tcp_high = TS("10.1.0.0/16", ip_protocol=6, ports=(100, 65535))
    assert intersect(web, any_tcp_high) == TS("10.1.0.0/16", ip_protocol=6, ports=(100, 443))


def test_intersect_protocol_conflict():
    assert intersect(TS("10.0.0.0/8", ip_protocol=6), TS("10.0.0.0/8", ip_protocol=17)) is None


def test_intersect_any_protocol_takes_specific():
    assert intersect(TS("10.0.0.0/8"), TS("10.0.0.0/8", ip_protocol=17)).ip_protocol == 17


def test_intersect_opaque_ports():
    opaque = TS("10.0.0.0/8", ip_protocol=17, ports=(65535, 0))
    assert intersect(opaque, TS("10.0.0.0/8")) == opaque
    assert intersect(opaque, TS("10.0.0.0/8", ports=(1, 2))) is None


def test_narrow_keeps_order_and_drops_duplicates():
    proposed = [TS("10.1.0.0/16"), TS("192.0.2.0/24"), TS("10.1.2.0/24")]
    policy = [TS("10.0.0.0/8")]
    assert narrow(proposed, policy) == [TS("10.1.0.0/16"), TS("10.1.2.0/24")]


def test_narrow_address_range_ends():
    proposed = [TrafficSelector.from_range("10.0.0.5", "10.0.0.20")]
    assert narrow(proposed, [TS("10.0.0.16/28")]) == [TrafficSelector.from_range("10.0.0.16", "10.0.0.20")]


def test_narrow_ipv6():
    assert narrow([TS("2001:db8::/32")], [TS("2001:db8:1::/48")]) == [TS("2001:db8:1::/48")]


@pytest.mark.parametrize(
    "outer, inner, expected",
    [
        (TS("10.0.0.0/8"), TS("10.1.0.0/16"), True),
        (TS("10.1.0.0/16"), TS("10.0.0.0/8"), False),
        (TS("10.0.0.0/8", ip_protocol=6), TS("10.0.0.0/8"), False),
        (TS("10.0.0.0/8"), TS("10.0.0.0/8", ip_protocol=6, ports=(22, 22)), True),
    ],
)
def test_contains(outer, inner, expected):
    assert contains(outer, inner) is expected


def test_within_every_selector():
    assert within([TS("10.1.0.0/16"), TS("10.2.0.0/16")], [TS("10.0.0.0/8")])
    assert not within([TS("10.1.0.0/16"), TS("192.0.2.0/24")], [TS("10.0.0.0/8")])
