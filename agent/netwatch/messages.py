"""rtnetlink on the wire: split and decode received messages, encode requests.

Decoding uses pyroute2's message classes (``ifinfmsg``, ``ifaddrmsg``,
``rtmsg``, ``fibmsg``), whose fields and attribute names are the kernel's
and have stayed the same from pyroute2 0.7.2 (Debian 12) to 0.9. Headers
and requests are plain ``struct`` work so that no version-specific socket
class is needed. Constants are named as in linux/netlink.h and
linux/rtnetlink.h.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .records import IFF_LOWER_UP, Address, Link, Route, Rule

log = logging.getLogger(__name__)

# linux/netlink.h
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34

RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19

WATCHED_GROUPS = (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE,
                  RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE)

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid

_CLASSES = {
    RTM_NEWLINK: ifinfmsg, RTM_DELLINK: ifinfmsg,
    RTM_NEWADDR: ifaddrmsg, RTM_DELADDR: ifaddrmsg,
    RTM_NEWROUTE: rtmsg, RTM_DELROUTE: rtmsg,
    RTM_NEWRULE: fibmsg, RTM_DELRULE: fibmsg,
}
DELETE_TYPES = frozenset({RTM_DELLINK, RTM_DELADDR, RTM_DELROUTE, RTM_DELRULE})


class NetlinkDecodeError(ValueError):
    """Received bytes are not a sequence of well-formed netlink messages."""


@dataclass(frozen=True)
class Message:
    """One received netlink message.

    ``record`` is the decoded object for RTM_NEW*/RTM_DEL* messages that the
    watcher follows, else None (also for messages it skips on purpose, such
    as per-family link messages). ``error`` is the errno of an NLMSG_ERROR
    (0 for an acknowledgement).
    """

    type: int
    flags: int
    seq: int
    pid: int  # nlmsg_pid: our port id on dump replies, the sender's on notifications
    record: Link | Address | Route | Rule | None = None
    error: int = 0

    @property
    def deleted(self) -> bool:
        return self.type in DELETE_TYPES


def bitmask_of_groups(groups: tuple[int, ...]) -> int:
    """Return the legacy bind() group mask (RTMGRP_*) for RTNLGRP_* numbers up to 32."""
    mask = 0
    for group in groups:
        if not 1 <= group <= 32:
            raise ValueError(f"group {group} does not fit the bind() mask; use NETLINK_ADD_MEMBERSHIP")
        mask |= 1 << (group - 1)
    return mask


def parse_messages(data: bytes) -> list[Message]:
    """Split one datagram into netlink messages and decode the ones the watcher follows."""
    messages = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSGHDR.size:
            raise NetlinkDecodeError(f"{len(data) - offset} trailing bytes, shorter than a header")
        length, msg_type, flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise NetlinkDecodeError(f"message length {length} at offset {offset} "
                                     f"does not fit the {len(data)}-byte datagram")
        messages.append(_decode_one(bytes(data[offset:offset + length]), msg_type, flags, seq, pid))
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return messages


def _decode_one(raw: bytes, msg_type: int, flags: int, seq: int, pid: int) -> Message:
    if msg_type == NLMSG_ERROR:
        # struct nlmsgerr starts with a negative errno (0 for an ACK).
        if len(raw) < NLMSGHDR.size + 4:
            raise NetlinkDecodeError("NLMSG_ERROR without an error code")
        (error,) = struct.unpack_from("=i", raw, NLMSGHDR.size)
        return Message(msg_type, flags, seq, pid, error=-error)

    cls = _CLASSES.get(msg_type)
    if cls is None:
        return Message(msg_type, flags, seq, pid)
    msg = cls(raw)
    msg.decode()
    return Message(msg_type, flags, seq, pid, record=_CONVERTERS[cls](msg))


def link_from_msg(msg: ifinfmsg) -> Link | None:
    # The kernel also sends RTM_NEWLINK for AF_INET6 (IPv6 device settings) and
    # AF_BRIDGE (bridge ports); they lack IFLA_OPERSTATE and describe no link change.
    if msg["family"] != socket.AF_UNSPEC:
        return None
    flags = msg["flags"]
    carrier = msg.get_attr("IFLA_CARRIER")
    if carrier is None:
        carrier = flags & IFF_LOWER_UP
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    return Link(ifindex=msg["index"], name=msg.get_attr("IFLA_IFNAME") or "",
                flags=flags, operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
                carrier=bool(carrier), kind=kind, mac=msg.get_attr("IFLA_ADDRESS"))


def address_from_msg(msg: ifaddrmsg) -> Address | None:
    # On a point-to-point IPv4 link IFA_ADDRESS is the peer and IFA_LOCAL the
    # local address; elsewhere both are equal or IFA_LOCAL is absent.
    text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if text is None:
        return None
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg["flags"]  # ifa_flags, 8 bits, before IFA_FLAGS (Linux 3.14)
    return Address(ifindex=msg["index"], address=ipaddress.ip_address(text),
                   prefixlen=msg["prefixlen"], flags=flags, scope=msg["scope"])


def _network(family: int, text: str | None, prefixlen: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if text is None:
        text = "0.0.0.0" if family == socket.AF_INET else "::"
    return ipaddress.ip_network(f"{text}/{prefixlen}", strict=False)


def _optional_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return ipaddress.ip_address(text) if text else None


def route_from_msg(msg: rtmsg) -> Route | None:
    family = msg["family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None

    nexthops = []
    for hop in msg.get_attr("RTA_MULTIPATH") or ():
        nexthops.append((hop["oif"], _optional_ip(hop.get_attr("RTA_GATEWAY"))))

    table = msg.get_attr("RTA_TABLE") or msg["table"]
    return Route(family=family, table=table,
                 dst=_network(family, msg.get_attr("RTA_DST"), msg["dst_len"]),
                 tos=msg["tos"], priority=msg.get_attr("RTA_PRIORITY") or 0,
                 protocol=msg["proto"], type=msg["type"], scope=msg["scope"], flags=msg["flags"],
                 oif=msg.get_attr("RTA_OIF"),
                 gateway=_optional_ip(msg.get_attr("RTA_GATEWAY")),
                 prefsrc=_optional_ip(msg.get_attr("RTA_PREFSRC")),
                 nexthops=tuple(nexthops))


def rule_from_msg(msg: fibmsg) -> Rule | None:
    family = msg["family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    src = msg.get_attr("FRA_SRC")
    dst = msg.get_attr("FRA_DST")
    return Rule(family=family, priority=msg.get_attr("FRA_PRIORITY") or 0,
                table=msg.get_attr("FRA_TABLE") or msg["table"], action=msg["action"],
                protocol=msg.get_attr("FRA_PROTOCOL") or 0,
                src=_network(family, src, msg["src_len"]) if src else None,
                dst=_network(family, dst, msg["dst_len"]) if dst else None,
                fwmark=msg.get_attr("FRA_FWMARK"), fwmask=msg.get_attr("FRA_FWMASK"),
                iifname=msg.get_attr("FRA_IIFNAME"), oifname=msg.get_attr("FRA_OIFNAME"),
                flags=msg["flags"])


_CONVERTERS = {ifinfmsg: link_from_msg, ifaddrmsg: address_from_msg,
               rtmsg: route_from_msg, fibmsg: rule_from_msg}


def encode_message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def encode_attr(attr_type: int, payload: bytes) -> bytes:
    """Encode one struct rtattr, padded to 4 bytes."""
    length = 4 + len(payload)
    padding = b"\0" * (((length + 3) & ~3) - length)
    return struct.pack("=HH", length, attr_type) + payload + padding


# Size of the fixed header after nlmsghdr in each dump request: struct
# ifinfomsg, ifaddrmsg, rtmsg and fib_rule_hdr. All start with the family
# byte, and a dump request leaves the rest zero.
_DUMP_HEADER_SIZES = {RTM_GETLINK: 16, RTM_GETADDR: 8, RTM_GETROUTE: 12, RTM_GETRULE: 12}


def encode_dump_request(msg_type: int, family: int, seq: int) -> bytes:
    body = bytes([family]) + bytes(_DUMP_HEADER_SIZES[msg_type] - 1)
    return encode_message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body)
