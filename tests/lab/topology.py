"""Lab networks: gateways with several uplinks, a router between them, LAN hosts.

A LabSpec describes the network and ``build(spec)`` creates it from network
namespaces and veth pairs. The standard lab (``LabSpec()``) is::

    lan1 --lan0-- gw1 ==up0,up1== router ==up0,up1== gw2 --lan0-- lan2
    10.1.0.10     10.1.0.1                           10.2.0.1      10.2.0.10

Each uplink is its own subnet: a veth pair from the gateway to a bridge in the
router namespace that carries the router's address. Taking the gateway end
down therefore changes nothing that the other gateway can see, and the router
keeps routing into the dead link, as an ISP's router would. The router has
no LAN routes, so LAN traffic only crosses it inside tunnels, unless a test
calls ``route_lans_in_clear()``.

Addresses (gateway g counts from 1, uplink k from 0):

- uplink k uses 192.0.2.0/24, 198.51.100.0/24 or 203.0.113.0/24 for k = 0, 1, 2;
  gateway g gets the /26 block number g-1 of it, with the router at .1 and the
  gateway at .10 of the block (gw1: 192.0.2.10 and 198.51.100.10, router
  192.0.2.1; gw2: 192.0.2.74, router 192.0.2.65);
- IPv6 on uplink k: 2001:db8:g:k+1::/64, router ::1, gateway ::10;
- LAN g: 10.g.0.0/24 and 2001:db8:g::/64, gateway .1/::1, LAN host .10/::10;
- behind NAT, uplink k of gateway g is 10.(200+g).k.0/24 (NAT box .1,
  gateway .10), and the NAT box has the public address the gateway would have.

Each gateway routes by source address (rule ``from <uplink address>`` to table
100+k) and has one default route per uplink in the main table, with metric
100+k, so uplink 0 is preferred while its link is up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

from tests.lab.netns import Namespace, local_mac

log = logging.getLogger(__name__)

UPLINK_NETWORKS = (
    IPv4Network("192.0.2.0/24"),
    IPv4Network("198.51.100.0/24"),
    IPv4Network("203.0.113.0/24"),
)
MAX_GATEWAYS = 4  # four /26 blocks per uplink network
MAX_UPLINKS = len(UPLINK_NETWORKS)

PREFERRED_ROUTE_METRIC = 50  # below the per-uplink metrics 100+k

# Sysctls for every namespace that forwards packets, set before its interfaces
# exist so that they inherit the "default" values. ignore_routes_with_linkdown
# makes a gateway stop using the routes of an uplink that lost carrier, and
# keep_addr_on_down keeps IPv6 addresses while a link is down, as IPv4 does.
# Linux 6.1 rejects ipv6.conf.all.ignore_routes_with_linkdown with EINVAL, so
# only its default is set.
_FORWARDING_SYSCTLS: dict[str, str | int] = {
    "ipv4.ip_forward": 1,
    "ipv4.conf.all.rp_filter": 0,
    "ipv4.conf.default.rp_filter": 0,
    "ipv4.conf.all.ignore_routes_with_linkdown": 1,
    "ipv4.conf.default.ignore_routes_with_linkdown": 1,
    "ipv6.conf.all.forwarding": 1,
    "ipv6.conf.default.ignore_routes_with_linkdown": 1,
    "ipv6.conf.all.keep_addr_on_down": 1,
    "ipv6.conf.default.keep_addr_on_down": 1,
}

# Duplicate address detection would keep new IPv6 addresses unusable for about
# a second, and every lab address is unique by construction.
_NO_DAD_SYSCTLS: dict[str, str | int] = {
    "ipv6.conf.all.accept_dad": 0,
    "ipv6.conf.default.accept_dad": 0,
}

_mac_numbers = itertools.count(0x100)


# -- the description -------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySpec:
    """One gateway: how many uplinks, whether a NAT box sits in front, whether it has a LAN host."""

    uplinks: int = 2
    nat: bool = False
    lan: bool = True


@dataclass(frozen=True)
class LabSpec:
    """A lab network: the gateways, numbered gw1, gw2, ... in order, and whether IPv6 is set up."""

    gateways: tuple[GatewaySpec, ...] = (GatewaySpec(), GatewaySpec())
    ipv6: bool = True

    def __post_init__(self) -> None:
        if not 1 <= len(self.gateways) <= MAX_GATEWAYS:
            raise ValueError(f"invalid lab: {len(self.gateways)} gateways, "
                             f"expected 1 to {MAX_GATEWAYS}")
        for number, gateway in enumerate(self.gateways, start=1):
            if not 1 <= gateway.uplinks <= MAX_UPLINKS:
                raise ValueError(f"invalid lab: gw{number} has {gateway.uplinks} uplinks, "
                                 f"expected 1 to {MAX_UPLINKS}")


STANDARD = LabSpec()
"""Two gateways with two uplinks each and a LAN host behind each."""

NAT_GW2 = LabSpec(gateways=(GatewaySpec(), GatewaySpec(nat=True)))
"""The standard lab with a NAT box (nftables masquerade) in front of gw2."""


# -- the address plan ------------------------------------------------------------------


def uplink_block(gateway: int, uplink: int) -> IPv4Network:
    """Return the public /26 of uplink ``uplink`` (from 0) of gateway ``gateway`` (from 1)."""
    if not 1 <= gateway <= MAX_GATEWAYS or not 0 <= uplink < MAX_UPLINKS:
        raise ValueError(f"no address block for gateway {gateway} uplink {uplink}")
    return list(UPLINK_NETWORKS[uplink].subnets(new_prefix=26))[gateway - 1]


def uplink_block6(gateway: int, uplink: int) -> ipaddress.IPv6Network:
    """Return the /64 of uplink ``uplink`` (from 0) of gateway ``gateway`` (from 1)."""
    return ipaddress.IPv6Network(f"2001:db8:{gateway}:{uplink + 1}::/64")


def lan_network(gateway: int) -> IPv4Network:
    """Return the LAN subnet behind gateway ``gateway`` (from 1): 10.<gateway>.0.0/24."""
    return IPv4Network(f"10.{gateway}.0.0/24")


def lan_network6(gateway: int) -> ipaddress.IPv6Network:
    """Return the IPv6 LAN subnet behind gateway ``gateway`` (from 1)."""
    return ipaddress.IPv6Network(f"2001:db8:{gateway}::/64")


def nat_inside_network(gateway: int, uplink: int) -> IPv4Network:
    """Return the private subnet between a gateway and its NAT box on one uplink."""
    return IPv4Network(f"10.{200 + gateway}.{uplink}.0/24")


def _host(network: IPv4Network | ipaddress.IPv6Network, offset: int) -> IPv4Interface | IPv6Interface:
    return ipaddress.ip_interface(f"{network.network_address + offset}/{network.prefixlen}")


# -- the built network ------------------------------------------------------------------


@dataclass
class Uplink:
    """One uplink of a gateway and everything needed to break it."""

    gateway_name: str
    index: int
    namespace: Namespace
    interface: str  # in the gateway namespace, e.g. "up0"
    address: IPv4Interface  # the gateway's own address on the link
    next_hop: IPv4Address  # the router, or the NAT box behind NAT
    public_address: IPv4Address  # the address that the other gateways see
    far_namespace: Namespace  # router or NAT box: where the other veth end is
    far_interface: str
    table: int  # routing table for traffic from this uplink's address
    router_bridge: str  # the router's interface for this uplink, e.g. "br-g1u0"
    address6: IPv6Interface | None = None
    next_hop6: IPv6Address | None = None

    @property
    def name(self) -> str:
        """The uplink's label in logs, e.g. "gw1/up0"."""
        return f"{self.gateway_name}/{self.interface}"

    def route_commands(self) -> list[str]:
        """Return the ``ip`` commands that (re)install this uplink's routes; all use replace."""
        metric = 100 + self.index
        commands = [
            f"route replace default via {self.next_hop} dev {self.interface} metric {metric}",
            f"route replace default via {self.next_hop} dev {self.interface} table {self.table}",
        ]
        if self.address6 is not None:
            commands += [
                f"route replace default via {self.next_hop6} dev {self.interface} "
                f"metric {metric}",
                f"route replace default via {self.next_hop6} dev {self.interface} "
                f"table {self.table}",
            ]
        return commands


