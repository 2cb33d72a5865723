"""The UDP sockets of rmobiked: IKE on port 500, IKE and ESP-in-UDP on port 4500.

One socket per port and address family, bound to the wildcard address, so that any local
address can carry an IKE SA and a new address needs no new socket:

- every received datagram reports the local address it was sent to (IP_PKTINFO,
  IPV6_RECVPKTINFO), because the IKE core needs it for NAT detection and replies;
- every sent datagram names its source address (sendmsg with IP_PKTINFO / IPV6_PKTINFO), so
  the IKE SA leaves from the address it uses, whatever the routing table prefers;
- the NAT-T socket sets UDP_ENCAP_ESPINUDP: the kernel takes ESP packets (RFC 3948 §2.2: a
  non-zero first word) for decryption and drops NAT-keepalives. The socket receives only IKE
  messages, which start with the four-zero-octet non-ESP marker;
- each socket carries a per-socket XFRM policy that allows everything in and out, so that IKE
  packets bypass IPsec policies whose selectors would otherwise cover the peer's address.

    sockets = IkeSockets(port=500, natt_port=4500)
    sockets.open()                                   # raises SocketError
    sockets.start(loop, on_datagram)                 # on_datagram(data, local, remote)
    sockets.send(data, ("192.0.2.10", 4500), ("198.51.100.20", 4500))
    sockets.close()
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence

from xfrm import codec
from xfrm.model import Action, Direction, Policy, Selector

logger = logging.getLogger(__name__)

Address = tuple[str, int]  # (IP address, UDP port)
DatagramHandler = Callable[[bytes, Address, Address], None]  # (data, local, remote)

# Socket options the socket module does not export (linux/in.h, linux/in6.h, linux/udp.h).
IP_PKTINFO = 8
IP_FREEBIND = 15
IP_XFRM_POLICY = 17
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
IPV6_XFRM_POLICY = 35
IPV6_FREEBIND = 78
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2

# struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
IN_PKTINFO = struct.Struct("=i4s4s")
# struct in6_pktinfo { struct in6_addr ipi6_addr; int ipi6_ifindex; }
IN6_PKTINFO = struct.Struct("=16si")

# An IKE message fits in 64 KiB (the UDP maximum); fragmented ones are far smaller.
MAX_DATAGRAM = 65535
DATAGRAMS_PER_WAKEUP = 64  # then yield to the event loop
ANCILLARY_SIZE = socket.CMSG_SPACE(IN6_PKTINFO.size)
# Send errors are logged at most once per this many seconds for each (error, peer) pair.
SEND_ERROR_LOG_INTERVAL = 10.0

# Options per family: (level, pktinfo to receive, pktinfo to send, freebind, XFRM policy).
_FAMILY_OPTIONS = {
    socket.AF_INET: (socket.IPPROTO_IP, IP_PKTINFO, IP_PKTINFO, IP_FREEBIND, IP_XFRM_POLICY),
    socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, IPV6_PKTINFO, IPV6_FREEBIND,
                      IPV6_XFRM_POLICY),
}
_WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


class SocketError(Exception):
    """A socket could not be opened or configured; the message names the port and the cause."""


def family_of(address: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6


def encode_pktinfo(source: str) -> tuple[int, int, bytes]:
    """Return the control message that makes sendmsg use `source` as the source address."""
    packed = ipaddress.ip_address(source).packed
    if len(packed) == 4:
        return socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, packed, bytes(4))
    return socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(packed, 0)


def decode_pktinfo(ancillary: Sequence[tuple[int, int, bytes]]) -> str | None:
    """Return the destination address that a received datagram's pktinfo reports, or None."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            _, _, destination = IN_PKTINFO.unpack_from(data)
            return str(ipaddress.IPv4Address(destination))
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= IN6_PKTINFO.size:
            destination, _ = IN6_PKTINFO.unpack_from(data)
            return str(ipaddress.IPv6Address(destination))
    return None


def bypass_policy(family: int, direction: Direction) -> bytes:
    """Return the xfrm_userpolicy_info of a per-socket policy that allows all traffic.

    A per-socket policy takes precedence over the main policy table for the socket's packets,
    so an allow policy without templates sends and receives them in clear.
    """
    policy = Policy(Selector.any(family), direction, action=Action.ALLOW)
    return codec.USERPOLICY_INFO.pack(codec.policy_info_values(policy))


def open_udp_socket(family: int, port: int, *, encap: bool, bypass: bool) -> socket.socket:
    """Open a non-blocking UDP socket on the wildcard address and `port`, configured for IKE."""
    level, receive_pktinfo, _, freebind, xfrm_policy = _FAMILY_OPTIONS[family]
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            # IPv4 goes to the IPv4 socket; mapped addresses would confuse the IKE core.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(level, receive_pktinfo, 1)
        # Sending from an address that is not (yet) configured, such as an IPv6 address
        # during duplicate address detection, needs FREEBIND.
        sock.setsockopt(level, freebind, 1)
        if encap:
            sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        if bypass:
            for direction in (Direction.IN, Direction.OUT):
                sock.setsockopt(level, xfrm_policy, bypass_policy(family, direction))
        sock.bind((_WILDCARD[family], port))
    except OSError as error:
        sock.close()
        raise SocketError(f"UDP port {port} ({_family_name(family)}): {error.strerror}") from error
    return sock


