"""Choose the (local, remote) addresses of a new IKE SA from the live network state.

The netlink watcher's model provides the usable addresses and links, and udev the uplink marks.
The kernel's route lookup reports which pairs can carry packets, and `agent.uplinks.rank_paths`
orders the pairs. Link-local, tentative (not optimistic) and DAD-failed addresses never qualify.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.config import ConnectionConfig
from agent.netwatch.state import NetState
from agent.uplinks import UDEV_DB_DIR, RouteLookup, RouteLookupError, RouteResolver, rank_paths, read_uplink_marks

logger = logging.getLogger(__name__)

AddressPair = tuple[str, str]  # (local address, remote address)

# How many elements of `agent.uplinks.rank_paths`' sort key make one path worth moving to from
# another: config priority, leaving through its own link, udev priority, deprecation. The
# rest only breaks ties, and a tie is no reason to move an IKE SA that works.
PREFERENCE_DEPTH = 4


@dataclass(frozen=True)
class RankedPath:
    """A usable (local, remote) pair; a lower `preference` is worth a move, an equal one is not."""

    local: str
    remote: str
    preference: tuple = ()


class PathSelector(Protocol):
    """The manager's view of the network: paths for new IKE SAs and the usable local addresses."""

    def choose(self, connection: ConnectionConfig) -> AddressPair | None:
        """Return the best (local, remote) pair for a new IKE SA of `connection`, or None."""

    def local_addresses(self) -> set[str] | None:
        """Return the usable local addresses, or None when they are not known."""

    def candidates(self, connection: ConnectionConfig, remotes: Sequence[str]) -> list[RankedPath] | None:
        """Return the usable pairs from this host to `remotes`, best first; None when unknown."""


class KernelPaths:
    """PathSelector on the watcher's NetState, udev marks and the kernel's route lookups."""

    def __init__(self, state: Callable[[], NetState], resolver: RouteResolver,
                 udev_db_dir: Path = UDEV_DB_DIR) -> None:
        self._state = state
        self._resolver = resolver
        self._udev_db_dir = udev_db_dir

    def choose(self, connection: ConnectionConfig) -> AddressPair | None:
        state = self._state()
        links = {link.ifindex: link for link in state.links()}
        marks = read_uplink_marks(links, self._udev_db_dir)
        remotes = [ipaddress.ip_address(remote) for remote in connection.remote_hosts()]
        candidates = rank_paths(connection.local_addrs, remotes, state.usable_addresses(), links, marks, self._lookup)
        if not candidates:
            return None
        best = candidates[0]
        logger.debug("%s: %d candidate paths, best %s -> %s", connection.name, len(candidates), best.local, best.remote)
        return str(best.local), str(best.remote)

    def local_addresses(self) -> set[str] | None:
        return {str(address.address) for address in self._state().usable_addresses()}

    def candidates(self, connection: ConnectionConfig, remotes: Sequence[str]) -> list[RankedPath] | None:
        state = self._state()
        if not state.synced:
            return None
        links = {link.ifindex: link for link in state.links()}
        marks = read_uplink_marks(links, self._udev_db_dir)
        ranked = rank_paths(connection.local_addrs, [ipaddress.ip_address(r) for r in remotes],
                            state.usable_addresses(), links, marks, self._lookup)
        return [RankedPath(str(c.local), str(c.remote), c.rank[:PREFERENCE_DEPTH]) for c in ranked]

    def _lookup(self, remote, local) -> RouteLookup | None:
        try:
            return self._resolver.lookup(remote, src=local)
        except (RouteLookupError, TimeoutError) as error:
            logger.warning("route lookup to %s from %s failed: %s", remote, local or "any", error)
            return None


class FixedPaths:
    """PathSelector that returns configured pairs: the first single local and remote address.

    For tests and for hosts without a netlink watcher. `local` lists the usable local addresses,
    None when any address counts as usable. `ranked` gives each connection's usable pairs, best
    first; without an entry the candidates are unknown and nothing moves.
    """

    def __init__(self, paths: dict[str, AddressPair] | None = None, local: set[str] | None = None,
                 ranked: dict[str, list[AddressPair]] | None = None) -> None:
        self.paths = dict(paths or {})
        self.local = local
        self.ranked = dict(ranked or {})

    def candidates(self, connection: ConnectionConfig, remotes: Sequence[str]) -> list[RankedPath] | None:
        """Return the pairs given for the connection in `ranked`, each preferred over the next."""
        pairs = self.ranked.get(connection.name)
        if pairs is None:
            return None
        return [RankedPath(local, remote, (index,)) for index, (local, remote) in enumerate(pairs)
                if remote in remotes]

    def local_addresses(self) -> set[str] | None:
        return self.local

    def choose(self, connection: ConnectionConfig) -> AddressPair | None:
        if connection.name in self.paths:
            return self.paths[connection.name]
        locals_ = [a for a in connection.local_addrs if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address))]
        remotes = connection.remote_hosts()
        for remote in remotes:
            for local in locals_:
                if local.version == remote.version:
                    return str(local), str(remote)
        return None