@dataclass
class Gateway:
    """A gateway namespace with its uplinks and, optionally, a LAN host and a NAT box."""

    name: str  # "gw1"
    number: int
    namespace: Namespace
    uplinks: list[Uplink] = field(default_factory=list)
    lan_interface: str = "lan0"
    lan_network: IPv4Network | None = None
    lan_address: IPv4Interface | None = None  # the gateway's address on the LAN
    lan_host: Namespace | None = None
    lan_host_address: IPv4Interface | None = None
    lan_network6: ipaddress.IPv6Network | None = None
    lan_host_address6: IPv6Interface | None = None
    nat: Namespace | None = None


@dataclass
class BlackHole:
    """nftables rules in the router that silently drop one path's packets."""

    table: str  # the inet table in the router that contains the rules
    description: str


class Topology:
    """A built lab network. ``close()`` removes all of it, and is safe to call twice."""

    def __init__(self, spec: LabSpec, router: Namespace) -> None:
        self.spec = spec
        self.router = router
        self.gateways: list[Gateway] = []
        self.namespaces: list[Namespace] = [router]
        self._cleanups: list[Callable[[], None]] = []
        self._blackhole_numbers = itertools.count()
        self.closed = False

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def gateway(self, name: str) -> Gateway:
        """Return the gateway called ``name`` ("gw1", "gw2", ...)."""
        for gateway in self.gateways:
            if gateway.name == name:
                return gateway
        raise KeyError(f"no gateway {name!r} in this lab: "
                       f"{', '.join(gateway.name for gateway in self.gateways)}")

    def uplink(self, gateway: str, index: int) -> Uplink:
        """Return uplink ``index`` of gateway ``gateway``, e.g. uplink("gw1", 0) for gw1/up0."""
        return self.gateway(gateway).uplinks[index]

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        """Register ``cleanup`` to run at ``close()``, before the namespaces go (last added runs first)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Run the cleanups and delete every namespace; raise the first error after trying all."""
        if self.closed:
            return
        self.closed = True

        errors: list[BaseException] = []
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as error:  # noqa: BLE001 - report after the rest is cleaned up
                log.exception("lab cleanup %r failed", cleanup)
                errors.append(error)
        for namespace in reversed(self.namespaces):
            try:
                namespace.delete()
            except (OSError, subprocess.SubprocessError) as error:
                log.exception("deleting namespace %s failed", namespace.name)
                errors.append(error)
        if errors:
            raise errors[0]

    # -- link, address and route events -------------------------------------------------

    def link_down(self, uplink: Uplink) -> None:
        """Set the gateway's end of ``uplink`` administratively down; its routes go with it."""
        log.info("link down: %s", uplink.name)
        uplink.namespace.run(["ip", "link", "set", uplink.interface, "down"])

    def link_up(self, uplink: Uplink) -> None:
        """Set the gateway's end of ``uplink`` up and reinstall the routes that link_down removed."""
        log.info("link up: %s", uplink.name)
        uplink.namespace.batch([f"link set {uplink.interface} up", *uplink.route_commands()])

    def carrier_down(self, uplink: Uplink) -> None:
        """Take down the far end of ``uplink``: the gateway's end stays up and shows NO-CARRIER."""
        log.info("carrier loss: %s (far end %s down)", uplink.name, uplink.far_interface)
        uplink.far_namespace.run(["ip", "link", "set", uplink.far_interface, "down"])

    def carrier_up(self, uplink: Uplink) -> None:
        """Bring the far end of ``uplink`` back up, so the gateway's end gets carrier again."""
        log.info("carrier back: %s", uplink.name)
        uplink.far_namespace.run(["ip", "link", "set", uplink.far_interface, "up"])

    def add_address(self, uplink: Uplink, address: str) -> None:
        """Add ``address`` (with prefix length, e.g. "192.0.2.20/26") to the gateway's uplink interface."""
        log.info("address add: %s on %s", address, uplink.name)
        uplink.namespace.run(["ip", "addr", "add", address, "dev", uplink.interface, "nodad"]
                             if ":" in address else
                             ["ip", "addr", "add", address, "dev", uplink.interface])

    def remove_address(self, uplink: Uplink, address: str) -> None:
        """Remove ``address`` (with prefix length) from the gateway's uplink interface."""
        log.info("address remove: %s from %s", address, uplink.name)
        uplink.namespace.run(["ip", "addr", "del", address, "dev", uplink.interface])

    def prefer_uplink(self, uplink: Uplink) -> None:
        """Change the gateway's main-table default route to leave through ``uplink``.

        The route gets metric 50, below every per-uplink default route, and
        replaces whichever route had metric 50 before.
        """
        log.info("route change: default route of %s via %s", uplink.gateway_name, uplink.name)
        commands = [f"route replace default via {uplink.next_hop} dev {uplink.interface} "
                    f"metric {PREFERRED_ROUTE_METRIC}"]
        if uplink.address6 is not None:
            commands.append(f"route replace default via {uplink.next_hop6} "
                            f"dev {uplink.interface} metric {PREFERRED_ROUTE_METRIC}")
        uplink.namespace.batch(commands)

    # -- plain routing and black holes --------------------------------------------------

    def route_lans_in_clear(self) -> None:
        """Let the router forward LAN traffic without tunnels, through each gateway's uplink 0.

        This is for testing the lab itself: with it, LAN hosts reach each
        other in cleartext, which the capture helper must then report.
        """
        commands = []
        for gateway in self.gateways:
            if gateway.lan_network is None:
                continue
            uplink = gateway.uplinks[0]
            commands.append(f"route replace {gateway.lan_network} via {uplink.public_address}")
            if gateway.lan_network6 is not None and uplink.address6 is not None:
                commands.append(f"route replace {gateway.lan_network6} "
                                f"via {uplink.address6.ip}")
        self.router.batch(commands)

    def blackhole(self, uplink: Uplink, peer: Uplink | None = None) -> BlackHole:
        """Drop, in the router, every packet that it would forward into or out of ``uplink``.

        With ``peer``, only packets between the public addresses of the two
        uplinks are dropped (IKE and ESP between them, not cleartext LAN
        traffic). No link, address or route changes, so the gateways get no
        event: only the traffic stops. Packets to the router's own addresses
        still pass, as when an ISP's network fails behind its first router.
        Undo it with ``remove_blackhole``.
        """
        # Each black hole is its own nftables table, so adding or removing one
        # is a single atomic nft transaction.
        table = f"rmb_blackhole{next(self._blackhole_numbers)}"
        rules = "".join(f"add rule inet {table} forward {match} drop\n"
                        for match in _blackhole_matches(uplink, peer))
        self.router.run(["nft", "-f", "-"], input=(
            f"add table inet {table}\n"
            f"add chain inet {table} forward {{ type filter hook forward priority -10; }}\n"
            f"{rules}"))

        description = uplink.name if peer is None else f"{uplink.name} <-> {peer.name}"
        log.info("black hole: %s", description)
        return BlackHole(table=table, description=description)

    def remove_blackhole(self, blackhole: BlackHole) -> None:
        """Delete the router's drop rules of ``blackhole``, so its path forwards again."""
        log.info("black hole removed: %s", blackhole.description)
        self.router.run(["nft", "delete", "table", "inet", blackhole.table])


