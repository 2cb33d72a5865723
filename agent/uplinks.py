"""Uplinks and source selection: which local address to use toward which peer.

Three parts:

- udev marks: ``RMOBIKE_UPLINK`` and ``RMOBIKE_PRIORITY`` properties that
  rules in ``udev/90-rmobike.rules`` set, read straight from the udev
  database (``/run/udev/data/n<ifindex>``).
- ``RouteResolver.lookup``: the kernel's route lookup (RTM_GETROUTE), which
  honours ``ip rule``, marks, and source-based policy routing.
- ``rank_paths``: a pure function that orders the (local, remote) address
  pairs to try for a connection.

udev processes only the interfaces of the initial network namespace, so in
any other namespace no interface carries marks, and ranking relies on the
configuration and the kernel's routes alone.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from agent.netwatch import messages
from agent.netwatch.records import Address, IPAddress, IPNetwork, Link

log = logging.getLogger(__name__)

UDEV_DB_DIR = Path("/run/udev/data")
UPLINK_PROPERTY = "RMOBIKE_UPLINK"
PRIORITY_PROPERTY = "RMOBIKE_PRIORITY"
# RMOBIKE_PRIORITY orders uplinks like a route metric: lower is preferred.
# Interfaces without the property rank as this value.
DEFAULT_PRIORITY = 100


# udev marks

@dataclass(frozen=True)
class UplinkMark:
    """The uplink properties of one interface; None where a property is absent."""

    uplink: bool | None = None  # RMOBIKE_UPLINK: True for "1", False for "0"
    priority: int | None = None  # RMOBIKE_PRIORITY


def read_udev_properties(ifindex: int, db_dir: Path = UDEV_DB_DIR) -> dict[str, str]:
    """Return the ``E:KEY=VALUE`` properties of network interface ``ifindex`` from the udev database.

    Returns an empty dict if udev has no entry (not yet processed, another
    network namespace, or no udev at all).
    """
    path = Path(db_dir) / f"n{ifindex}"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    return parse_udev_database(text)


def parse_udev_database(text: str) -> dict[str, str]:
    """Parse one udev database file; only ``E:`` (property) lines are kept."""
    properties = {}
    for line in text.splitlines():
        if not line.startswith("E:"):
            continue
        key, sep, value = line[2:].partition("=")
        if sep and key:
            properties[key] = value
    return properties


def uplink_mark(properties: Mapping[str, str]) -> UplinkMark:
    """Read RMOBIKE_UPLINK and RMOBIKE_PRIORITY; log and skip values that are invalid."""
    uplink = None
    value = properties.get(UPLINK_PROPERTY)
    if value in ("1", "0"):
        uplink = value == "1"
    elif value is not None:
        log.warning("invalid udev property %s=%r: expected 1 or 0", UPLINK_PROPERTY, value)

    priority = None
    value = properties.get(PRIORITY_PROPERTY)
    if value is not None:
        try:
            priority = int(value)
        except ValueError:
            log.warning("invalid udev property %s=%r: expected an integer",
                        PRIORITY_PROPERTY, value)
    return UplinkMark(uplink, priority)


def read_uplink_marks(ifindexes: Iterable[int], db_dir: Path = UDEV_DB_DIR) -> dict[int, UplinkMark]:
    """Read the udev marks of each interface; the database is read anew on every call.

    No caching on purpose: udev writes the entry after the kernel announces
    the link, so an early read can miss marks that a later one finds.
    """
    return {ifindex: uplink_mark(read_udev_properties(ifindex, db_dir)) for ifindex in ifindexes}


# Kernel route lookup

# linux/rtnetlink.h
RTA_DST = 1
RTA_SRC = 2
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_TABLE = 15
RTA_MARK = 16
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # rta_len, rta_type
RTM_F_LOOKUP_TABLE = 0x1000  # report the table that matched in RTA_TABLE
RTN_UNICAST = 1
RTN_LOCAL = 2

# Errors that mean "no route" for the request. No matching route or an
# unreachable one gives ENETUNREACH or EHOSTUNREACH, and Linux 6.18 also
# gives ENETUNREACH for a source that is not local. A prohibit route gives
# EACCES, a link that is down ENETDOWN. A blackhole route gives EINVAL, which
# a malformed request would also cause.
NO_ROUTE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES,
                             errno.EINVAL, errno.ENETDOWN})
LOOKUP_TIMEOUT = 1.0  # seconds; the kernel replies within microseconds


@dataclass(frozen=True)
class RouteLookup:
    """The kernel's reply to a route lookup: how a packet to the destination would leave."""

    src: IPAddress | None  # RTA_PREFSRC: the source address the kernel would use
    oif: int | None  # RTA_OIF
    gateway: IPAddress | None  # RTA_GATEWAY; None for a directly connected peer
    table: int | None = None  # RTA_TABLE: the table that matched


