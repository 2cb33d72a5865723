"""Adaptive coalescing of event bursts, on a clock that the caller passes in.

One link failure makes the kernel send a burst: the link, then its
addresses and routes, spread over a few milliseconds. Acting on each one
would make the daemon re-plan several times. Waiting for the burst to end
would delay the first, most urgent, reaction. The coalescer does neither:

- quiet: the first events are delivered at once, and a hold window opens.
- holding: events are kept until the window ends, then delivered as one
  merged batch, and the next window is twice as long (up to a maximum).
- a window that ends with nothing held returns to quiet and to the
  shortest window.

Merging keeps the newest event per object (``event.key``), at the place of
that newest event. Every event carries the object's current record, so
the newest one is enough to act on.
"""

from __future__ import annotations

from collections.abc import Iterable

from .events import NetEvent

DEFAULT_MIN_WINDOW = 0.005  # seconds
DEFAULT_MAX_WINDOW = 0.160  # seconds


def merge_events(events: Iterable[NetEvent]) -> list[NetEvent]:
    """Keep the newest event for each object, in the order of those newest events."""
    newest: dict[tuple, tuple[int, NetEvent]] = {}
    for position, event in enumerate(events):
        newest.pop(event.key, None)
        newest[event.key] = (position, event)
    return [event for _, event in newest.values()]


class Coalescer:
    """Sans-I/O burst coalescer: ``push`` events, ``handle_timer`` at ``next_deadline()``."""

    def __init__(self, min_window: float = DEFAULT_MIN_WINDOW,
                 max_window: float = DEFAULT_MAX_WINDOW) -> None:
        if not 0 < min_window <= max_window:
            raise ValueError(f"invalid windows {min_window}, {max_window}: "
                             "expected 0 < min_window <= max_window (seconds)")
        self.min_window = min_window
        self.max_window = max_window
        self._window = min_window
        self._window_end: float | None = None  # None: quiet
        self._held: list[NetEvent] = []

    def push(self, events: list[NetEvent], now: float) -> list[NetEvent]:
        """Take new events; return the batch to deliver now (empty while holding)."""
        if not events:
            return []
        if self._window_end is not None and now < self._window_end:
            self._held += events
            return []

        # Quiet, or a window whose timer has not run yet: flush what it
        # held together with the new events, then open a window.
        batch = merge_events(self._held + events)
        self._held.clear()
        self._window_end = now + self._window
        return batch

    def next_deadline(self) -> float | None:
        return self._window_end

    def handle_timer(self, now: float) -> list[NetEvent]:
        """End the window if it is over; return the merged batch it held."""
        if self._window_end is None or now < self._window_end:
            return []
        if not self._held:
            self._window_end = None
            self._window = self.min_window
            return []

        batch = merge_events(self._held)
        self._held.clear()
        self._window = min(self._window * 2, self.max_window)
        self._window_end = now + self._window
        return batch
