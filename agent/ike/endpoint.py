"""The endpoint: the object a UDP driver calls. It owns every IKE SA of this host.

A driver uses it like this (aioquic style, with no I/O inside):

    endpoint = IkeEndpoint([config], random=os.urandom, wall_clock=lambda: datetime.now(timezone.utc))
    ike_sa = endpoint.initiate(config, local=("192.0.2.1", 500), remote=("198.51.100.1", 500), now=loop.time())
    ...on every datagram:   endpoint.receive_datagram(data, local, remote, loop.time())
    ...then always:         for data, local, remote in endpoint.datagrams_to_send(): sock.sendto(...)
                            while (event := endpoint.next_event()) is not None: handle(event)
                            arm a timer for endpoint.next_timer(); when it fires: endpoint.handle_timer(now)

`local` and `remote` are (address, port) pairs. Datagrams on the NAT-T port (4500 by default)
carry the non-ESP marker (RFC 3948 §2.2): the endpoint strips it on receipt, drops datagrams
without it (ESP, NAT keepalives), and adds it to what it sends from that port.

As responder, the endpoint handles IKE_SA_INIT requests itself: it picks a config by address,
demands a COOKIE (RFC 7296 §2.6) once more than `half_open_limit` IKE SAs are half-open, and
only then creates an IKE SA.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import itertools
import logging
import struct
from collections import Counter, deque
from datetime import datetime
from typing import Callable, Iterable

# Import order matters: responders registered later are tried first (exchange.register_responder).
from . import create_child_sa, ike_auth, informational, mobike, switch, redirect  # noqa: F401  (register the responders)
from .child import ChildSa, ChildSaState
from .config import AuthKind, ChildConfig, EndpointSettings, IkeConfig, Identity
from .constants import NON_ESP_MARKER, ExchangeType, HeaderFlag, NotifyType, PayloadType
from .errors import AuthenticationFailed, ProtocolError
from .events import Address, Event, IkeSaDeleted
from .ike_sa_init import IkeSaInitInitiator, respond_to_ike_sa_init, packed_address
from .message import Message, peek_header
from .payloads import Notify
from .proposal import select_proposal
from .sa import ZERO_SPI, IkeSa, IkeSaState

logger = logging.getLogger(__name__)


def _log(sa: "IkeSa", level: int, message: str, *args) -> None:
    sa.log(level, message, *args, via=logger)


SpiAllocator = Callable[[str, str], int]  # (local address, remote address) -> inbound ESP SPI
_COOKIE_VERSION = struct.Struct("!H")


class IkeEndpoint:
    """All IKE SAs of one host, the responder dispatcher, and the driver's API."""

    def __init__(
        self,
        configs: Iterable[IkeConfig] = (),
        *,
        random: Callable[[int], bytes],
        allocate_spi: SpiAllocator | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        settings: EndpointSettings | None = None,
    ):
        """`random(n)` returns n random octets; `allocate_spi` returns a free inbound ESP SPI
        (the kernel's XFRM_MSG_ALLOCSPI in the daemon; by default drawn from `random`);
        `wall_clock()` returns the current UTC time for certificate validity checks."""
        self.configs = list(configs)
        self.random = random
        self.wall_clock = wall_clock
        self.settings = settings or EndpointSettings()
        self._allocate_spi = allocate_spi
        self.stats: Counter[str] = Counter()
        self._sas: dict[bytes, IkeSa] = {}  # by this side's SPI
        self._by_id: dict[int, IkeSa] = {}
        self._half_open: dict[tuple, IkeSa] = {}  # by (peer address, SPIi), to spot retransmissions
        self._half_open_keys: dict[IkeSa, tuple] = {}
        self._by_peer: dict[tuple, set[IkeSa]] = {}  # by (config name, peer identity), for INITIAL_CONTACT
        self._spis_in_use: set[int] = set()
        self._out: list[tuple[bytes, Address, Address]] = []
        self._events: deque[Event] = deque()
        self._timers: list[tuple[float, int, IkeSa]] = []
        self._timer_sequence = itertools.count()
        # IKE SAs whose deadline may have changed. A dict keeps them in insertion order, so
        # timers due at the same moment fire in a reproducible order; a set would order them by
        # memory address, and seeded tests would not repeat.
        self._dirty: dict[IkeSa, None] = {}
        self._unique_ids = itertools.count(1)
        self._reqids = itertools.count(1)
        self._cookie_secrets: list[bytes] = []  # newest last; index = version % 2**16
        self._cookie_version = -1
        self._cookie_rotate_at = 0.0
        # This host's addresses for MOBIKE address lists, None until the driver gives them.
        self.local_addresses: tuple[str, ...] | None = None
        self._redirects: dict[int, int] = {}  # IKE SA set up after a REDIRECT -> the one it replaces

    # --- driver API: data in and out -------------------------------------------------------------

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        """Process one UDP payload received on `local` from `remote`."""
        if local[1] == self.settings.natt_port:
            if data[:4] != NON_ESP_MARKER:
                self.count("dropped_not_ike")  # ESP or a NAT keepalive (RFC 3948 §2.2, §2.3)
                return
            data = data[4:]
        header = peek_header(data)
        if header is None:
            self.count("dropped_invalid")
            return
        spi_i, spi_r, _, _, exchange_type, flags, _, _ = header
        if exchange_type == ExchangeType.IKE_SA_INIT and not flags & HeaderFlag.RESPONSE and spi_r == ZERO_SPI:
            self._receive_init_request(data, header, local, remote, now)
        else:
            self._receive_for_sa(data, header, local, remote, now)
        self._flush_timers()

    def datagrams_to_send(self, now: float | None = None) -> list[tuple[bytes, Address, Address]]:
        """Return and forget the datagrams to send: (UDP payload, from address, to address)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """Return and forget all pending events."""
        events = list(self._events)
        self._events.clear()
        return events

    def next_timer(self) -> float | None:
        """Return when `handle_timer` must be called next, or None."""
        timers = self._timers
        while timers:
            at, _, sa = timers[0]
            if sa.timer_at == at and sa.state != IkeSaState.CLOSED:
                return at
            heapq.heappop(timers)
        return None

    def handle_timer(self, now: float) -> None:
        """Run what is due: retransmissions, rekeys, expiry of half-open IKE SAs."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, sa = heapq.heappop(timers)
            if sa.timer_at != at or sa.state == IkeSaState.CLOSED:
                continue
            sa.timer_at = None
            self.mark_dirty(sa)
            sa.handle_timer(now)
        self._flush_timers()

    # --- driver API: commands ----------------------------------------------------------------

    def initiate(self, config: IkeConfig, local: Address, remote: Address, now: float, *,
                 redirected_from: str | None = None) -> int:
        """Start an IKE SA with the config's first CHILD_SA (the others follow by CREATE_CHILD_SA).

        Return the IKE SA's unique id, which events and the other commands use.
        `redirected_from` names the gateway that redirected this connection here (RFC 5685).
        """
        if self.wall_clock is None and config.peer_auth == AuthKind.PUBKEY:
            raise ValueError(f"connection {config.name!r} checks certificates, so the endpoint needs a wall_clock")
        sa = IkeSa(self, config, initiator=True, local=local, remote=remote, spi_i=self.new_ike_spi(),
                   state=IkeSaState.CONNECTING)
        if redirected_from is not None:
            mobike.state(sa).redirected_from = redirected_from
        self._register(sa)
        self._index_peer(sa, config.remote_id)
        _log(sa, logging.INFO, "initiating IKE SA from %s:%d", local[0], local[1])
        sa.start(IkeSaInitInitiator(sa), now)
        self._flush_timers()
        return sa.unique_id

    def create_child(self, ike_sa: int, config: ChildConfig, now: float) -> None:
        from .create_child_sa import CreateChildInitiator

        sa = self._established(ike_sa)
        sa.start(CreateChildInitiator(sa, config), now)
        self._flush_timers()

    def rekey_child(self, ike_sa: int, spi_in: int, now: float) -> None:
        from .create_child_sa import ChildRekeyInitiator

        sa, child = self._child(ike_sa, spi_in)
        if child.state == ChildSaState.INSTALLED:
            sa.start(ChildRekeyInitiator(sa, child), now)
        self._flush_timers()

    def delete_child(self, ike_sa: int, spi_in: int, now: float) -> None:
        from .informational import DeleteChildInitiator

        sa, child = self._child(ike_sa, spi_in)
        sa.start(DeleteChildInitiator(sa, [child]), now)
        self._flush_timers()

    def rekey_ike(self, ike_sa: int, now: float) -> None:
        from .create_child_sa import IkeRekeyInitiator

        sa = self._established(ike_sa)
        sa.start(IkeRekeyInitiator(sa), now)
        self._flush_timers()

    def delete_ike(self, ike_sa: int, now: float) -> None:
        from .informational import RequestedDeleteIkeInitiator

        sa = self.ike_sa(ike_sa)
        if sa.state in (IkeSaState.CONNECTING, IkeSaState.HALF_OPEN):
            sa.close(now, IkeSaDeleted(sa.unique_id, sa.name, by_peer=False))
        else:
            sa.start(RequestedDeleteIkeInitiator(sa), now)
        self._flush_timers()

    def check_liveness(self, ike_sa: int, now: float, suspect_after: float | None = None) -> None:
        """Send an empty INFORMATIONAL request (RFC 7296 §1.4).

        `suspect_after` shortens the time after which the unanswered check makes the path
        suspect (`PathSuspect`, probing), for a driver that has already seen the path go quiet.
        """
        from .informational import LivenessInitiator

        sa = self._established(ike_sa)
        if suspect_after is not None:
            mobike.state(sa).suspect_after = suspect_after
        sa.start(LivenessInitiator(sa), now)
        self._flush_timers()

    # --- driver API: mobility (mobike.py, switch.py) -----------------------------------------------

    def update_local_addresses(self, ike_sa: int | None, addresses: Iterable[str] | None, now: float) -> None:
        """Set this host's usable addresses; MOBIKE IKE SAs announce a changed list (RFC 4555 §3.6).

        With `ike_sa` None the list applies to every IKE SA without a list of its own, and to
        new ones. A list for one IKE SA overrides it there; None removes that override.
        """
        if ike_sa is not None:
            mobike.update_local_addresses(self.ike_sa(ike_sa), addresses, now)
            self._flush_timers()
            return
        before = {sa: mobike.local_address_list(sa) for sa in self._by_id.values() if sa.mobike}
        self.local_addresses = None if addresses is None else tuple(str(ipaddress.ip_address(a)) for a in addresses)
        for sa, addresses_before in before.items():
            mobike.announce_if_changed(sa, addresses_before, now)
        self._flush_timers()

    def change_path(self, ike_sa: int, local: str, remote: str, now: float, reason: str = "") -> None:
        """Move the IKE SA to the path `local` -> `remote` now (original initiator only).

        The update goes out from the new path at once, and a request already outstanding is sent
        there too. Raises ValueError when this side cannot move the IKE SA.
        """
        mobike.change_path(self._established(ike_sa), local, remote, now, reason)
        self._flush_timers()

    def probe_paths(self, ike_sa: int, candidates: Iterable[tuple[str, str]], now: float) -> None:
        """Send on all (local, remote) candidate paths and move to the first that carries a response."""
        mobike.probe_paths(self._established(ike_sa), candidates, now)
        self._flush_timers()

    def set_path_candidates(self, ike_sa: int, candidates: Iterable[tuple[str, str]]) -> None:
        """Give the ranked (local, remote) pairs to probe when the current path falls silent."""
        mobike.set_candidates(self.ike_sa(ike_sa), candidates)

    def switch_to(self, ike_sa: int, local: str, now: float, reason: str = "") -> None:
        """Move the IKE SA to this host's address `local`, in either role (see switch.py).

        As original responder this emits `PrepareInbound` before the request leaves.
        """
        switch.switch_to(self._established(ike_sa), local, now, reason)
        self._flush_timers()

    # --- inspection ----------------------------------------------------------------------------

    def ike_sa(self, ike_sa: int) -> IkeSa:
        try:
            return self._by_id[ike_sa]
        except KeyError:
            raise KeyError(f"no IKE SA with id {ike_sa}") from None

    @property
    def ike_sas(self) -> list[IkeSa]:
        return list(self._by_id.values())

    def _established(self, ike_sa: int) -> IkeSa:
        sa = self.ike_sa(ike_sa)
        if sa.state != IkeSaState.ESTABLISHED:
            raise ValueError(f"IKE SA {ike_sa} is {sa.state.value}, not established")
        return sa

    def _child(self, ike_sa: int, spi_in: int) -> tuple[IkeSa, ChildSa]:
        sa = self._established(ike_sa)
        child = sa.children.get(spi_in)
        if child is None:
            raise KeyError(f"IKE SA {ike_sa} has no CHILD_SA with inbound SPI {spi_in:08x}")
        return sa, child

    # --- used by the IKE SAs -------------------------------------------------------------------

    def count(self, name: str) -> None:
        self.stats[name] += 1

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def send(self, datagram: bytes, local: Address, remote: Address) -> None:
        if local[1] == self.settings.natt_port:
            datagram = NON_ESP_MARKER + datagram
        self._out.append((datagram, local, remote))

    def next_unique_id(self) -> int:
        return next(self._unique_ids)

    def next_reqid(self) -> int:
        return next(self._reqids)

    def new_ike_spi(self) -> bytes:
        """Draw a non-zero IKE SPI not used by another IKE SA here (RFC 7296 §2.6)."""
        while True:
            spi = self.random(8)
            if spi != ZERO_SPI and spi not in self._sas:
                return spi

    def allocate_spi(self, local_host: str, remote_host: str) -> int:
        """Return an inbound ESP SPI; values below 256 are reserved (RFC 4303 §2.1)."""
        if self._allocate_spi is not None:
            return self._allocate_spi(local_host, remote_host)
        while True:
            spi = int.from_bytes(self.random(4), "big")
            if spi >= 256 and spi not in self._spis_in_use:
                self._spis_in_use.add(spi)
                return spi

    def release_spi(self, spi: int) -> None:
        self._spis_in_use.discard(spi)

    def mark_dirty(self, sa: IkeSa) -> None:
        self._dirty[sa] = None

    def has_other_sa(self, sa: IkeSa) -> bool:
        """Tell whether another IKE SA of the same connection and peer identity exists."""
        peers = self._by_peer.get((sa.config.name, sa.config.remote_id))
        return bool(peers) and (len(peers) > 1 or sa not in peers)

    def established(self, sa: IkeSa, now: float) -> None:
        """Note that an IKE SA completed IKE_AUTH; an IKE SA that a redirect replaced goes now."""
        self._forget_half_open(sa)
        if not sa.initiator:
            self._index_peer(sa, sa.remote_identity)
        replaced = self._by_id.get(self._redirects.pop(sa.unique_id, 0))
        if replaced is not None and replaced.state == IkeSaState.ESTABLISHED:
            from .informational import RequestedDeleteIkeInitiator

            _log(replaced, logging.INFO, "IKE SA %s replaces it after the redirect, deleting it", sa.tag)
            replaced.start(RequestedDeleteIkeInitiator(replaced), now)

    def follow_redirect(self, sa: IkeSa, gateway: str, now: float) -> None:
        """Set up a new IKE SA with `gateway` after a REDIRECT (RFC 5685); the old one goes later."""
        from .events import IkeSaRedirected
        from .redirect import MAX_REDIRECTS

        count = mobike.state(sa).redirect_count + 1
        if count > MAX_REDIRECTS:
            _log(sa, logging.WARNING, "not following the redirect to %s: %d redirects in a row", gateway, count - 1)
            return
        new_id = None
        try:
            same_family = ipaddress.ip_address(gateway).version == ipaddress.ip_address(sa.local[0]).version
        except ValueError:
            same_family = False  # an FQDN: the driver resolves it
        if same_family:
            port = self.settings.ike_port
            new_id = self.initiate(sa.config, (sa.local[0], port), (gateway, port), now, redirected_from=sa.remote[0])
            mobike.state(self._by_id[new_id]).redirect_count = count
            self._redirects[new_id] = sa.unique_id
        _log(sa, logging.INFO, "peer redirects this IKE SA to %s%s", gateway,
             f", IKE SA {new_id} started" if new_id is not None else ", left to the driver")
        self.emit(IkeSaRedirected(sa.unique_id, sa.name, gateway, new_id))

    def initial_contact(self, sa: IkeSa, now: float) -> None:
        """Close the other IKE SAs with this peer: it lost its state (RFC 7296 §2.4)."""
        for other in list(self._by_peer.get((sa.config.name, sa.remote_identity), ())):
            if other is not sa and other.initiator == sa.initiator:
                _log(other, logging.INFO, "peer sent INITIAL_CONTACT on %s, closing this IKE SA", sa.tag)
                other.close(now, IkeSaDeleted(other.unique_id, other.name, by_peer=True))

    def config_for_identity(self, sa: IkeSa, remote_id: Identity, local_id: Identity | None) -> IkeConfig:
        """Pick the config for an IKE_AUTH request by the peer's IDi and the IDr it requests.

        A config whose `remote_id` equals IDi wins. Otherwise a config that authenticates the
        peer by certificate may take it, and the certificate must then prove its `remote_id`.
        """
        candidates = [sa.config] + [c for c in self.configs if c is not sa.config]
        usable = [c for c in candidates if self._config_usable(c, sa, local_id)]
        for config in usable:
            if config.remote_id == remote_id:
                return config
        for config in usable:
            if config.peer_auth == AuthKind.PUBKEY:
                return config
        raise AuthenticationFailed(f"no connection accepts peer identity {remote_id}")

    def _config_usable(self, config: IkeConfig, sa: IkeSa, local_id: Identity | None) -> bool:
        if not config.matches_addresses(sa.local[0], sa.remote[0]):
            return False
        if local_id is not None and not config.is_local_identity(local_id):
            return False
        return config is sa.config or select_proposal([sa.ike_proposal], [list(p) for p in config.ike_transforms]) is not None

    def create_rekeyed_sa(self, old: IkeSa, *, initiator: bool, spi_i: bytes, spi_r: bytes, algorithms, keys, proposal,
                          now: float) -> IkeSa:
        """Create the IKE SA that replaces `old` (RFC 7296 §2.18); its CHILD_SAs move later."""
        new = IkeSa(self, old.config, initiator=initiator, local=old.local, remote=old.remote, spi_i=spi_i, spi_r=spi_r,
                    state=IkeSaState.ESTABLISHED)
        new.setup = None
        new.install_keys(algorithms, keys)
        new.ike_proposal = proposal
        for name in ("nat_local", "nat_remote", "mobike", "peer_accepts_switch", "mobike_initiator", "fragmentation",
                     "local_identity", "remote_identity"):
            setattr(new, name, getattr(old, name))
        if old.mobility is not None:
            new.mobility = old.mobility.inherit()
        new.schedule_rekey(now)
        self._register(new)
        self._index_peer(new, old.config.remote_id if new.initiator else new.remote_identity)
        self.mark_dirty(new)
        return new

    def remove(self, sa: IkeSa) -> None:
        """Forget a closed IKE SA."""
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
        self._by_id.pop(sa.unique_id, None)
        self._forget_half_open(sa)
        for peers in self._by_peer.values():
            peers.discard(sa)
        key = (sa.config.name, sa.config.remote_id if sa.initiator else sa.remote_identity)
        if not self._by_peer.get(key, True):
            del self._by_peer[key]

    # --- internals -----------------------------------------------------------------------------

    def _register(self, sa: IkeSa) -> None:
        self._sas[sa.our_spi] = sa
        self._by_id[sa.unique_id] = sa
        self.mark_dirty(sa)

    def _forget_half_open(self, sa: IkeSa) -> None:
        key = self._half_open_keys.pop(sa, None)
        if key is not None:
            del self._half_open[key]

    def _index_peer(self, sa: IkeSa, identity) -> None:
        self._by_peer.setdefault((sa.config.name, identity), set()).add(sa)

    def _flush_timers(self) -> None:
        for sa in self._dirty:
            if sa.state == IkeSaState.CLOSED:
                continue
            deadline = sa.next_deadline()
            if deadline != sa.timer_at:
                sa.timer_at = deadline
                if deadline is not None:
                    heapq.heappush(self._timers, (deadline, next(self._timer_sequence), sa))
        self._dirty.clear()
        if len(self._timers) > 2 * len(self._by_id) + 64:
            self._timers = [(sa.timer_at, next(self._timer_sequence), sa) for sa in self._by_id.values()
                            if sa.timer_at is not None]
            heapq.heapify(self._timers)

    def _receive_for_sa(self, data: bytes, header: tuple, local: Address, remote: Address, now: float) -> None:
        spi_i, spi_r, flags = header[0], header[1], header[5]
        # The original initiator sets the Initiator flag; then this side is the responder and
        # its SPI is SPIr (RFC 7296 §3.1).
        sa = self._sas.get(spi_r if flags & HeaderFlag.INITIATOR else spi_i)
        if sa is None or sa.spi_i != spi_i or (sa.spi_r != ZERO_SPI and sa.spi_r != spi_r):
            # NOTE: RFC 7296 §2.21.4 allows an unprotected INVALID_IKE_SPI notify here; it is not sent.
            self.count("dropped_unknown_spi")
            return
        self.mark_dirty(sa)
        sa.receive(data, header, local, remote, now)

    def _receive_init_request(self, data: bytes, header: tuple, local: Address, remote: Address, now: float) -> None:
        spi_i = header[0]
        existing = self._half_open.get((remote, spi_i))
        if existing is not None:
            self.mark_dirty(existing)
            existing.receive(data, header, local, remote, now)
            return
        config = self._config_for_addresses(local, remote)
        if config is None:
            self.count("dropped_no_config")
            logger.info("IKE_SA_INIT from %s:%d dropped: no connection matches these addresses", remote[0], remote[1])
            return

        sa = IkeSa(self, config, initiator=False, local=local, remote=remote, spi_i=spi_i, state=IkeSaState.HALF_OPEN)
        try:
            message = Message.decode(data)
        except ProtocolError as error:
            sa.send_error_response(ExchangeType.IKE_SA_INIT, 0, error, local, remote)
            return
        if len(self._half_open) >= self.settings.half_open_limit and not self._cookie_valid(message, remote, now):
            self._send_cookie(message, local, remote, now)
            return
        if not respond_to_ike_sa_init(sa, message, local, remote, now):
            self.count("init_rejected")
            return
        self._register(sa)
        self._half_open[(remote, spi_i)] = sa
        self._half_open_keys[sa] = (remote, spi_i)
        _log(sa, logging.INFO, "IKE_SA_INIT response sent to %s:%d", remote[0], remote[1])

    def _config_for_addresses(self, local: Address, remote: Address) -> IkeConfig | None:
        for config in self.configs:
            if config.matches_addresses(local[0], remote[0]):
                return config
        return None

    # --- cookies (RFC 7296 §2.6) -----------------------------------------------------------------

    def _cookie_secret(self, version: int) -> bytes | None:
        if version == self._cookie_version % 65536 and self._cookie_secrets:
            return self._cookie_secrets[-1]
        if version == (self._cookie_version - 1) % 65536 and len(self._cookie_secrets) > 1:
            return self._cookie_secrets[-2]
        return None

    def _rotate_cookie_secret(self, now: float) -> None:
        if now < self._cookie_rotate_at and self._cookie_secrets:
            return
        self._cookie_secrets = self._cookie_secrets[-1:] + [self.random(32)]
        self._cookie_version += 1
        self._cookie_rotate_at = now + self.settings.cookie_secret_lifetime

    def _cookie(self, version: int, secret: bytes, message: Message, remote: Address) -> bytes:
        # Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)  (RFC 7296 §2.6)
        nonce = message.get(PayloadType.NONCE)
        nonce_data = nonce.data if nonce is not None else b""
        digest = hashlib.sha256(nonce_data + packed_address(remote[0]) + message.spi_i + secret).digest()
        return _COOKIE_VERSION.pack(version) + digest

    def _cookie_valid(self, message: Message, remote: Address, now: float) -> bool:
        self._rotate_cookie_secret(now)
        notify = message.notify(NotifyType.COOKIE)
        if notify is None or len(notify.data) < 2:
            return False
        version = _COOKIE_VERSION.unpack_from(notify.data)[0]
        secret = self._cookie_secret(version)
        if secret is None:
            return False
        return hmac.compare_digest(notify.data, self._cookie(version, secret, message, remote))

    def _send_cookie(self, message: Message, local: Address, remote: Address, now: float) -> None:
        version = self._cookie_version % 65536
        cookie = self._cookie(version, self._cookie_secrets[-1], message, remote)
        response = Message(message.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0,
                         [Notify(NotifyType.COOKIE, cookie)])
        self.count("cookies_sent")
        logger.debug("IKE_SA_INIT from %s:%d: %d IKE SAs half-open, demanding a COOKIE", remote[0], remote[1],
                     len(self._half_open))
        self.send(response.encode(), local, remote)

