"""Typed events that the watcher reports about links, addresses, routes and rules.

Each event carries the record as it is now (after the change), so a
consumer never needs the message that caused it. ``key`` names the object
that an event is about; coalescing keeps only the newest event per key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .records import Address, Link, Route, Rule


class DownReason(enum.Enum):
    ADMIN = "admin"  # IFF_UP cleared (`ip link set DEV down`)
    CARRIER = "carrier"  # up, but no carrier or operstate not UP/UNKNOWN
    REMOVED = "removed"  # the link was deleted (RTM_DELLINK)


@dataclass(frozen=True)
class LinkUp:
    """A link became able to carry packets, or appeared already up."""

    link: Link

    @property
    def key(self) -> tuple:
        return ("link", self.link.ifindex)


@dataclass(frozen=True)
class LinkDown:
    """A link that was up stopped carrying packets, or a link was removed."""

    link: Link
    reason: DownReason

    @property
    def key(self) -> tuple:
        return ("link", self.link.ifindex)


@dataclass(frozen=True)
class AddressAdded:
    """A new address appeared; it may still be tentative (check ``address.usable``)."""

    address: Address

    @property
    def key(self) -> tuple:
        return ("address", self.address.key)


@dataclass(frozen=True)
class AddressUsable:
    """An address became usable as a source, or its deprecated or temporary flag changed."""

    address: Address

    @property
    def key(self) -> tuple:
        return ("address", self.address.key)


@dataclass(frozen=True)
class AddressUnusable:
    """An address became unusable (it went tentative again), or its DAD failed."""

    address: Address

    @property
    def key(self) -> tuple:
        return ("address", self.address.key)


@dataclass(frozen=True)
class AddressRemoved:
    address: Address

    @property
    def key(self) -> tuple:
        return ("address", self.address.key)


@dataclass(frozen=True)
class RouteChanged:
    """A route was added, replaced or removed (``removed`` set)."""

    route: Route
    removed: bool

    @property
    def key(self) -> tuple:
        return ("route", self.route.key)


@dataclass(frozen=True)
class RuleChanged:
    """A policy rule was added or removed (``removed`` set)."""

    rule: Rule
    removed: bool

    @property
    def key(self) -> tuple:
        return ("rule", self.rule.key)


@dataclass(frozen=True)
class Resynced:
    """The model was rebuilt from a full dump.

    ``initial`` is set for the first dump after start, which reports no
    other events. After a later resync (lost notifications) the events
    before this one describe every difference that the dump found.
    """

    initial: bool

    @property
    def key(self) -> tuple:
        return ("resync",)


NetEvent = (LinkUp | LinkDown | AddressAdded | AddressUsable | AddressUnusable
            | AddressRemoved | RouteChanged | RuleChanged | Resynced)
