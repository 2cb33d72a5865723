"""The IKE SA: the one owner of message IDs, the window, retransmission and the response cache.

RFC 7296 §2.1-§2.3: each side numbers its own requests from 0; a response carries the ID of its
request. This side keeps one request outstanding at a time (window size 1) and retransmits it
with exponential back-off until the response arrives or the tries run out, at which point the
peer counts as dead (§2.4). For the peer's requests it remembers the last response and sends it
again, unchanged, when the request is retransmitted (§2.1). Anything older or newer is dropped
and counted, as are messages whose integrity check fails.

Errors in a request become an error notify in exactly one place, `send_error_response`. Exchanges live
in their own modules (ike_sa_init, ike_auth, create_child_sa, informational) as initiator and
responder halves; this module runs them.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from .child import ChildSa, ChildSaState
from .config import IkeConfig, Identity
from .constants import ExchangeType, HeaderFlag, PayloadType, ProtocolId
from .errors import InvalidSyntax, ProtocolError, TemporaryFailure, notify_name
from .events import Address, ChildSaDeleted, IkeSaDeleted, IkeSaFailed
from .exchange import Initiator, Responder, responder_for
from .message import FragmentReassembly, Message, SkCipher, decrypt_fragment
from .payloads import Notify, Payload
from .rules import check_payloads

if TYPE_CHECKING:
    from .endpoint import IkeEndpoint

logger = logging.getLogger(__name__)

ZERO_SPI = bytes(8)
_PEER_DELETED_KEPT = 8  # SPIs remembered from Deletes of CHILD_SAs not yet known here


class IkeSaState(enum.Enum):
    CONNECTING = "connecting"  # original initiator: IKE_SA_INIT and IKE_AUTH under way
    HALF_OPEN = "half-open"  # responder: IKE_SA_INIT done, IKE_AUTH not yet received
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA (RFC 7296 §2.18), waiting for the Delete
    DELETING = "deleting"  # this side's Delete of the IKE SA is under way
    CLOSED = "closed"


# Peer requests that each state processes. Others are dropped and counted. IKE_SA_INIT requests
# never reach an IKE SA because the endpoint responds to them (see endpoint.py).
ACCEPTED_REQUESTS: dict[IkeSaState, frozenset[int]] = {
    IkeSaState.CONNECTING: frozenset(),
    IkeSaState.HALF_OPEN: frozenset({ExchangeType.IKE_AUTH}),
    IkeSaState.ESTABLISHED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
    IkeSaState.REKEYED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
    IkeSaState.DELETING: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
    IkeSaState.CLOSED: frozenset(),
}

# Requests that get TEMPORARY_FAILURE (RFC 7296 §2.25) because of what this side is doing:
# (kind of this side's running exchange or None for any, kind of the peer's request). Simultaneous
# rekeys of the same SA are not here: they are collisions, resolved by RFC 7296 §2.8.1 and §2.8.2.
BUSY: frozenset[tuple[str | None, str]] = frozenset(
    {
        ("ike-rekey", "child-create"),
        ("ike-rekey", "child-rekey"),
        ("child-rekey", "ike-rekey"),
        ("child-create", "ike-rekey"),
        ("ike-delete", "child-create"),
        ("ike-delete", "child-rekey"),
        ("ike-delete", "ike-rekey"),
    }
)
# States in which no new SA may be created on this IKE SA (RFC 7296 §2.25.2).
_NO_NEW_SAS = frozenset({IkeSaState.REKEYED, IkeSaState.DELETING})
_CREATING_KINDS = frozenset({"child-create", "child-rekey", "ike-rekey"})


class Setup:
    """Scratch state of IKE_SA_INIT and IKE_AUTH, dropped once the IKE SA is established."""

    __slots__ = (
        "nonce_i",
        "nonce_r",
        "init_request",
        "init_response",
        "sk_pi",
        "sk_pr",
        "peer_hash_algorithms",
    )

    def __init__(self) -> None:
        self.nonce_i = b""
        self.nonce_r = b""
        self.init_request = b""
        self.init_response = b""
        self.sk_pi = b""
        self.sk_pr = b""
        self.peer_hash_algorithms: tuple = ()


class IkeSa:
    """One IKE SA, in either role. Create it through `IkeEndpoint`."""

    __slots__ = (
        "endpoint",
        "config",
        "unique_id",
        "initiator",
        "spi_i",
        "spi_r",
        "state",
        "local",
        "remote",
        "prf",
        "sk_d",
        "cipher",
        "ike_proposal",
        "nat_local",
        "nat_remote",
        "mobike",
        "peer_accepts_switch",
        "mobike_initiator",
        "fragmentation",
        "local_identity",
        "remote_identity",
        "next_message_id",
        "peer_message_id",
        "active",
        "request",
        "retransmits",
        "retransmit_at",
        "response",
        "response_id",
        "queue",
        "deferred",
        "reassembly",
        "children",
        "setup",
        "rekey_at",
        "half_open_until",
        "peer_rekey",
        "successor",
        "predecessor",
        "redundant",
        "peer_deleted_spis",
        "timer_at",
        "mobility",
        "received_on",
        "resend_on_path",
    )

    def __init__(
        self,
        endpoint: "IkeEndpoint",
        config: IkeConfig,
        *,
        initiator: bool,
        local: Address,
        remote: Address,
        spi_i: bytes,
        spi_r: bytes = ZERO_SPI,
        state: IkeSaState,
    ):
        self.endpoint = endpoint
        self.config = config
        self.unique_id = endpoint.next_unique_id()
        self.initiator = initiator  # the original initiator of this IKE SA (Initiator flag, RFC 7296 §3.1)
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.state = state
        self.local = local
        self.remote = remote

        # Keys and negotiated features.
        self.prf = None
        self.sk_d = b""
        self.cipher: SkCipher | None = None
        self.ike_proposal = None
        self.nat_local = False
        self.nat_remote = False
        self.mobike = False
        self.peer_accepts_switch = False
        # RFC 4555 §3.1 gives the MOBIKE initiator role to the original initiator. A rekeyed IKE
        # SA inherits the role from the SA it replaces.
        # NOTE: RFC 4555 does not say so explicitly; the rekey may make the other side initiator.
        self.mobike_initiator = initiator
        self.fragmentation = False
        self.local_identity: Identity | None = None
        self.remote_identity: Identity | None = None

        # Message IDs, the outstanding request and the cached response (RFC 7296 §2.1-§2.3).
        self.next_message_id = 0
        self.peer_message_id = 0
        self.active: Initiator | None = None
        self.request: list[bytes] | None = None
        self.retransmits = 0
        self.retransmit_at: float | None = None
        self.response: list[bytes] | None = None  # the datagrams of the last response sent
        self.response_id = -1
        self.queue: list[Initiator] | None = None
        self.deferred: list[tuple[float, Initiator]] | None = None
        self.reassembly: FragmentReassembly | None = None

        # CHILD_SAs by inbound SPI, scratch state of the setup, timers and rekey bookkeeping.
        self.children: dict[int, ChildSa] = {}
        self.setup: Setup | None = Setup()
        self.rekey_at: float | None = None
        self.half_open_until: float | None = None
        # Set while this side's IKE SA rekey is under way and the peer rekeyed too (RFC 7296
        # §2.8.2): (peer's Ni, our Nr, the IKE SA that exchange created).
        self.peer_rekey: tuple[bytes, bytes, IkeSa] | None = None
        self.successor: IkeSa | None = None  # the IKE SA that replaced this one
        # Set on an IKE SA that the peer created by rekeying while this side's own rekey of
        # `predecessor` was under way, until that collision is resolved.
        self.predecessor: IkeSa | None = None
        # Set on the old IKE SA when this side's rekey won a collision: the IKE SA that the
        # peer's losing rekey created here. Its creator deletes it (RFC 7296 §2.8.2), unless the
        # peer dropped that rekey request because our Delete of the old IKE SA came first
        # (§2.25.2). Then `close` deletes it.
        self.redundant: IkeSa | None = None
        self.peer_deleted_spis: list[int] | None = None
        self.timer_at: float | None = None

        # MOBIKE, SWITCH_TO_IP_ADDRESS and redirect state (mobike.Mobility), once needed.
        self.mobility = None
        # (local, remote) of the message being processed: MOBIKE takes addresses from the IP header.
        self.received_on: tuple[Address, Address] | None = None
        # The cached response goes to the IKE SA's current path, not to the retransmitted
        # request's source, because it was sent elsewhere first (SWITCH_TO_IP_ADDRESS).
        self.resend_on_path = False

    # --- identity and logging ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def tag(self) -> str:
        return f"{self.config.name}[{self.unique_id}] {self.spi_i.hex()}_i {self.spi_r.hex()}_r {self.remote[0]}:{self.remote[1]}"

    def log(self, level: int, message: str, *args, via: logging.Logger = logger) -> None:
        """Log a line tagged with this IKE SA (name, unique id, SPIs, peer) through logger `via`."""
        if via.isEnabledFor(level):
            via.log(level, "%s: " + message, self.tag, *args)

    def __repr__(self) -> str:
        return f"<IkeSa {self.tag} {self.state.value}>"

    # --- keys ----------------------------------------------------------------------------------

    def install_keys(self, algorithms, keys) -> None:
        """Take the PRF, SK_d and the SK payload keys of this IKE SA (RFC 7296 §2.14)."""
        self.prf = algorithms.prf
        self.sk_d = keys.sk_d
        if self.initiator:
            out_e, out_a, in_e, in_a = keys.sk_ei, keys.sk_ai, keys.sk_er, keys.sk_ar
        else:
            out_e, out_a, in_e, in_a = keys.sk_er, keys.sk_ar, keys.sk_ei, keys.sk_ai
        self.cipher = SkCipher(algorithms.encr, algorithms.integ, out_e, out_a, in_e, in_a, self.endpoint.random)

    # --- commands ----------------------------------------------------------------------------

    def start(self, exchange: Initiator, now: float, *, front: bool = False) -> None:
        """Queue an exchange this side initiates and send it as soon as the window allows."""
        if self.state == IkeSaState.CLOSED:
            return
        self.endpoint.mark_dirty(self)
        if self.queue is None:
            self.queue = []
        if front:
            self.queue.insert(0, exchange)
        else:
            self.queue.append(exchange)
        self._start_next(now)

    def defer(self, exchange: Initiator, now: float) -> None:
        """Start an exchange again after a random delay, for retries after TEMPORARY_FAILURE."""
        delay = self.endpoint.settings.retry_delay
        at = now + delay + delay * self.endpoint.random(1)[0] / 255
        if self.deferred is None:
            self.deferred = []
        self.deferred.append((at, exchange))
        self.endpoint.mark_dirty(self)
        self.log(logging.DEBUG, "retrying %s in %.1f s", exchange.describe(), at - now)

    def _start_next(self, now: float) -> None:
        while self.active is None and self.queue and self.state != IkeSaState.CLOSED:
            exchange = self.queue.pop(0)
            payloads = exchange.build_request(now)
            if payloads is None:
                continue
            self.active = exchange
            self.request = self._encode(exchange.exchange_type, self.next_message_id, payloads, response=False)
            self.retransmits = 0
            self.retransmit_at = now + self.config.retransmit_timeout
            self._transmit(self.request, self.local, self.remote)
            if self.mobility is not None:
                self.mobility.request_sent(self, now)
        if not self.queue:
            self.queue = None

    # --- sending -------------------------------------------------------------------------------

    def _encode(self, exchange_type: int, message_id: int, payloads: list[Payload], *, response: bool) -> list[bytes]:
        flags = 0
        if self.initiator:
            flags |= HeaderFlag.INITIATOR
        if response:
            flags |= HeaderFlag.RESPONSE
        message = Message(self.spi_i, self.spi_r, exchange_type, flags, message_id, payloads)
        if logger.isEnabledFor(logging.DEBUG):
            message.protected = exchange_type != ExchangeType.IKE_SA_INIT
            self.log(logging.DEBUG, "sending %s", message.summary())
        if exchange_type == ExchangeType.IKE_SA_INIT:
            return [message.encode()]
        data = message.encode(self.cipher)
        if self.fragmentation and len(data) > self.config.fragment_size:
            fragments = message.encode_fragments(self.cipher, self.config.fragment_size)
            self.log(logging.DEBUG, "sending message %d in %d fragments", message_id, len(fragments))
            return fragments
        return [data]

    def _transmit(self, datagrams: list[bytes], local: Address, remote: Address) -> None:
        for datagram in datagrams:
            self.endpoint.send(datagram, local, remote)

    def send_response(self, exchange_type: int, message_id: int, payloads: list[Payload], local: Address, remote: Address) -> None:
        """Send a response and keep it for retransmitted requests (RFC 7296 §2.1)."""
        datagrams = self._encode(exchange_type, message_id, payloads, response=True)
        self.response = datagrams
        self.response_id = message_id
        self._transmit(datagrams, local, remote)

    def send_notification(self, exchange_type: int, payloads: list[Payload]) -> None:
        """Send a request once, without waiting for the response (used just before closing)."""
        self._transmit(self._encode(exchange_type, self.next_message_id, payloads, response=False), self.local, self.remote)
        self.next_message_id += 1

    # --- receiving -----------------------------------------------------------------------------

    def receive(self, data: bytes, header: tuple, local: Address, remote: Address, now: float) -> None:
        """Process one IKE message for this IKE SA (header fields already unpacked)."""
        if self.state == IkeSaState.CLOSED:
            return
        flags, message_id = header[5], header[6]
        self.received_on = (local, remote)
        if flags & HeaderFlag.RESPONSE:
            self._receive_response(data, message_id, local, remote, now)
        else:
            self._receive_request(data, message_id, local, remote, now)

    def _open(self, data: bytes, is_response: bool) -> Message | None:
        """Decode and decrypt a message.

        Return None when the message is dropped (unauthenticated and malformed, or failing the
        integrity check) or when fragments are still missing. Errors found in authenticated
        content are raised, so that the caller can send an error response.
        """
        try:
            message = Message.decode(data)
            content = message.encrypted
            if content is None:
                if message.exchange_type != ExchangeType.IKE_SA_INIT:
                    raise InvalidSyntax("protected exchange without SK payload")
                return message
            if self.cipher is None:
                raise InvalidSyntax("encrypted message before keys exist")
            if content.fragment is None:
                message.decrypt(data, self.cipher)
                return message
            piece = decrypt_fragment(message, data, self.cipher)
            return self._reassemble(message, piece, is_response)
        except ProtocolError as error:
            if error.authenticated:
                raise
            # Nothing of the message is authenticated, so no response is sent.
            self.endpoint.count("dropped_integrity" if error.notify_type is None else "dropped_invalid")
            self.log(logging.DEBUG, "dropped message: %s", error)
            return None

    def _reassemble(self, message: Message, piece: bytes, is_response: bool) -> Message | None:
        # RFC 7383 §2.6: only fragments that passed the integrity check are stored.
        buffer = self.reassembly
        if buffer is None or buffer.message_id != message.message_id or buffer.is_response != is_response:
            buffer = self.reassembly = FragmentReassembly(message.message_id, is_response)
        chain = buffer.add(message.encrypted.fragment, piece)
        if chain is None:
            return None
        self.reassembly = None
        buffer.finish(message, chain)
        return message

    def _receive_request(self, data: bytes, message_id: int, local: Address, remote: Address, now: float) -> None:
        if message_id == self.response_id and self.response is not None:
            self._resend_response(data, local, remote)
            return
        if message_id != self.peer_message_id:
            self.endpoint.count("dropped_message_id")
            self.log(logging.DEBUG, "dropped request %d, expected %d", message_id, self.peer_message_id)
            return

        exchange_type = data[18]
        try:
            message = self._open(data, is_response=False)
        except ProtocolError as error:
            if exchange_type not in ACCEPTED_REQUESTS[self.state]:
                return
            self.peer_message_id += 1
            self.send_error_response(exchange_type, message_id, error, local, remote)
            return
        if message is None:
            return
        if logger.isEnabledFor(logging.DEBUG):
            self.log(logging.DEBUG, "received %s", message.summary())
        if message.exchange_type not in ACCEPTED_REQUESTS[self.state]:
            self.endpoint.count("dropped_state")
            self.log(logging.DEBUG, "dropped %s request in state %s", exchange_name(message.exchange_type), self.state.value)
            return

        if self.state == IkeSaState.HALF_OPEN and (local, remote) != (self.local, self.remote):
            # RFC 7296 §2.23: the initiator moved to the NAT-T port for IKE_AUTH, or a NAT
            # changed its port. Follow it, now that the request passed the integrity check.
            self.local, self.remote = local, remote
        # TODO: without MOBIKE, RFC 7296 §2.23 also follows a NAT mapping change of an
        # established IKE SA; that needs an address-change event for the CHILD_SAs.

        if self.predecessor is not None:
            self._adopt_if_peer_kept(message, now)

        self.peer_message_id += 1
        responder: Responder | None = None
        try:
            check_payloads(message)
            responder_class = responder_for(message)
            if responder_class is None:
                raise InvalidSyntax(f"no handler for {message.summary()}")
            self._check_busy(responder_class)
            responder = responder_class(self)
            payloads = responder.process_request(message, now)
        except ProtocolError as error:
            self.resend_on_path = False
            self.send_error_response(message.exchange_type, message_id, error, local, remote)
            if responder is not None:
                responder.request_failed(error, now)
            return
        # A responder may send its response elsewhere (SWITCH_TO_IP_ADDRESS, see switch.py).
        response_path = getattr(responder, "response_path", None)
        self.resend_on_path = response_path is not None
        if response_path is not None:
            local, remote = response_path
        self.send_response(message.exchange_type, message_id, payloads, local, remote)
        responder.response_sent(now)
        self._start_next(now)

    def _adopt_if_peer_kept(self, message: Message, now: float) -> None:
        """Resolve a pending IKE SA rekey collision when the peer starts using this IKE SA.

        The peer sends requests other than a Delete of the IKE SA only on a new IKE SA that it
        keeps, so its rekey survived (RFC 7296 §2.8.2) and the CHILD_SAs belong here.
        """
        old = self.predecessor
        pending = old.peer_rekey
        if pending is None or pending[2] is not self:
            self.predecessor = None
            return
        if any(d.protocol_id == ProtocolId.IKE for d in message.get_all(PayloadType.D)):
            return
        from .create_child_sa import replace_ike_sa

        self.log(logging.INFO, "peer uses the IKE SA of its rekey, so that one survives")
        old.peer_rekey = None
        replace_ike_sa(old, self, now)

    def _check_busy(self, responder_class: type[Responder]) -> None:
        kind = getattr(responder_class, "kind", None)
        if kind is None:
            return
        if self.state in _NO_NEW_SAS and kind in _CREATING_KINDS:
            raise TemporaryFailure(f"IKE SA is {self.state.value}")
        active_kind = getattr(self.active, "kind", None)
        if (active_kind, kind) in BUSY:
            raise TemporaryFailure(f"{active_kind} under way")

    def _resend_response(self, data: bytes, local: Address, remote: Address) -> None:
        """Send the cached response again, once the retransmitted request proved authentic."""
        try:
            message = Message.decode(data)
            content = message.encrypted
            if content is not None:
                if content.fragment is None:
                    message.decrypt(data, self.cipher)
                else:
                    decrypt_fragment(message, data, self.cipher)
                    if content.fragment.fragment_number != 1:
                        # RFC 7383 §2.6.1: respond to a fragmented retransmission once, on fragment 1.
                        return
        except ProtocolError as error:
            self.endpoint.count("dropped_integrity" if error.notify_type is None else "dropped_invalid")
            return
        datagrams = self.response
        if self.resend_on_path:
            local, remote = self.local, self.remote
        self.endpoint.count("retransmitted_responses")
        self.log(logging.DEBUG, "request %d retransmitted, sending the cached response again", self.response_id)
        self._transmit(datagrams, local, remote)

    def send_error_response(self, exchange_type: int, message_id: int, error: ProtocolError, local: Address, remote: Address) -> None:
        """Turn a protocol error in a request into the error notify of the response (the only place)."""
        if error.notify_type is None:
            self.endpoint.count("dropped_integrity")
            return
        self.endpoint.count("error_responses")
        level = logging.INFO if error.notify_type == TemporaryFailure.notify_type else logging.WARNING
        self.log(level, "rejected %s request %d with %s: %s", exchange_name(exchange_type), message_id,
                 notify_name(error.notify_type), error)
        notify = Notify(error.notify_type, error.notify_data, error.protocol_id, error.spi)
        self.send_response(exchange_type, message_id, [notify], local, remote)

    def _receive_response(self, data: bytes, message_id: int, local: Address, remote: Address, now: float) -> None:
        if self.active is None or message_id != self.next_message_id:
            self.endpoint.count("dropped_message_id")
            self.log(logging.DEBUG, "dropped response %d, no request outstanding with that ID", message_id)
            return
        exchange = self.active
        try:
            message = self._open(data, is_response=True)
            if message is None:
                return
            if self.mobility is not None:
                self.mobility.response_received(self, local, remote, now)
            if message.exchange_type != exchange.exchange_type:
                raise InvalidSyntax(f"response of exchange type {message.exchange_type} to {exchange.describe()}")
            if logger.isEnabledFor(logging.DEBUG):
                self.log(logging.DEBUG, "received %s", message.summary())
            check_payloads(message)
            done = exchange.process_response(message, now)
        except ProtocolError as error:
            if exchange.exchange_type == ExchangeType.IKE_SA_INIT and not error.from_peer:
                # Nothing protects an IKE_SA_INIT response, so a malformed one may be forged.
                # Drop it and keep waiting for the real one. Error notifies still end the setup.
                self.endpoint.count("dropped_invalid")
                self.log(logging.INFO, "dropped IKE_SA_INIT response: %s", error)
                return
            self._finish_request()
            level = logging.INFO if error.notify_type == TemporaryFailure.notify_type else logging.WARNING
            self.log(level, "%s failed: %s", exchange.describe(), error)
            exchange.failed(error, now)
            self._start_next(now)
            return
        if done:
            self._finish_request()
        else:
            self._resend_rebuilt(exchange, now)
        self._start_next(now)

    def _finish_request(self) -> None:
        self.active = None
        self.request = None
        self.retransmit_at = None
        self.next_message_id += 1

    def _resend_rebuilt(self, exchange: Initiator, now: float) -> None:
        # IKE_SA_INIT retries (COOKIE, INVALID_KE_PAYLOAD) reuse message ID 0 (RFC 7296 §2.6);
        # a retry in a later exchange is a new request with the next ID.
        if exchange.exchange_type != ExchangeType.IKE_SA_INIT:
            self._finish_request()
            self.start(exchange, now, front=True)
            return
        self.request = self._encode(exchange.exchange_type, self.next_message_id, exchange.build_request(now), response=False)
        self.retransmits = 0
        self.retransmit_at = now + self.config.retransmit_timeout
        self._transmit(self.request, self.local, self.remote)

    # --- timers --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        candidates = [self.retransmit_at, self.half_open_until, self.rekey_at]
        if self.mobility is not None:
            candidates.append(self.mobility.next_deadline(self))
        if self.deferred:
            candidates.append(min(at for at, _ in self.deferred))
        for child in self.children.values():
            candidates.append(child.rekey_at)
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state == IkeSaState.CLOSED:
            return
        if self.retransmit_at is not None and now >= self.retransmit_at:
            self._retransmit(now)
            if self.state == IkeSaState.CLOSED:
                return
        if self.mobility is not None:
            self.mobility.handle_timer(self, now)
            if self.state == IkeSaState.CLOSED:
                return
        if self.half_open_until is not None and now >= self.half_open_until:
            self.endpoint.count("half_open_expired")
            self.log(logging.INFO, "no IKE_AUTH within %.0f s, dropping the half-open IKE SA",
                     self.endpoint.settings.half_open_timeout)
            self.close(now, None)
            return
        if self.deferred:
            due = [item for item in self.deferred if item[0] <= now]
            self.deferred = [item for item in self.deferred if item[0] > now] or None
            for _, exchange in due:
                self.start(exchange, now)
        self._rekey_due(now)
        self._start_next(now)

    def _rekey_due(self, now: float) -> None:
        from .create_child_sa import ChildRekeyInitiator, IkeRekeyInitiator

        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = None
            if self.state == IkeSaState.ESTABLISHED:
                self.log(logging.INFO, "IKE SA lifetime reached, rekeying")
                self.start(IkeRekeyInitiator(self), now)
        for child in list(self.children.values()):
            if child.rekey_at is not None and now >= child.rekey_at:
                child.rekey_at = None
                if child.state == ChildSaState.INSTALLED and self.state == IkeSaState.ESTABLISHED:
                    self.log(logging.INFO, "CHILD_SA %s lifetime reached, rekeying", child.name)
                    self.start(ChildRekeyInitiator(self, child), now)

    def _retransmit(self, now: float) -> None:
        if self.retransmits >= self.config.retransmit_tries:
            self.endpoint.count("retransmits_exhausted")
            exchange = self.active
            reason = f"no response to {exchange.describe()} after {self.retransmits} retransmissions"
            self.log(logging.WARNING, "%s, peer is dead", reason)
            if getattr(exchange, "kind", None) == "ike-delete":
                self.close(now, IkeSaDeleted(self.unique_id, self.name, by_peer=False))
            else:
                self.close(now, IkeSaFailed(self.unique_id, self.name, reason))
            return
        self.retransmits += 1
        self.retransmit_at = now + self.config.retransmit_timeout * self.config.retransmit_base ** self.retransmits
        self.endpoint.count("retransmitted_requests")
        self.log(logging.DEBUG, "retransmitting %s (%d)", self.active.describe(), self.retransmits)
        self._transmit(self.request, self.local, self.remote)
        if self.mobility is not None:
            self.mobility.retransmitted(self)

    def move_path(self, local: Address, remote: Address, now: float) -> None:
        """Send from `local` to `remote` from now on; the outstanding request goes there at once.

        The retransmission schedule of that request starts again on the new path. The
        CHILD_SAs are not touched: moving them is the MOBIKE exchanges' business (mobike.py).
        """
        self.local, self.remote = local, remote
        self.endpoint.mark_dirty(self)
        if self.request is None:
            return
        self.retransmits = 0
        self.retransmit_at = now + self.config.retransmit_timeout
        self.log(logging.DEBUG, "sending %s again on the new path", self.active.describe())
        self._transmit(self.request, local, remote)
        if self.mobility is not None:
            self.mobility.request_sent(self, now)

    def schedule_rekey(self, now: float) -> None:
        """Set the IKE SA rekey time: `rekey_time` minus up to 10 % jitter (RFC 7296 §2.8.1)."""
        if self.config.rekey_time is None:
            self.rekey_at = None
            return
        self.rekey_at = now + self.config.rekey_time * (1 - 0.1 * self.endpoint.random(1)[0] / 255)

    def schedule_child_rekey(self, child: ChildSa, now: float) -> None:
        rekey_time = child.config.rekey_time
        child.rekey_at = None if rekey_time is None else now + rekey_time * (1 - 0.1 * self.endpoint.random(1)[0] / 255)

    # --- children ------------------------------------------------------------------------------

    def add_child(self, child: ChildSa, now: float) -> None:
        self.children[child.spi_in] = child
        self.schedule_child_rekey(child, now)
        self.endpoint.mark_dirty(self)

    def note_peer_delete(self, spi_out: int) -> None:
        """Remember an SPI that the peer deleted while no CHILD_SA here used it.

        This happens when the response that created the CHILD_SA here was lost and the peer
        deleted the CHILD_SA before the retransmitted response arrived.
        """
        if self.peer_deleted_spis is None:
            self.peer_deleted_spis = []
        self.peer_deleted_spis = self.peer_deleted_spis[-(_PEER_DELETED_KEPT - 1):] + [spi_out]

    def drop_if_peer_deleted(self, child: ChildSa) -> None:
        """Remove a just-created CHILD_SA at once if the peer already deleted it."""
        if self.peer_deleted_spis and child.spi_out in self.peer_deleted_spis:
            self.peer_deleted_spis.remove(child.spi_out)
            self.log(logging.INFO, "peer deleted CHILD_SA %s %08x_o before its creation completed here",
                     child.name, child.spi_out)
            self.remove_child(child)

    def child_by_outbound(self, spi_out: int) -> ChildSa | None:
        """Find a CHILD_SA by its outbound SPI on this IKE SA or, after rekeys, on a successor.

        The peer may send a request about a CHILD_SA on the old IKE SA while the rekey that
        moves the CHILD_SA to the new one completes (RFC 7296 §1.4 allows either IKE SA).
        """
        sa = self
        while sa is not None:
            for child in sa.children.values():
                if child.spi_out == spi_out:
                    return child
            sa = sa.successor
        return None

    def owner_of(self, child: ChildSa) -> "IkeSa":
        """Return the IKE SA that contains `child` now: this one or, after rekeys, a successor.

        An exchange that was under way when the IKE SA was rekeyed finishes on the old IKE SA,
        but the CHILD_SAs it concerns have moved on.
        """
        sa = self
        while sa.children.get(child.spi_in) is not child and sa.successor is not None:
            sa = sa.successor
        return sa

    def remove_child(self, child: ChildSa) -> None:
        """Forget a CHILD_SA and tell the driver to remove it from the kernel."""
        owner = self.owner_of(child)
        if owner is not self:
            owner.remove_child(child)
            return
        if self.children.pop(child.spi_in, None) is None:
            return
        self.endpoint.release_spi(child.spi_in)
        self.log(logging.INFO, "CHILD_SA %s %08x_i %08x_o deleted", child.name, child.spi_in, child.spi_out)
        self.endpoint.emit(ChildSaDeleted(self.unique_id, child.name, child.reqid, child.spi_in, child.spi_out,
                                          self.local[0], self.remote[0]))

    # --- end of life ---------------------------------------------------------------------------

    def close(self, now: float, event) -> None:
        """Close the IKE SA: delete its CHILD_SAs, report `event` (if any) and forget it."""
        if self.state == IkeSaState.CLOSED:
            return
        carried = self._movable_exchanges()
        for child in list(self.children.values()):
            self.remove_child(child)
        self.state = IkeSaState.CLOSED
        self.active = None
        self.request = None
        self.queue = None
        self.deferred = None
        self.retransmit_at = None
        self.half_open_until = None
        self.rekey_at = None
        self.setup = None
        self.reassembly = None
        self.endpoint.remove(self)
        self._delete_redundant(now)
        for exchange in carried:
            # For example a CHILD_SA Delete whose response was lost when the IKE SA was rekeyed:
            # the CHILD_SA moved to the successor, so the Delete is repeated there.
            exchange.sa = self.successor
            self.successor.start(exchange, now)
        if event is not None:
            level = logging.WARNING if isinstance(event, IkeSaFailed) else logging.INFO
            self.log(level, "IKE SA closed: %s", _describe_close(event))
            self.endpoint.emit(event)

    def _delete_redundant(self, now: float) -> None:
        """Delete the peer's redundant IKE SA from a rekey collision if the peer has not.

        Once the peer has responded to our Delete of the old IKE SA, it has either sent its
        Delete of the redundant IKE SA already or dropped the rekey request that created it
        (RFC 7296 §2.25.2). In the second case only this side can delete it. Deletes that
        cross are harmless because each side responds to the other's and closes the IKE SA
        (§2.25.2). An old IKE SA that closes for another reason (the peer is dead) takes the
        redundant one along the same way.
        """
        redundant, self.redundant = self.redundant, None
        if redundant is None or redundant.state != IkeSaState.ESTABLISHED:
            return
        from .informational import DeleteIkeInitiator

        redundant.log(logging.INFO, "the peer's redundant IKE SA from a rekey collision outlived %s, deleting it",
                      self.tag)
        redundant.start(DeleteIkeInitiator(redundant), now)

    def _movable_exchanges(self) -> list[Initiator]:
        """Return the running and queued exchanges that a successor IKE SA should take over."""
        if self.successor is None or self.successor.state == IkeSaState.CLOSED:
            return []
        exchanges = ([self.active] if self.active is not None else []) + (self.queue or [])
        return [exchange for exchange in exchanges if getattr(exchange, "movable", False)]

    def fail(self, now: float, reason: str, notify=None) -> None:
        self.close(now, IkeSaFailed(self.unique_id, self.name, reason, notify))

    def move_children_to(self, new_sa: "IkeSa", now: float) -> None:
        """Hand every CHILD_SA and queued CHILD_SA exchange to the IKE SA replacing this one."""
        self.successor = new_sa
        for child in self.children.values():
            new_sa.children[child.spi_in] = child
            if child.state == ChildSaState.REKEYING:
                child.state = ChildSaState.INSTALLED
                new_sa.schedule_child_rekey(child, now)
        self.children = {}
        self.endpoint.mark_dirty(new_sa)
        queued = [exchange for exchange in (self.queue or []) if getattr(exchange, "movable", False)]
        self.queue = [exchange for exchange in (self.queue or []) if not getattr(exchange, "movable", False)] or None
        for exchange in queued:
            exchange.sa = new_sa
            new_sa.start(exchange, now)


def exchange_name(exchange_type: int) -> str:
    try:
        return ExchangeType(exchange_type).name
    except ValueError:
        return str(exchange_type)


def _describe_close(event) -> str:
    if isinstance(event, IkeSaFailed):
        return f"failed: {event.reason}"
    if isinstance(event, IkeSaDeleted):
        return "deleted by the peer" if event.by_peer else "deleted"
    return type(event).__name__

