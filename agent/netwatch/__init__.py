"""Netlink watcher: links, addresses, routes and rules as typed events.

Layers, from pure to I/O:

- ``records``: Link, Address, Route, Rule snapshots.
- ``events``: LinkUp, LinkDown, AddressAdded, ... , Resynced.
- ``state.NetState``: the model; records in, events out.
- ``coalesce.Coalescer``: burst merging on an injected clock.
- ``session.NetlinkSession``: dumps, resyncs, sequence numbers; bytes in, bytes out.
- ``watcher.NetWatcher``: the asyncio reader and timer.
"""

from .coalesce import Coalescer
from .events import (AddressAdded, AddressRemoved, AddressUnusable, AddressUsable,
                     DownReason, LinkDown, LinkUp, NetEvent, Resynced, RouteChanged,
                     RuleChanged)
from .records import Address, Link, Route, Rule
from .session import NetlinkSession
from .state import RTPROT_RMOBIKE, NetState
from .watcher import NetWatcher, open_rtnetlink_socket

__all__ = [
    "Address", "AddressAdded", "AddressRemoved", "AddressUnusable", "AddressUsable",
    "Coalescer", "DownReason", "Link", "LinkDown", "LinkUp", "NetEvent", "NetState",
    "NetWatcher", "NetlinkSession", "RTPROT_RMOBIKE", "Resynced", "Route", "RouteChanged",
    "Rule", "RuleChanged", "open_rtnetlink_socket",
]
