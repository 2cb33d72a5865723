"""Traffic selector narrowing (RFC 7296 §2.9).

The responder narrows what the initiator proposes to the intersection with its own policy. The
initiator then checks that what came back lies within what it proposed. Address ranges are
compared as integers. A port range with start > end ("OPAQUE", RFC 7296 §3.13.1) matches only
another OPAQUE range or the full range 0-65535.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .payloads import TrafficSelector


def _protocol_intersection(a: int, b: int) -> int | None:
    if a == 0:
        return b
    if b == 0 or a == b:
        return a
    return None


def _port_intersection(a: TrafficSelector, b: TrafficSelector) -> tuple[int, int] | None:
    a_opaque = a.start_port > a.end_port
    b_opaque = b.start_port > b.end_port
    if a_opaque or b_opaque:
        # An OPAQUE range matches another OPAQUE range or the full range 0-65535.
        if a_opaque and b_opaque:
            return a.start_port, a.end_port
        other = b if a_opaque else a
        opaque = a if a_opaque else b
        return (opaque.start_port, opaque.end_port) if (other.start_port, other.end_port) == (0, 65535) else None
    start, end = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    return (start, end) if start <= end else None


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """Return the selector matching exactly what both match, or None when they are disjoint."""
    if a.ts_type != b.ts_type:
        return None
    protocol = _protocol_intersection(a.ip_protocol, b.ip_protocol)
    if protocol is None:
        return None
    ports = _port_intersection(a, b)
    if ports is None:
        return None
    start = max(a.start_addr, b.start_addr)  # same length, so octet order is numeric order
    end = min(a.end_addr, b.end_addr)
    if start > end:
        return None
    return TrafficSelector(a.ts_type, protocol, ports[0], ports[1], start, end)


def narrow(proposed: Iterable[TrafficSelector], policy: Sequence[TrafficSelector]) -> list[TrafficSelector]:
    """Return every non-empty intersection of a proposed selector with a policy selector, in order."""
    result: list[TrafficSelector] = []
    for offered in proposed:
        for allowed in policy:
            common = intersect(offered, allowed)
            if common is not None and common not in result:
                result.append(common)
    return result


def contains(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    """Tell whether `outer` matches everything `inner` matches."""
    return intersect(outer, inner) == inner


def within(selectors: Iterable[TrafficSelector], proposed: Sequence[TrafficSelector]) -> bool:
    """Tell whether each selector lies within one of the proposed ones."""
    return all(any(contains(outer, ts) for outer in proposed) for ts in selectors)