def _blackhole_matches(uplink: Uplink, peer: Uplink | None) -> list[str]:
    """Return the nft match expressions for traffic through ``uplink`` (and ``peer``)."""
    if peer is None:
        return [f'iifname "{uplink.router_bridge}"', f'oifname "{uplink.router_bridge}"']

    pairs = [("ip", str(uplink.public_address), str(peer.public_address))]
    if uplink.address6 is not None and peer.address6 is not None:
        pairs.append(("ip6", str(uplink.address6.ip), str(peer.address6.ip)))

    matches = []
    for family, address, peer_address in pairs:
        matches += [f"{family} saddr {address} {family} daddr {peer_address}",
                    f"{family} saddr {peer_address} {family} daddr {address}"]
    return matches


# -- building ---------------------------------------------------------------------------


def _mac() -> str:
    return local_mac(next(_mac_numbers))


class _Commands:
    """``ip`` commands for several namespaces, run as one ``ip -batch`` per namespace and phase.

    In the lab VM (QEMU TCG on a 2-core host) one ``ip`` command took
    0.1-1.3 s, so the builder collects commands instead of running them one
    by one. The phases run in
    order: "create" makes interfaces, "up" brings every end up, "configure"
    adds addresses, rules and routes, and "rules6" adds IPv6 rules, which
    need ``ip -6``. IPv6 installs an address's prefix route only on a link
    with carrier, so routes come after both ends of every link are up.
    """

    PHASES = ("create", "up", "configure", "rules6")

    def __init__(self) -> None:
        self._commands: dict[str, dict[Namespace, list[str]]] = {
            phase: {} for phase in self.PHASES}

    def add(self, phase: str, namespace: Namespace, *commands: str) -> None:
        """Queue ``commands`` for ``namespace`` in ``phase``, after those queued before."""
        self._commands[phase].setdefault(namespace, []).extend(commands)

    def run(self) -> None:
        """Run every phase, each as one batch per namespace."""
        for phase in self.PHASES:
            options = ("-6",) if phase == "rules6" else ()
            for namespace, commands in self._commands[phase].items():
                namespace.batch(commands, options=options)