class RouteLookupError(OSError):
    """The kernel rejected a route lookup for a reason other than "no route"."""


def encode_route_request(dst: IPAddress, seq: int, src: IPAddress | None = None,
                         mark: int | None = None, oif: int | None = None) -> bytes:
    """Encode RTM_GETROUTE for one destination, as `ip route get` sends it."""
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    if src is not None and src.version != dst.version:
        raise ValueError(f"source {src} and destination {dst} are of different families")
    bits = dst.max_prefixlen

    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    header = struct.pack("=BBBBBBBBI", family, bits, bits if src is not None else 0,
                         0, 0, 0, 0, 0, RTM_F_LOOKUP_TABLE)
    attrs = messages.encode_attr(RTA_DST, dst.packed)
    if src is not None:
        attrs += messages.encode_attr(RTA_SRC, src.packed)
    if oif is not None:
        attrs += messages.encode_attr(RTA_OIF, struct.pack("=I", oif))
    if mark is not None:
        attrs += messages.encode_attr(RTA_MARK, struct.pack("=I", mark))
    return messages.encode_message(messages.RTM_GETROUTE, messages.NLM_F_REQUEST, seq,
                                   header + attrs)


def decode_route_reply(message: messages.Message,
                       requested_src: IPAddress | None = None) -> RouteLookup | None:
    """Turn the reply to RTM_GETROUTE into a RouteLookup, or None when there is no route.

    With a source in the request, the packet would leave from that source:
    the kernel echoes it as RTA_SRC, and IPv6 still reports its own
    preference in RTA_PREFSRC, so ``requested_src`` is the answer's source.
    """
    if message.type == messages.NLMSG_ERROR:
        if message.error in NO_ROUTE_ERRNOS:
            return None
        raise RouteLookupError(message.error, f"route lookup failed: {os.strerror(message.error)}")

    route = message.record
    if route is None:
        raise RouteLookupError(errno.EPROTO, f"unexpected reply type {message.type} to RTM_GETROUTE")
    # Unreachable, blackhole, prohibit and throw routes carry no packets, even
    # when the kernel returns one in place of an error.
    if route.type not in (RTN_UNICAST, RTN_LOCAL):
        return None
    src = requested_src if requested_src is not None else route.prefsrc
    return RouteLookup(src=src, oif=route.oif, gateway=route.gateway, table=route.table)


def parse_route_reply(data: bytes, seq: int,
                      requested_src: IPAddress | None = None) -> tuple[bool, RouteLookup | None]:
    """Find the reply with `seq` in one datagram: (found, what decode_route_reply returns).

    This reads only the fields a RouteLookup needs, with struct. The generic decoder spends
    most of a path ranking's time on attributes that a route lookup never uses.
    """
    offset = 0
    while offset + messages.NLMSGHDR.size <= len(data):
        length, msg_type, _, msg_seq, _ = messages.NLMSGHDR.unpack_from(data, offset)
        if length < messages.NLMSGHDR.size or offset + length > len(data):
            raise RouteLookupError(errno.EPROTO, f"malformed netlink message of length {length}")
        if msg_seq == seq:
            return True, _route_from_reply(data, offset + messages.NLMSGHDR.size, offset + length, msg_type,
                                           requested_src)
        offset += (length + 3) & ~3
    return False, None