def _family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


class IkeSockets:
    """The IKE and NAT-T sockets of both address families, on an asyncio loop.

    `families` lists the address families to open; IPv6 failing to open (no IPv6 in the
    kernel) is logged and IPv4 goes on alone, but IPv4 must open. `bypass=False` leaves out
    the per-socket XFRM policies, which need CAP_NET_ADMIN.
    """

    def __init__(self, port: int = 500, natt_port: int = 4500, *,
                 families: Sequence[int] = (socket.AF_INET, socket.AF_INET6),
                 bypass: bool = True) -> None:
        self.port = port
        self.natt_port = natt_port
        self.families = tuple(families)
        self.bypass = bypass
        self._sockets: dict[tuple[int, int], socket.socket] = {}  # by (family, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: DatagramHandler | None = None
        self._error_logged_at: dict[tuple[int, str], float] = {}

    @property
    def bound_ports(self) -> dict[tuple[int, int], int]:
        """Return the port each socket is bound to, by (family, configured port)."""
        return {key: sock.getsockname()[1] for key, sock in self._sockets.items()}

    def open(self) -> None:
        """Open every socket; raises SocketError if an IPv4 socket cannot be opened."""
        for family in self.families:
            try:
                self._open_family(family)
            except SocketError as error:
                if family == socket.AF_INET:
                    self.close()
                    raise
                logger.warning("IPv6 IKE sockets not opened, continuing with IPv4 only: %s", error)

    def _open_family(self, family: int) -> None:
        opened = []
        try:
            for port, encap in ((self.port, False), (self.natt_port, True)):
                sock = open_udp_socket(family, port, encap=encap, bypass=self.bypass)
                opened.append(((family, port), sock))
        except SocketError:
            for _, sock in opened:
                sock.close()
            raise
        self._sockets.update(opened)
        logger.info("%s IKE sockets bound to UDP ports %d and %d", _family_name(family),
                    self.port, self.natt_port)

    def start(self, loop: asyncio.AbstractEventLoop, on_datagram: DatagramHandler) -> None:
        """Call `on_datagram(data, local, remote)` on `loop` for every datagram received."""
        self._loop = loop
        self._handler = on_datagram
        for (family, port), sock in self._sockets.items():
            loop.add_reader(sock.fileno(), self._on_readable, sock, port)

    def close(self) -> None:
        for sock in self._sockets.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    # --- receiving -------------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket, port: int) -> None:
        for _ in range(DATAGRAMS_PER_WAKEUP):
            try:
                data, ancillary, _flags, source = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # An ICMP error queued on the socket (ECONNREFUSED and friends) surfaces here.
                logger.debug("receive on UDP port %d: %s", port, error.strerror)
                continue
            self._deliver(data, ancillary, source, port)

    def _deliver(self, data: bytes, ancillary: list, source: tuple, port: int) -> None:
        local = decode_pktinfo(ancillary)
        if local is None:
            logger.warning("datagram from %s without pktinfo on UDP port %d, dropped", source[0], port)
            return
        try:
            self._handler(data, (local, port), (source[0], source[1]))
        except Exception:
            logger.exception("handling a datagram from %s:%d failed", source[0], source[1])

    # --- sending ---------------------------------------------------------------------------

    def send(self, data: bytes, local: Address, remote: Address) -> bool:
        """Send `data` from `local` to `remote`; return whether the kernel took it.

        `local`'s port picks the socket. A failure (no route, address gone) is logged, at
        most once per SEND_ERROR_LOG_INTERVAL for the same error and peer, and not raised,
        because IKE retransmits.
        """
        family = family_of(remote[0])
        sock = self._sockets.get((family, local[1]))
        if sock is None:
            self._log_send_error(errno.EAFNOSUPPORT, local, remote, "no socket for this port and family")
            return False
        try:
            sock.sendmsg([data], [encode_pktinfo(local[0])], 0, (remote[0], remote[1]))
        except OSError as error:
            self._log_send_error(error.errno or 0, local, remote, error.strerror or str(error))
            return False
        return True

    def _log_send_error(self, code: int, local: Address, remote: Address, reason: str) -> None:
        key = (code, remote[0])
        now = time.monotonic()
        if now - self._error_logged_at.get(key, -SEND_ERROR_LOG_INTERVAL) < SEND_ERROR_LOG_INTERVAL:
            return
        self._error_logged_at[key] = now
        logger.warning("sending from %s:%d to %s:%d failed: %s", local[0], local[1], remote[0],
                       remote[1], reason)