def build(spec: LabSpec = STANDARD) -> Topology:
    """Create the network that ``spec`` describes; on failure, remove what was created."""
    router = Namespace("router")
    topology = Topology(spec, router)
    try:
        _build(topology)
    except BaseException:
        with contextlib.suppress(Exception):
            topology.close()
        raise
    return topology


def _build(topology: Topology) -> None:
    spec = topology.spec
    topology.router.sysctl(_NO_DAD_SYSCTLS | _FORWARDING_SYSCTLS)
    commands = _Commands()

    for number, gateway_spec in enumerate(spec.gateways, start=1):
        gateway = Gateway(name=f"gw{number}", number=number,
                          namespace=_new_namespace(topology, f"gw{number}", forwarding=True))
        if gateway_spec.nat:
            gateway.nat = _new_namespace(topology, f"nat{number}", forwarding=True)
        for index in range(gateway_spec.uplinks):
            gateway.uplinks.append(_plan_uplink(topology, commands, gateway, index))
        if gateway.nat is not None:
            _plan_nat_routing(commands, gateway)
        if gateway_spec.lan:
            _plan_lan(topology, commands, gateway)
        topology.gateways.append(gateway)

    commands.run()
    for gateway in topology.gateways:
        if gateway.nat is not None:
            gateway.nat.run(["nft", "add table ip rmb_nat; "
                             "add chain ip rmb_nat postrouting "
                             "{ type nat hook postrouting priority srcnat; }; "
                             'add rule ip rmb_nat postrouting oifname "out*" masquerade'])

    log.info("lab up: %s", ", ".join(
        f"{gateway.name} ({', '.join(str(uplink.public_address) for uplink in gateway.uplinks)})"
        for gateway in topology.gateways))


