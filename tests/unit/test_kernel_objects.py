"""Building SAs and policies from a negotiated CHILD_SA: selectors, priorities, lifetimes."""

from __future__ import annotations

import pytest

from agent.ike.events import Mode
from agent.ike.payloads import TrafficSelector
from agent.kernel_objects import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    Endpoints,
    UnsupportedSelector,
    child_policies,
    lifetime_for,
    owns_policy,
    priority_of,
)
from xfrm.model import Direction, Policy, Selector, Template

ENDPOINTS = Endpoints("192.0.2.10", "198.51.100.20", Mode.TUNNEL, 0x726D0001)


def ts(network: str, protocol: int = 0, ports: tuple[int, int] = (0, 65535)) -> TrafficSelector:
    return TrafficSelector.from_network(network, protocol, ports)


def test_every_prefix_pair_of_same_family():
    policies = child_policies(ENDPOINTS, [ts("10.1.0.0/24"), ts("2001:db8:1::/64")],
                              [ts("10.2.0.0/24"), ts("10.3.0.0/24"), ts("2001:db8:2::/64")])

    out = [str(p.selector) for p in policies if p.dir == Direction.OUT]
    assert out == ["10.1.0.0/24->10.2.0.0/24", "10.1.0.0/24->10.3.0.0/24", "2001:db8:1::/64->2001:db8:2::/64"]
    assert len(policies) == 9


def test_range_split_into_prefixes():
    selector = TrafficSelector.from_range("10.1.0.0", "10.1.0.5")

    policies = child_policies(ENDPOINTS, [selector], [ts("10.2.0.0/24")])

    assert [str(p.selector.src) for p in policies if p.dir == Direction.OUT] == ["10.1.0.0/30", "10.1.0.4/31"]


def test_protocol_and_single_port():
    policies = child_policies(ENDPOINTS, [ts("10.1.0.0/24", 6)], [ts("10.2.0.0/24", 0, (443, 443))])

    out = next(p for p in policies if p.dir == Direction.OUT)
    inbound = next(p for p in policies if p.dir == Direction.IN)
    assert out.selector == Selector("10.1.0.0/24", "10.2.0.0/24", 6, dport=443)
    assert inbound.selector == Selector("10.2.0.0/24", "10.1.0.0/24", 6, sport=443)


def test_port_range_unsupported():
    with pytest.raises(UnsupportedSelector, match="port range 1000-2000"):
        child_policies(ENDPOINTS, [ts("10.1.0.0/24", 6, (1000, 2000))], [ts("10.2.0.0/24")])


def test_families_without_pair_rejected():
    with pytest.raises(UnsupportedSelector):
        child_policies(ENDPOINTS, [ts("10.1.0.0/24")], [ts("2001:db8:2::/64")])


def test_narrower_selector_wins():
    narrow = priority_of(Selector("10.1.0.0/24", "10.2.0.5/32"))
    wide = priority_of(Selector("10.1.0.0/24", "10.2.0.0/16"))
    with_port = priority_of(Selector("10.1.0.0/24", "10.2.0.0/16", 6, dport=80))
    ipv6 = priority_of(Selector("2001:db8:1::/64", "2001:db8:2::/64"))

    assert narrow < wide
    assert with_port < wide
    assert PRIORITY_MIN <= narrow <= PRIORITY_MAX
    assert PRIORITY_MIN <= ipv6 <= PRIORITY_MAX
    assert priority_of(Selector("0.0.0.0/0", "0.0.0.0/0")) == PRIORITY_MAX


def test_owns_policy_needs_range_and_reqid():
    selector = Selector("10.1.0.0/24", "10.2.0.0/24")
    ours = Policy(selector, Direction.OUT, priority=PRIORITY_MIN + 5,
                  templates=(Template("192.0.2.10", "198.51.100.20", reqid=0x726D0001),))

    assert owns_policy(ours)
    assert not owns_policy(ours.replace(priority=100))
    assert not owns_policy(ours.replace(templates=(Template("192.0.2.10", "198.51.100.20", reqid=7),)))


def test_lifetime_soft_before_hard():
    assert lifetime_for(3600, 3960, 100).soft_add_seconds == 3500
    assert lifetime_for(3600, 3960, 100).hard_add_seconds == 3960
    assert lifetime_for(0, 0, 0).soft_add_seconds is None
    assert lifetime_for(100, 100, 0).soft_add_seconds == 99
