"""Coalescer: burst merging on a fake clock."""

from __future__ import annotations

import pytest

from agent.netwatch import Coalescer, DownReason, LinkDown, LinkUp, Resynced
from agent.netwatch.coalesce import merge_events
from agent.netwatch.records import IFF_UP, Link


def link(ifindex: int, up: bool = True) -> Link:
    return Link(ifindex, f"u{ifindex}", IFF_UP if up else 0, "UP" if up else "DOWN", up)


def down(ifindex: int) -> LinkDown:
    return LinkDown(link(ifindex, up=False), DownReason.ADMIN)


def up(ifindex: int) -> LinkUp:
    return LinkUp(link(ifindex))


def test_first_event_delivered_at_once():
    coalescer = Coalescer(0.01, 0.08)
    assert coalescer.push([down(1)], now=5.0) == [down(1)]
    assert coalescer.next_deadline() == pytest.approx(5.01)


def test_burst_held_until_window_ends():
    coalescer = Coalescer(0.01, 0.08)
    coalescer.push([down(1)], now=5.0)
    assert coalescer.push([down(2)], now=5.002) == []
    assert coalescer.push([down(3)], now=5.009) == []
    assert coalescer.handle_timer(5.005) == []  # early wake-up: still holding
    assert coalescer.handle_timer(5.01) == [down(2), down(3)]


def test_window_doubles_during_burst():
    coalescer = Coalescer(0.01, 0.08)
    coalescer.push([down(1)], now=0.0)
    expected_windows = [0.02, 0.04, 0.08, 0.08]
    now = 0.0
    deadline = coalescer.next_deadline()
    for window in expected_windows:
        coalescer.push([up(1)], now=deadline - 0.001)
        now = deadline
        assert coalescer.handle_timer(now) == [up(1)]
        deadline = coalescer.next_deadline()
        assert deadline == pytest.approx(now + window)


def test_quiet_window_resets():
    coalescer = Coalescer(0.01, 0.08)
    coalescer.push([down(1)], now=0.0)
    coalescer.push([down(2)], now=0.005)
    coalescer.handle_timer(0.01)  # burst: next window 0.02
    assert coalescer.handle_timer(0.03) == []  # nothing held: quiet again
    assert coalescer.next_deadline() is None

    assert coalescer.push([down(3)], now=1.0) == [down(3)]
    assert coalescer.next_deadline() == pytest.approx(1.01)


def test_late_timer_flushes_with_new_events():
    # The window ended but its timer has not run yet when new events arrive.
    coalescer = Coalescer(0.01, 0.08)
    coalescer.push([down(1)], now=0.0)
    coalescer.push([down(2)], now=0.005)
    assert coalescer.push([down(3)], now=0.5) == [down(2), down(3)]


def test_empty_push_changes_nothing():
    coalescer = Coalescer(0.01, 0.08)
    assert coalescer.push([], now=0.0) == []
    assert coalescer.next_deadline() is None


def test_merge_keeps_newest_per_link():
    events = [down(1), down(2), up(1), Resynced(False)]
    assert merge_events(events) == [down(2), up(1), Resynced(False)]


def test_merge_link_flap_ends_down():
    assert merge_events([down(1), up(1), down(1)]) == [down(1)]


@pytest.mark.parametrize("windows", [(0, 0.1), (0.2, 0.1), (-1, 1)])
def test_invalid_windows_rejected(windows):
    with pytest.raises(ValueError, match="min_window"):
        Coalescer(*windows)
