"""Test support for the IKE core: peers in one process, joined by a network that tests control.

`Network` carries datagrams between `IkeEndpoint`s by IP address and keeps a fake clock. Tests
take the datagrams in flight with `take()`, then drop, duplicate, reorder, rewrite (NAT) or corrupt
them before `deliver()`. `run()` delivers everything and fires timers until nothing is left to do.
Randomness is seeded, so every run is the same.

An endpoint added under several addresses is multihomed. `blocked` black-holes host pairs in
both directions, silently. With `nat_filtering`, a NAT in `nat` lets a packet in only from a
host that the inner address sent to before (address-dependent filtering, as most NATs do).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import NameOID

from agent.ike import AuthKind, ChildConfig, EndpointSettings, IkeConfig, IkeEndpoint, Identity, TrafficSelector
from agent.ike.constants import HeaderFlag
from agent.ike.message import peek_header

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
LEFT = ("192.0.2.1", 500)
RIGHT = ("198.51.100.1", 500)
NATT_MARKER = bytes(4)


@dataclass
class Packet:
    data: bytes
    source: tuple[str, int]
    destination: tuple[str, int]

    @property
    def ike(self) -> bytes:
        """The IKE message without the non-ESP marker."""
        natt = self.source[1] == 4500 or self.destination[1] == 4500  # a NAT may have changed one port
        return self.data[4:] if natt else self.data

    @property
    def exchange_type(self) -> int:
        return peek_header(self.ike)[4]

    @property
    def is_response(self) -> bool:
        return bool(peek_header(self.ike)[5] & HeaderFlag.RESPONSE)

    @property
    def message_id(self) -> int:
        return peek_header(self.ike)[6]


@dataclass
class Network:
    endpoints: dict[str, IkeEndpoint] = field(default_factory=dict)
    in_flight: list[Packet] = field(default_factory=list)
    now: float = 0.0
    sent: list[Packet] = field(default_factory=list)
    # Address translation applied to packets *from* an inner address: inner -> outer.
    nat: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    nat_filtering: bool = False
    nat_mappings: set[tuple[tuple[str, int], str]] = field(default_factory=set)  # (outer, remote host)
    blocked: set[frozenset[str]] = field(default_factory=set)  # host pairs whose packets vanish
    dropped: list[Packet] = field(default_factory=list)

    def add(self, host: str, endpoint: IkeEndpoint) -> IkeEndpoint:
        self.endpoints[host] = endpoint
        return endpoint

    def collect(self) -> None:
        """Move what the endpoints want to send into `in_flight`, applying NAT."""
        for endpoint in self.endpoints.values():
            for data, local, remote in endpoint.datagrams_to_send(self.now):
                packet = Packet(data, self.nat.get(local, local), remote)
                if local in self.nat:
                    self.nat_mappings.add((packet.source, remote[0]))
                self.sent.append(packet)
                self.in_flight.append(packet)

    def take(self) -> list[Packet]:
        """Return and remove the packets in flight."""
        self.collect()
        packets, self.in_flight = self.in_flight, []
        return packets

    def block(self, a: str, b: str) -> None:
        """Drop every packet between hosts `a` and `b` from now on, in both directions."""
        self.blocked.add(frozenset((a, b)))

    def unblock(self, a: str, b: str) -> None:
        self.blocked.discard(frozenset((a, b)))

    def _passes(self, packet: Packet) -> bool:
        if frozenset((packet.source[0], packet.destination[0])) in self.blocked:
            return False
        if self.nat_filtering and packet.destination in self.nat.values():
            return (packet.destination, packet.source[0]) in self.nat_mappings
        return True

    def deliver(self, packets: list[Packet]) -> None:
        for packet in packets:
            if not self._passes(packet):
                self.dropped.append(packet)
                continue
            destination = self._untranslate(packet.destination)
            endpoint = self.endpoints.get(destination[0])
            if endpoint is not None:
                endpoint.receive_datagram(packet.data, destination, packet.source, self.now)

    def _untranslate(self, address):
        for inner, outer in self.nat.items():
            if outer == address:
                return inner
        return address

    def step(self, rounds: int = 1) -> None:
        """Deliver what is in flight, `rounds` times (each round delivers the previous responses)."""
        for _ in range(rounds):
            self.deliver(self.take())

    def flush(self, rounds: int = 1000) -> None:
        """Deliver until no packet is left, without moving the clock."""
        for _ in range(rounds):
            packets = self.take()
            if not packets:
                return
            self.deliver(packets)
        raise AssertionError(f"still exchanging packets after {rounds} rounds")

    def advance(self, seconds: float) -> None:
        """Move the clock and fire every timer that comes due, delivering what they send."""
        until = self.now + seconds
        for _ in range(1000):
            due = [t for t in (e.next_timer() for e in self.endpoints.values()) if t is not None and t <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for endpoint in self.endpoints.values():
                timer = endpoint.next_timer()
                if timer is not None and timer <= self.now:
                    endpoint.handle_timer(self.now)
            self.flush()
        self.now = until

    def run(self, seconds: float = 1.0) -> None:
        self.flush()
        self.advance(seconds)


def seeded(seed: int):
    return random.Random(seed).randbytes


def make_endpoint(configs=(), seed=1, **settings) -> IkeEndpoint:
    return IkeEndpoint(configs, random=seeded(seed), wall_clock=lambda: NOW,
                       settings=EndpointSettings(**settings) if settings else None)


# --- configurations ---------------------------------------------------------------------------

LEFT_NET = "10.1.0.0/16"
RIGHT_NET = "10.2.0.0/16"


def child_pair(name="net", left_net=LEFT_NET, right_net=RIGHT_NET, **options):
    """Return mirrored (left, right) CHILD_SA configs."""
    left = ChildConfig(name, (TrafficSelector.from_network(left_net),), (TrafficSelector.from_network(right_net),), **options)
    right = ChildConfig(name, (TrafficSelector.from_network(right_net),), (TrafficSelector.from_network(left_net),), **options)
    return left, right


def psk_pair(left_options=None, right_options=None, children=None, psk=b"correct horse battery staple"):
    """Return (left, right) IkeConfigs authenticating with a PSK."""
    left_child, right_child = children or child_pair()
    left = IkeConfig("gw", Identity.from_string("@left.example"), Identity.from_string("@right.example"), psk=psk,
                     children=(left_child,), **(left_options or {}))
    right_psk = (right_options or {}).pop("psk", psk)
    right = IkeConfig("gw", Identity.from_string("@right.example"), Identity.from_string("@left.example"),
                      psk=right_psk, children=(right_child,), **(right_options or {}))
    return left, right


@dataclass
class Pki:
    ca_key: object
    ca: x509.Certificate
    keys: dict
    certs: dict


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rmobike test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(hosts=("left.example", "right.example"), key_factory=None) -> Pki:
    """Create a CA and one end-entity certificate per host name (dNSName SAN)."""
    key_factory = key_factory or (lambda: ec.generate_private_key(ec.SECP256R1()))
    ca_key = key_factory()
    # EdDSA signs the whole certificate, without a separate hash.
    digest = None if isinstance(ca_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    start, end = NOW - timedelta(days=1), NOW + timedelta(days=30)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("rmobike test CA"))
        .issuer_name(_name("rmobike test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, digest)
    )
    keys, certs = {}, {}
    for serial, host in enumerate(hosts, start=2):
        key = key_factory()
        certs[host] = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, digest)
        )
        keys[host] = key
    return Pki(ca_key, ca, keys, certs)


def cert_pair(pki: Pki, left_options=None, right_options=None, remote_ids=True):
    """Return (left, right) IkeConfigs authenticating with certificates from `pki`."""
    left_child, right_child = child_pair()

    def config(me, peer, child, options):
        return IkeConfig("gw", Identity.from_string(me), Identity.from_string(peer) if remote_ids else None,
                         auth=AuthKind.PUBKEY, certificate=pki.certs[me], private_key=pki.keys[me], cas=(pki.ca,),
                         children=(child,), **(options or {}))

    return (config("left.example", "right.example", left_child, left_options),
            config("right.example", "left.example", right_child, right_options))


def connect(left_config, right_config, network=None, seed=1, right_settings=None):
    """Create both endpoints on a network and start left -> right; return (network, left, right, id)."""
    network = network or Network()
    left = network.add(LEFT[0], make_endpoint(seed=seed))
    right = network.add(RIGHT[0], make_endpoint([right_config], seed=seed + 100, **(right_settings or {})))
    ike_sa = left.initiate(left_config, LEFT, RIGHT, network.now)
    return network, left, right, ike_sa


# --- mobility: multihomed peers ------------------------------------------------------------------

LEFT2 = "192.0.2.2"
RIGHT2 = "198.51.100.2"


@dataclass
class Peers:
    """An established IKE SA between two endpoints, with the ids each side uses for it."""

    network: Network
    left: IkeEndpoint
    right: IkeEndpoint
    left_id: int
    right_id: int

    @property
    def left_sa(self):
        return self.left.ike_sa(self.left_id)

    @property
    def right_sa(self):
        return self.right.ike_sa(self.right_id)

    def events(self):
        """Return and forget the (left, right) events."""
        return self.left.events(), self.right.events()


def multihomed_peers(left_options=None, right_options=None, *, left_hosts=(LEFT[0], LEFT2),
                     right_hosts=(RIGHT[0], RIGHT2), network=None) -> Peers:
    """Establish an IKE SA from left_hosts[0] to right_hosts[0]; both ends have every address listed.

    Left (the original initiator) has the endpoint's address list set before the IKE SA starts.
    """
    network = network or Network()
    left_config, right_config = psk_pair(left_options, right_options)
    left = make_endpoint(seed=1)
    right = make_endpoint([right_config], seed=101)
    for host in left_hosts:
        network.add(host, left)
    for host in right_hosts:
        network.add(host, right)
    left.update_local_addresses(None, left_hosts, network.now)
    right.update_local_addresses(None, right_hosts, network.now)
    left_id = left.initiate(left_config, (left_hosts[0], 500), (right_hosts[0], 500), network.now)
    network.run()
    right_id, = [sa.unique_id for sa in right.ike_sas]
    return Peers(network, left, right, left_id, right_id)


def read_notifies(packet: Packet, receiver_sa) -> list:
    """Decrypt a protected packet with the keys of the IKE SA that receives it; return its notifies."""
    from agent.ike.message import Message

    message = Message.decode(packet.ike)
    message.decrypt(packet.ike, receiver_sa.cipher)
    return message.notifies()


def notify_types(packet: Packet, receiver_sa) -> list[int]:
    return [notify.notify_type for notify in read_notifies(packet, receiver_sa)]
