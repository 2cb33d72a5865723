"""Links, addresses, routes and rules as the watcher keeps them.

Each record is an immutable snapshot of one kernel object, built from one
rtnetlink message (see ``messages``). Field names follow linux/if_link.h,
linux/if_addr.h, linux/rtnetlink.h and linux/fib_rules.h where they exist.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# linux/if.h
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_LOWER_UP = 0x10000

# linux/if_addr.h. IFA_F_TEMPORARY has the same value as IFA_F_SECONDARY:
# the bit means "temporary" on IPv6 addresses and "secondary" on IPv4 ones.
IFA_F_TEMPORARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

# linux/rtnetlink.h
RT_SCOPE_UNIVERSE = 0
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
RTM_F_CLONED = 0x200

# RFC 2863 operational states that let packets through. Drivers that never
# report a state (loopback, dummy, tun) stay at "UNKNOWN".
OPERSTATES_UP = frozenset({"UP", "UNKNOWN"})


@dataclass(frozen=True)
class Link:
    """A network interface (RTM_NEWLINK)."""

    ifindex: int
    name: str
    flags: int  # ifi_flags, IFF_*
    operstate: str  # IFLA_OPERSTATE as its RFC 2863 name, e.g. "UP", "LOWERLAYERDOWN"
    carrier: bool  # IFLA_CARRIER, or IFF_LOWER_UP on kernels without it
    kind: str | None = None  # IFLA_INFO_KIND, e.g. "veth", "xfrm"; None for physical devices
    mac: str | None = None  # IFLA_ADDRESS

    @property
    def admin_up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def is_up(self) -> bool:
        """Whether the link can carry packets: up, with carrier, operationally up."""
        return self.admin_up and self.carrier and self.operstate in OPERSTATES_UP


@dataclass(frozen=True)
class Address:
    """An IP address on a link (RTM_NEWADDR)."""

    ifindex: int
    address: IPAddress
    prefixlen: int
    flags: int  # IFA_FLAGS (32 bits), IFA_F_*
    scope: int  # ifa_scope, RT_SCOPE_*

    @property
    def key(self) -> tuple[int, IPAddress, int]:
        return (self.ifindex, self.address, self.prefixlen)

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def optimistic(self) -> bool:
        return bool(self.flags & IFA_F_OPTIMISTIC)

    @property
    def dadfailed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)

    @property
    def deprecated(self) -> bool:
        return bool(self.flags & IFA_F_DEPRECATED)

    @property
    def temporary(self) -> bool:
        return self.address.version == 6 and bool(self.flags & IFA_F_TEMPORARY)

    @property
    def usable(self) -> bool:
        """Whether the address can be a packet's source now.

        A tentative address cannot, unless it is optimistic (RFC 4429 §3.1
        allows sending from it while DAD runs); an address that failed DAD
        never can. A deprecated address still can: ranking puts it last.
        """
        if self.dadfailed:
            return False
        return not self.tentative or self.optimistic


@dataclass(frozen=True)
class Route:
    """A route in any table except the local one (RTM_NEWROUTE)."""

    family: int
    table: int  # RTA_TABLE, because rtm_table cannot carry table ids above 255
    dst: IPNetwork
    tos: int
    priority: int  # RTA_PRIORITY, the metric
    protocol: int  # rtm_protocol, RTPROT_*
    type: int  # rtm_type, RTN_*
    scope: int
    flags: int = 0  # rtm_flags, RTM_F_*
    oif: int | None = None  # RTA_OIF; None for a multipath route
    gateway: IPAddress | None = None
    prefsrc: IPAddress | None = None
    nexthops: tuple[tuple[int, IPAddress | None], ...] = ()  # RTA_MULTIPATH (oif, gateway)

    @property
    def key(self) -> tuple:
        """The fields that name one route for the kernel, so a replacement has the same key.

        IPv6 allows several routes with one prefix and metric through
        different devices (fe80::/64 on every link), so its key adds the oif.
        """
        oif = self.oif if self.family == socket.AF_INET6 else None
        return (self.family, self.table, self.dst, self.tos, self.priority, oif)

    @property
    def oifs(self) -> frozenset[int]:
        """Every output interface of the route, multipath included."""
        found = {oif for oif, _ in self.nexthops}
        if self.oif is not None:
            found.add(self.oif)
        return frozenset(found)


@dataclass(frozen=True)
class Rule:
    """A routing policy rule, as `ip rule` shows it (RTM_NEWRULE)."""

    family: int
    priority: int  # FRA_PRIORITY
    table: int  # FRA_TABLE
    action: int  # FR_ACT_*
    protocol: int = 0  # FRA_PROTOCOL
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    iifname: str | None = None
    oifname: str | None = None
    flags: int = 0  # FIB_RULE_* flags, e.g. FIB_RULE_INVERT

    @property
    def key(self) -> Rule:
        # The kernel keeps two rules apart by every field, so the record is its own key.
        return self