def _route_from_reply(data: bytes, start: int, end: int, msg_type: int,
                      requested_src: IPAddress | None) -> RouteLookup | None:
    if msg_type == messages.NLMSG_ERROR:
        if end - start < 4:
            raise RouteLookupError(errno.EPROTO, "NLMSG_ERROR without an error code")
        (code,) = struct.unpack_from("=i", data, start)
        if -code in NO_ROUTE_ERRNOS:
            return None
        raise RouteLookupError(-code, f"route lookup failed: {os.strerror(-code)}")
    if msg_type != messages.RTM_NEWROUTE or end - start < _RTMSG.size:
        raise RouteLookupError(errno.EPROTO, f"unexpected reply type {msg_type} to RTM_GETROUTE")
    _, _, _, _, table, _, _, route_type, _ = _RTMSG.unpack_from(data, start)
    attrs: dict[int, bytes] = {}
    position = start + _RTMSG.size
    while position + _RTATTR.size <= end:
        attr_length, attr_type = _RTATTR.unpack_from(data, position)
        if attr_length < _RTATTR.size or position + attr_length > end:
            raise RouteLookupError(errno.EPROTO, f"malformed route attribute of length {attr_length}")
        attrs[attr_type & NLA_TYPE_MASK] = data[position + _RTATTR.size:position + attr_length]
        position += (attr_length + 3) & ~3
    # Unreachable, blackhole, prohibit and throw routes carry no packets, even
    # when the kernel returns one in place of an error.
    if route_type not in (RTN_UNICAST, RTN_LOCAL):
        return None
    prefsrc = ipaddress.ip_address(attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else None
    return RouteLookup(
        src=requested_src if requested_src is not None else prefsrc,
        oif=struct.unpack("=I", attrs[RTA_OIF])[0] if len(attrs.get(RTA_OIF, b"")) == 4 else None,
        gateway=ipaddress.ip_address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
        table=struct.unpack("=I", attrs[RTA_TABLE])[0] if len(attrs.get(RTA_TABLE, b"")) == 4 else table,
    )


class RouteResolver:
    """Route lookups over one NETLINK_ROUTE socket, opened in the caller's network namespace."""

    def __init__(self, timeout: float = LOOKUP_TIMEOUT) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> RouteResolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def lookup(self, dst: IPAddress | str, src: IPAddress | str | None = None,
               mark: int | None = None, oif: int | None = None) -> RouteLookup | None:
        """Ask the kernel how it would send a packet to ``dst``; None if it has no route.

        ``src`` requests a route from that local address (source-based
        rules apply), ``mark`` sets the packet mark (fwmark rules apply),
        ``oif`` binds to an interface as SO_BINDTODEVICE does. Raises
        RouteLookupError on other kernel errors and TimeoutError when no
        reply comes within the timeout.
        """
        dst = ipaddress.ip_address(dst)
        src = ipaddress.ip_address(src) if src is not None else None
        self._seq = self._seq % 0xFFFFFFFF + 1
        self._sock.send(encode_route_request(dst, self._seq, src=src, mark=mark, oif=oif))

        # Bounded: only a stale reply to an earlier, timed-out request is skipped.
        for _ in range(16):
            found, lookup = parse_route_reply(self._sock.recv(65536), self._seq, requested_src=src)
            if found:
                return lookup
        raise RouteLookupError(errno.EPROTO, "no reply with the request's sequence number")


def route_lookup(dst: IPAddress | str, mark: int | None = None, oif: int | None = None,
                 src: IPAddress | str | None = None) -> tuple | None:
    """Return ``(src, oif, gateway)`` of the kernel's route to ``dst``, or None without a route.

    Opens a socket per call; hold a RouteResolver for repeated lookups.
    """
    with RouteResolver() as resolver:
        found = resolver.lookup(dst, src=src, mark=mark, oif=oif)
    return None if found is None else (found.src, found.oif, found.gateway)


# Ranking

RouteLookupFunction = Callable[[IPAddress, IPAddress | None], RouteLookup | None]


@dataclass(frozen=True)
class PathCandidate:
    """A (local, remote) address pair to try, with the kernel's route for it."""

    local: IPAddress
    remote: IPAddress
    ifindex: int  # the link that carries ``local``
    route: RouteLookup
    rank: tuple = field(default=(), compare=False)  # rank_paths' sort key, lower is better

    @property
    def leaves_own_link(self) -> bool:
        """Whether packets from ``local`` leave through the link that carries it."""
        return self.route.oif == self.ifindex


def _as_network(value: str | IPAddress | IPNetwork) -> IPNetwork:
    return ipaddress.ip_network(value, strict=False)


def _config_index(address: IPAddress, networks: Sequence[IPNetwork]) -> int | None:
    """Return the position of the first ``local_addrs`` entry that contains ``address``."""
    for index, network in enumerate(networks):
        if address.version == network.version and address in network:
            return index
    return None


def _is_endpoint_address(address: IPAddress) -> bool:
    return not (address.is_link_local or address.is_loopback or address.is_multicast
                or address.is_unspecified)


def select_local_addresses(local_addrs: Sequence[str | IPAddress | IPNetwork],
                           addresses: Iterable[Address], links: Mapping[int, Link],
                           marks: Mapping[int, UplinkMark]) -> list[tuple[int | None, Address]]:
    """Return the (config index, address) pairs of the local addresses a connection may use.

    An address qualifies when it is usable (not tentative unless optimistic,
    not DAD-failed), not link-local, loopback or multicast, and its link is
    up. With ``local_addrs`` set, only the addresses it contains qualify.
    Without it, udev marks decide: links marked RMOBIKE_UPLINK=0 never
    qualify, and once any link is marked RMOBIKE_UPLINK=1 only marked links do.
    """
    networks = [_as_network(entry) for entry in local_addrs]
    selected = []
    for address in addresses:
        link = links.get(address.ifindex)
        if link is None or not link.is_up or link.loopback:
            continue
        if not address.usable or not _is_endpoint_address(address.address):
            continue
        index = _config_index(address.address, networks)
        if networks and index is None:
            continue
        selected.append((index, address))

    if networks:
        return selected
    mark_of = {ifindex: marks.get(ifindex, UplinkMark()) for ifindex in links}
    selected = [(index, a) for index, a in selected if mark_of[a.ifindex].uplink is not False]
    if any(mark_of[a.ifindex].uplink for _, a in selected):
        selected = [(index, a) for index, a in selected if mark_of[a.ifindex].uplink]
    return selected


def rank_paths(local_addrs: Sequence[str | IPAddress | IPNetwork],
               remote_addrs: Sequence[IPAddress | str],
               addresses: Iterable[Address], links: Mapping[int, Link],
               marks: Mapping[int, UplinkMark], lookup: RouteLookupFunction) -> list[PathCandidate]:
    """Order the (local, remote) pairs to try for a connection, best first.

    ``local_addrs`` is the connection's configuration (addresses or
    prefixes; empty means any), ``remote_addrs`` the peer's addresses in
    preference order. ``lookup(remote, local)`` is the kernel's route lookup
    from ``local`` (or, with None, the kernel's own choice of source). A pair
    qualifies when its addresses are of one family and the kernel has a
    route for it. The order, each step breaking ties of the one before:

    1. position in ``local_addrs`` (config priority);
    2. the route leaves through the local address's own link. A pair whose
       packets would leave through another link usually lacks a policy
       route, and the provider there is likely to drop its source address;
    3. udev RMOBIKE_PRIORITY of the local link, lower first;
    4. not deprecated. A deprecated address is dropped for a remote when a
       non-deprecated one reaches it, and ranked last otherwise;
    5. not optimistic (DAD still running);
    6. not temporary (RFC 4941 addresses expire, a poor choice for an IKE SA);
    7. the source the kernel itself picks for that remote;
    8. position in ``remote_addrs``.
    """
    remotes = [ipaddress.ip_address(remote) for remote in remote_addrs]
    selected = select_local_addresses(local_addrs, addresses, links, marks)

    candidates = []
    for remote_index, remote in enumerate(remotes):
        kernel_choice = lookup(remote, None)
        pairs = []
        for config_index, address in selected:
            if address.address.version != remote.version:
                continue
            route = lookup(remote, address.address)
            if route is None:
                continue
            candidate = PathCandidate(address.address, remote, address.ifindex, route)
            rank = _rank(candidate, address, config_index, marks, kernel_choice, remote_index)
            pairs.append((rank, address, dataclasses.replace(candidate, rank=rank)))

        if any(not address.deprecated for _, address, _ in pairs):
            pairs = [pair for pair in pairs if not pair[1].deprecated]
        candidates += [(rank, candidate) for rank, _, candidate in pairs]

    candidates.sort(key=lambda item: item[0])
    return [candidate for _, candidate in candidates]


def _rank(candidate: PathCandidate, address: Address, config_index: int | None,
          marks: Mapping[int, UplinkMark], kernel_choice: RouteLookup | None,
          remote_index: int) -> tuple:
    priority = marks.get(address.ifindex, UplinkMark()).priority
    kernel_picks_it = kernel_choice is not None and kernel_choice.src == address.address
    return (config_index or 0,
            not candidate.leaves_own_link,
            DEFAULT_PRIORITY if priority is None else priority,
            address.deprecated,
            address.tentative,
            address.temporary,
            not kernel_picks_it,
            remote_index,
            address.ifindex, address.address.packed)
