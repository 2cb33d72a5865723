"""The roaming scenario runner's pure parts: outage arithmetic and the timeline from logs."""

from __future__ import annotations

import datetime

from tests.lab.scenarios import (
    build_timeline,
    direction_gap,
    outage,
    parse_daemon_log,
    timeline_text,
)


def steady(start: float, end: float, step: float = 5.0) -> list[float]:
    """Arrival times every `step` ms from `start` to `end`."""
    count = int((end - start) / step) + 1
    return [start + index * step for index in range(count)]


def test_gap_spans_the_failure():
    arrivals = steady(-100, -10) + steady(140, 6000)

    assert direction_gap(arrivals, 6000) == (-10, 140)


def test_gap_none_when_traffic_stops():
    arrivals = steady(-100, -10) + steady(140, 3000)

    assert direction_gap(arrivals, 6000) is None


def test_outage_is_worst_direction():
    arrivals = {"a->b": steady(-100, -5) + steady(95, 6000),
                "b->a": steady(-100, -5) + steady(245, 6000)}

    assert outage(arrivals, 6000) == 250


def test_outage_none_if_one_direction_dead():
    arrivals = {"a->b": steady(-100, 6000), "b->a": steady(-100, -5)}

    assert outage(arrivals, 6000) is None


def test_log_lines_parsed_to_epoch():
    text = ("2026-12-05 01:09:02,508 DEBUG agent.manager: network: LinkDown(...)\n"
            "Traceback (most recent call last):\n")

    (at, gateway, line), = parse_daemon_log(text, "gw1")

    expected = datetime.datetime(2026, 12, 5, 1, 9, 2).timestamp() + 0.508
    assert abs(at - expected) < 1e-6
    assert gateway == "gw1"
    assert line == "DEBUG agent.manager: network: LinkDown(...)"


def test_timeline_keeps_steps_only():
    switch = "INFO agent.ike.switch: site[1] 0011aabb_i 2233ccdd_r 192.0.2.10:4500: switch 192.0.2.74 → 198.51.100.74"
    link_local = ("DEBUG agent.manager: network: AddressRemoved(address=Address(ifindex=2, "
                  "address=IPv6Address('fe80::1'), prefixlen=64))")

    assert timeline_text(switch) == "switch 192.0.2.74 → 198.51.100.74"
    assert timeline_text(link_local) is None
    assert timeline_text("INFO agent.control: control socket listening") is None


def test_timeline_ordered_with_probe_entries():
    event_at = 1000.0
    lines = [(1000.2, "gw2", "INFO agent.ike.switch: switch 192.0.2.74 → 198.51.100.74"),
             (1000.1, "gw2", "DEBUG agent.manager: network: LinkDown(link=Link(ifindex=2, name='up0'))")]
    arrivals = {"gw1->gw2": steady(-100, -5) + steady(295, 6000)}

    timeline = build_timeline(lines, event_at, event_at + 6, "ip link set up0 down", arrivals, 6000)

    texts = [text for _, text in timeline]
    assert texts[0] == "failure: ip link set up0 down"
    assert texts[1] == "gw2: netlink LinkDown up0"
    assert texts[2] == "gw2: switch 192.0.2.74 → 198.51.100.74"
    assert texts[3] == "first probe gw1->gw2 after a 300 ms gap"