def _new_namespace(topology: Topology, role: str, forwarding: bool) -> Namespace:
    namespace = Namespace(role)
    topology.namespaces.append(namespace)
    sysctls = dict(_NO_DAD_SYSCTLS)
    if forwarding:
        sysctls |= _FORWARDING_SYSCTLS
    namespace.sysctl(sysctls)
    return namespace


def _plan_uplink(topology: Topology, commands: _Commands, gateway: Gateway,
                 index: int) -> Uplink:
    """Plan one gateway uplink to the router, through the NAT box if there is one."""
    router = topology.router
    near = gateway.namespace
    ipv6 = topology.spec.ipv6 and gateway.nat is None
    block = uplink_block(gateway.number, index)
    block6 = uplink_block6(gateway.number, index)
    router_address = _host(block, 1)
    public = _host(block, 10)
    port = f"g{gateway.number}u{index}"
    bridge = f"br-{port}"
    interface = f"up{index}"

    # The router's side: a bridge carrying the router's address, so that the
    # router keeps its address and routes while the port to the gateway is down.
    commands.add("create", router,
                 f"link add {bridge} address {_mac()} type bridge forward_delay 0")
    commands.add("up", router, f"link set {port} master {bridge}", f"link set {port} up",
                 f"link set {bridge} up")
    commands.add("configure", router, f"addr add {router_address} dev {bridge}")
    if ipv6:
        commands.add("configure", router, f"addr add {_host(block6, 1)} dev {bridge} nodad")

    if gateway.nat is None:
        address, next_hop = public, router_address.ip
        far_namespace, far_interface = router, port
        commands.add("create", near, f"link add {interface} address {_mac()} type veth "
                                     f"peer name {port} address {_mac()} netns {router.name}")
    else:
        # gateway --upK-- (inK) NAT box (outK) --port-- router
        inside = nat_inside_network(gateway.number, index)
        address, next_hop = _host(inside, 10), _host(inside, 1).ip
        far_namespace, far_interface = gateway.nat, f"in{index}"
        commands.add("create", gateway.nat,
                     f"link add out{index} address {_mac()} type veth peer name {port} "
                     f"address {_mac()} netns {router.name}",
                     f"link add in{index} address {_mac()} type veth peer name {interface} "
                     f"address {_mac()} netns {near.name}")
        commands.add("up", gateway.nat, f"link set out{index} up", f"link set in{index} up")
        commands.add("configure", gateway.nat, f"addr add {public} dev out{index}",
                     f"addr add {_host(inside, 1)} dev in{index}")

    uplink = Uplink(
        gateway_name=gateway.name, index=index, namespace=near, interface=interface,
        address=address, next_hop=next_hop, public_address=public.ip,
        far_namespace=far_namespace, far_interface=far_interface, table=100 + index,
        router_bridge=bridge,
        address6=_host(block6, 0x10) if ipv6 else None,
        next_hop6=_host(block6, 1).ip if ipv6 else None,
    )

    commands.add("up", near, f"link set {interface} up")
    commands.add("configure", near, f"addr add {uplink.address} dev {interface}")
    if uplink.address6 is not None:
        commands.add("configure", near, f"addr add {uplink.address6} dev {interface} nodad")
        commands.add("rules6", near, f"rule add from {uplink.address6.ip} "
                                     f"table {uplink.table} pref {1000 + index}")
    commands.add("configure", near,
                 f"rule add from {uplink.address.ip} table {uplink.table} pref {1000 + index}",
                 *uplink.route_commands())
    return uplink


