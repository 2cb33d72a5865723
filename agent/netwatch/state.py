"""NetState: the links, addresses, routes and rules of one network namespace.

A pure model without I/O. It consumes decoded rtnetlink records, either
notifications (``apply``) or the replies of a full dump (``begin_resync``,
``add_dumped``, ``finish_resync``), and returns the typed events that each
change causes.

What it leaves out on purpose:

- XFRM interfaces (IFLA_INFO_KIND "xfrm") and their addresses and routes,
  because the agent's own tunnels must not look like uplinks.
- Routes and rules whose protocol is RTPROT_RMOBIKE: the number that the
  agent puts on the routes and rules it installs, so that its own changes
  cause no events.
- The local table (255), because it only mirrors local addresses, which
  the address events already report; and cached routes (RTM_F_CLONED).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

from .events import (AddressAdded, AddressRemoved, AddressUnusable, AddressUsable,
                     DownReason, LinkDown, LinkUp, NetEvent, Resynced, RouteChanged,
                     RuleChanged)
from .records import RT_SCOPE_UNIVERSE, RT_TABLE_LOCAL, RTM_F_CLONED, Address, Link, Route, Rule

log = logging.getLogger(__name__)

# The rtm_protocol / FRA_PROTOCOL value of every route and rule that rmobike
# installs. The kernel reserves 0-4, and /etc/iproute2/rt_protos of iproute2
# 6.1 (Debian 12) names routing daemons from 8 to 192 but leaves 147 free.
# `ip route show proto 147` lists the agent's routes.
RTPROT_RMOBIKE = 147

IGNORED_LINK_KINDS = frozenset({"xfrm"})

Record = Link | Address | Route | Rule


@dataclass
class _Tables:
    links: dict[int, Link] = field(default_factory=dict)
    ignored_links: set[int] = field(default_factory=set)
    addresses: dict[tuple, Address] = field(default_factory=dict)
    routes: dict[tuple, Route] = field(default_factory=dict)
    rules: dict[Rule, Rule] = field(default_factory=dict)

    def apply(self, record: Record, deleted: bool) -> list[NetEvent]:
        """Update the tables with one record and return the events of the change."""
        if isinstance(record, Link):
            return self._apply_link(record, deleted)
        if isinstance(record, Address):
            return self._apply_address(record, deleted)
        if isinstance(record, Route):
            return self._apply_route(record, deleted)
        return self._apply_rule(record, deleted)

    def _apply_link(self, link: Link, deleted: bool) -> list[NetEvent]:
        if link.kind in IGNORED_LINK_KINDS:
            self.links.pop(link.ifindex, None)
            if deleted:
                self.ignored_links.discard(link.ifindex)
            else:
                self.ignored_links.add(link.ifindex)
            return []

        old = self.links.get(link.ifindex)
        if not deleted:
            self.links[link.ifindex] = link
            if not link.admin_up:
                # IPv4 drops the routes through a link that goes admin down,
                # or is removed, without sending RTM_DELROUTE.
                self._forget_routes_through(link.ifindex)
            return link_transition(old, link)

        self.links.pop(link.ifindex, None)
        events = link_transition(old, None)
        for key in [key for key, address in self.addresses.items() if address.ifindex == link.ifindex]:
            events += address_transition(self.addresses.pop(key), None)
        self._forget_routes_through(link.ifindex)
        return events

    def _forget_routes_through(self, ifindex: int) -> None:
        for key in [key for key, route in self.routes.items()
                    if route.family == socket.AF_INET and ifindex in route.oifs]:
            del self.routes[key]

    def _apply_address(self, address: Address, deleted: bool) -> list[NetEvent]:
        if address.ifindex in self.ignored_links:
            return []
        old = self.addresses.pop(address.key, None)
        if not deleted:
            self.addresses[address.key] = address
        return address_transition(old, None if deleted else address)

    def _apply_route(self, route: Route, deleted: bool) -> list[NetEvent]:
        if not route_is_watched(route, self.ignored_links):
            return []
        old = self.routes.pop(route.key, None)
        if not deleted:
            self.routes[route.key] = route
        return entry_transition(old, None if deleted else route, RouteChanged)

    def _apply_rule(self, rule: Rule, deleted: bool) -> list[NetEvent]:
        if rule.protocol == RTPROT_RMOBIKE:
            return []
        old = self.rules.pop(rule.key, None)
        if not deleted:
            self.rules[rule.key] = rule
        return entry_transition(old, None if deleted else rule, RuleChanged)


def route_is_watched(route: Route, ignored_links: set[int]) -> bool:
    if route.protocol == RTPROT_RMOBIKE or route.table == RT_TABLE_LOCAL:
        return False
    if route.flags & RTM_F_CLONED:
        return False  # a cached route (exception, PMTU), not a table entry
    return not route.oifs & ignored_links


def link_transition(old: Link | None, new: Link | None) -> list[NetEvent]:
    """Return the event for a link going from ``old`` to ``new`` (None: absent)."""
    was_up = old is not None and old.is_up
    if new is None:
        return [LinkDown(old, DownReason.REMOVED)] if old is not None else []
    if new.is_up and not was_up:
        return [LinkUp(new)]
    if was_up and not new.is_up:
        reason = DownReason.CARRIER if new.admin_up else DownReason.ADMIN
        return [LinkDown(new, reason)]
    return []


def address_transition(old: Address | None, new: Address | None) -> list[NetEvent]:
    """Return the events for an address going from ``old`` to ``new`` (None: absent)."""
    if new is None:
        return [AddressRemoved(old)] if old is not None else []
    if old is None:
        return [AddressAdded(new), AddressUsable(new)] if new.usable else [AddressAdded(new)]
    if not new.usable and (old.usable or (new.dadfailed and not old.dadfailed)):
        return [AddressUnusable(new)]
    if new.usable and (not old.usable or old.deprecated != new.deprecated
                       or old.temporary != new.temporary):
        return [AddressUsable(new)]
    # Only lifetimes or flags that do not change usability (e.g. after a
    # router advertisement refreshed the prefix).
    return []


def entry_transition(old, new, event_type) -> list[NetEvent]:
    """Return the RouteChanged or RuleChanged event for a table entry that changed."""
    if old == new:
        return []
    if new is None:
        return [event_type(old, True)]
    return [event_type(new, False)]


def diff_tables(old: _Tables, new: _Tables) -> list[NetEvent]:
    """Return the events that turn the state ``old`` into ``new``, links first."""
    events: list[NetEvent] = []
    for ifindex in sorted(old.links.keys() | new.links.keys()):
        events += link_transition(old.links.get(ifindex), new.links.get(ifindex))
    for key in sorted(old.addresses.keys() | new.addresses.keys(), key=repr):
        events += address_transition(old.addresses.get(key), new.addresses.get(key))
    for key in sorted(old.routes.keys() | new.routes.keys(), key=repr):
        events += entry_transition(old.routes.get(key), new.routes.get(key), RouteChanged)
    for key in sorted(old.rules.keys() | new.rules.keys(), key=repr):
        events += entry_transition(old.rules.get(key), new.rules.get(key), RuleChanged)
    return events


class NetState:
    """The model of one namespace's links, addresses, routes and rules.

    Until the first ``finish_resync`` the model is empty and ``synced`` is
    false. While a resync runs, notifications are kept aside and replayed on
    top of the dump when it finishes. The replay is sound because each
    notification carries the whole object and arrives in kernel order, so
    the last one for an object wins. It is unsound after lost notifications,
    which is why ``begin_resync(discard_notifications=True)`` exists.
    """

    def __init__(self) -> None:
        self._tables = _Tables()
        self._building: _Tables | None = None
        self._held: list[tuple[Record, bool]] = []
        self.synced = False

    # Queries

    def link(self, ifindex: int) -> Link | None:
        return self._tables.links.get(ifindex)

    def links(self) -> list[Link]:
        return sorted(self._tables.links.values(), key=lambda link: link.ifindex)

    def addresses(self, ifindex: int | None = None) -> list[Address]:
        found = [address for address in self._tables.addresses.values()
                 if ifindex is None or address.ifindex == ifindex]
        return sorted(found, key=lambda address: (address.ifindex, address.address.version,
                                                  address.address))

    def usable_addresses(self) -> list[Address]:
        """Return the global-scope addresses that can be a source now, on links that are up.

        Loopback links and addresses of link or host scope are left out.
        Deprecated and temporary addresses are included; the ranking in
        ``agent.uplinks`` decides how much to trust them.
        """
        usable = []
        for address in self.addresses():
            link = self._tables.links.get(address.ifindex)
            if link is None or link.loopback or not link.is_up:
                continue
            if address.usable and address.scope == RT_SCOPE_UNIVERSE:
                usable.append(address)
        return usable

    def routes(self) -> list[Route]:
        return list(self._tables.routes.values())

    def rules(self) -> list[Rule]:
        return sorted(self._tables.rules.values(), key=lambda rule: (rule.family, rule.priority))

    @property
    def resyncing(self) -> bool:
        return self._building is not None

    # Input

    def apply(self, record: Record, deleted: bool = False) -> list[NetEvent]:
        """Apply one notification and return its events (none while a resync runs)."""
        if self._building is not None:
            self._held.append((record, deleted))
            return []
        return self._tables.apply(record, deleted)

    def begin_resync(self, discard_notifications: bool = False) -> None:
        """Start collecting a full dump, restarting one that is under way.

        Pass ``discard_notifications`` after notifications were lost: those
        held so far may be older than what the next dump reads, and
        replaying them would undo newer state.
        """
        self._building = _Tables()
        if discard_notifications:
            self._held.clear()

    def add_dumped(self, record: Record) -> None:
        if self._building is None:
            raise RuntimeError("add_dumped() called without begin_resync()")
        self._building.apply(record, deleted=False)

    def finish_resync(self) -> list[NetEvent]:
        """Replace the model with the dump plus held notifications; return the differences.

        The first resync returns only ``Resynced(initial=True)``, because
        every object would otherwise be reported as new.
        """
        if self._building is None:
            raise RuntimeError("finish_resync() called without begin_resync()")
        building, self._building = self._building, None
        for record, deleted in self._held:
            building.apply(record, deleted)
        self._held.clear()

        initial = not self.synced
        events = [] if initial else diff_tables(self._tables, building)
        self._tables = building
        self.synced = True
        return events + [Resynced(initial=initial)]