def _plan_nat_routing(commands: _Commands, gateway: Gateway) -> None:
    """Plan the NAT box's routes: each inside link leaves through its own outside link."""
    nat = gateway.nat
    assert nat is not None
    for uplink in gateway.uplinks:
        index = uplink.index
        router_address = _host(uplink_block(gateway.number, index), 1).ip
        inside = nat_inside_network(gateway.number, index)
        commands.add("configure", nat,
                     f"route replace default via {router_address} dev out{index} "
                     f"table {100 + index}",
                     f"rule add iif in{index} table {100 + index} pref {1000 + index}",
                     f"rule add from {inside} table {100 + index} pref {1100 + index}")
    first_router = _host(uplink_block(gateway.number, 0), 1).ip
    commands.add("configure", nat, f"route replace default via {first_router} dev out0")


def _plan_lan(topology: Topology, commands: _Commands, gateway: Gateway) -> None:
    """Create the LAN host namespace behind ``gateway`` and plan its link."""
    number = gateway.number
    host = _new_namespace(topology, f"lan{number}", forwarding=False)
    gateway.lan_host = host
    gateway.lan_network = lan_network(number)
    gateway.lan_address = _host(gateway.lan_network, 1)
    gateway.lan_host_address = _host(gateway.lan_network, 10)
    lan = gateway.lan_interface

    commands.add("create", gateway.namespace, f"link add {lan} address {_mac()} type veth "
                                               f"peer name eth0 address {_mac()} "
                                               f"netns {host.name}")
    commands.add("up", gateway.namespace, f"link set {lan} up")
    commands.add("up", host, "link set eth0 up")
    commands.add("configure", gateway.namespace, f"addr add {gateway.lan_address} dev {lan}")
    commands.add("configure", host, f"addr add {gateway.lan_host_address} dev eth0",
                 f"route add default via {gateway.lan_address.ip}")

    if topology.spec.ipv6:
        gateway.lan_network6 = lan_network6(number)
        gateway.lan_host_address6 = _host(gateway.lan_network6, 0x10)
        gateway_address6 = _host(gateway.lan_network6, 1)
        commands.add("configure", gateway.namespace,
                     f"addr add {gateway_address6} dev {lan} nodad")
        commands.add("configure", host, f"addr add {gateway.lan_host_address6} dev eth0 nodad",
                     f"route add default via {gateway_address6.ip}")
