"""Kernel XFRM notifications as typed events, read from the XFRM multicast groups.

The kernel sends, per group (enum xfrm_nlgroups):

- XFRMNLGRP_ACQUIRE: a packet matched a policy but no SA exists (Acquire);
- XFRMNLGRP_EXPIRE: an SA or policy reached a soft or hard limit (Expire, PolicyExpire);
- XFRMNLGRP_SA / XFRMNLGRP_POLICY: every change to the tables, from any
  process (SaAdded, SaUpdated, SaDeleted, SasFlushed, PolicyAdded, ...);
- XFRMNLGRP_MIGRATE: an XFRM_MSG_MIGRATE was applied (Migrate);
- XFRMNLGRP_MAPPING: a NAT mapping of a UDP-encapsulated SA changed (Mapping);
- XFRMNLGRP_AEVENTS: replay counter updates, only for SAs that ask for them (ReplayUpdate).

Usage with asyncio: ``loop.add_reader(events.fileno(), ...)`` and call
``events.read()`` in the callback.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Union

from xfrm import codec
from xfrm import constants as c
from xfrm.model import Address, Encap, Migration, Policy, PolicyId, Proto, SaId, SecurityAssociation, Selector
from xfrm.netlink import DEFAULT_RCVBUF, NetlinkSocket
from xfrm.ops import ReplayInfo

log = logging.getLogger(__name__)

DEFAULT_GROUPS = (
    c.XFRMNLGRP_ACQUIRE,
    c.XFRMNLGRP_EXPIRE,
    c.XFRMNLGRP_SA,
    c.XFRMNLGRP_POLICY,
    c.XFRMNLGRP_MIGRATE,
    c.XFRMNLGRP_MAPPING,
)
MAX_DATAGRAMS_PER_READ = 256


@dataclass(frozen=True)
class Acquire:
    """XFRM_MSG_ACQUIRE: outgoing traffic needs an SA that does not exist yet.

    ``policy`` is the policy that matched (with its templates), ``selector``
    describes the packet, ``src``/``dst`` are the outer addresses the SA
    needs, and ``seq`` identifies the acquire (to pass back on allocation).
    """

    policy: Policy
    selector: Selector | None
    src: Address
    dst: Address
    proto: Proto
    seq: int


@dataclass(frozen=True)
class Expire:
    """XFRM_MSG_EXPIRE: an SA reached its soft (rekey) or hard (deleted) limit.

    ``sa`` carries the SA's identity, counters and limits but no keys.
    """

    sa: SecurityAssociation
    hard: bool


@dataclass(frozen=True)
class PolicyExpire:
    """XFRM_MSG_POLEXPIRE: a policy reached its soft or hard limit."""

    policy: Policy
    hard: bool


@dataclass(frozen=True)
class SaAdded:
    """XFRM_MSG_NEWSA notification (keys included, so never log ``sa`` with its keys)."""

    sa: SecurityAssociation


@dataclass(frozen=True)
class SaUpdated:
    """XFRM_MSG_UPDSA notification."""

    sa: SecurityAssociation


@dataclass(frozen=True)
class SaDeleted:
    """XFRM_MSG_DELSA notification, also sent when a hard limit deletes an SA."""

    sa: SecurityAssociation


@dataclass(frozen=True)
class SasFlushed:
    """XFRM_MSG_FLUSHSA notification; ``proto`` None means all protocols."""

    proto: Proto | None


@dataclass(frozen=True)
class PolicyAdded:
    """XFRM_MSG_NEWPOLICY notification."""

    policy: Policy


@dataclass(frozen=True)
class PolicyUpdated:
    """XFRM_MSG_UPDPOLICY notification."""

    policy: Policy


@dataclass(frozen=True)
class PolicyDeleted:
    """XFRM_MSG_DELPOLICY notification."""

    policy: Policy


@dataclass(frozen=True)
class PoliciesFlushed:
    """XFRM_MSG_FLUSHPOLICY notification."""


@dataclass(frozen=True)
class Migrate:
    """XFRM_MSG_MIGRATE notification: SAs and templates of ``policy`` moved to new addresses."""

    policy: PolicyId
    migrations: tuple[Migration, ...]
    encap: Encap | None


@dataclass(frozen=True)
class Mapping:
    """XFRM_MSG_MAPPING: ESP-in-UDP packets for ``sa`` arrive from a new address or port.

    The kernel sends it when a peer behind NAT gets a new public mapping;
    the key manager decides whether to update the SA.
    """

    sa: SaId
    reqid: int
    old_src: Address
    old_sport: int
    new_src: Address
    new_sport: int


@dataclass(frozen=True)
class ReplayUpdate:
    """XFRM_MSG_NEWAE on XFRMNLGRP_AEVENTS: an SA's replay counters (for SA synchronisation)."""

    sa: SaId
    info: ReplayInfo


@dataclass(frozen=True)
class Overrun:
    """The receive buffer overflowed and the kernel dropped events (ENOBUFS).

    The listener should resynchronise with dump_sas/dump_policies.
    """


@dataclass(frozen=True)
class Unknown:
    """A message type this layer does not decode."""

    msg_type: int
    body: bytes


Event = Union[Acquire, Expire, PolicyExpire, SaAdded, SaUpdated, SaDeleted, SasFlushed,
              PolicyAdded, PolicyUpdated, PolicyDeleted, PoliciesFlushed, Migrate, Mapping,
              ReplayUpdate, Overrun, Unknown]


# --- decoding -------------------------------------------------------------------

def _decode_acquire(body: memoryview) -> Acquire:
    values = codec.USER_ACQUIRE.unpack(body)
    attrs = codec.parse_attrs(body, codec.USER_ACQUIRE.size)
    policy = codec.policy_from(values, attrs, "policy.")
    # xfrm_user_acquire has no outer family: take it from the template.
    family = next((t.family for t in policy.templates if t.family), None) or values["sel.family"]
    return Acquire(
        policy=policy,
        selector=codec.selector_from(values, "sel"),
        src=codec.unpack_address(values["saddr"], family),
        dst=codec.unpack_address(values["id.daddr"], family),
        proto=Proto(values["id.proto"]),
        seq=values["seq"],
    )


def _decode_expire(body: memoryview) -> Expire:
    values = codec.USER_EXPIRE.unpack(body)
    attrs = codec.parse_attrs(body, codec.USER_EXPIRE.size)
    return Expire(codec.sa_from(values, attrs, "state."), bool(values["hard"]))


def _decode_polexpire(body: memoryview) -> PolicyExpire:
    values = codec.USER_POLEXPIRE.unpack(body)
    attrs = codec.parse_attrs(body, codec.USER_POLEXPIRE.size)
    return PolicyExpire(codec.policy_from(values, attrs, "pol."), bool(values["hard"]))


def _decode_delsa(body: memoryview) -> SaDeleted:
    # The body is xfrm_usersa_id; the whole SA follows as XFRMA_SA.
    attrs = codec.parse_attrs(body, codec.USERSA_ID.size)
    info = attrs.get(c.XFRMA_SA)
    if info is None:
        raise codec.DecodeError("XFRM_MSG_DELSA notification without XFRMA_SA")
    return SaDeleted(codec.sa_from(codec.USERSA_INFO.unpack(info), attrs))


def _decode_delpolicy(body: memoryview) -> PolicyDeleted:
    attrs = codec.parse_attrs(body, codec.USERPOLICY_ID.size)
    info = attrs.get(c.XFRMA_POLICY)
    if info is None:
        raise codec.DecodeError("XFRM_MSG_DELPOLICY notification without XFRMA_POLICY")
    return PolicyDeleted(codec.policy_from(codec.USERPOLICY_INFO.unpack(info), attrs))


def _decode_flushsa(body: memoryview) -> SasFlushed:
    proto = codec.USERSA_FLUSH.unpack(body)["proto"] if len(body) >= 1 else 0
    return SasFlushed(None if proto in (0, c.IPSEC_PROTO_ANY) else Proto(proto))


def _decode_migrate(body: memoryview) -> Migrate:
    values = codec.USERPOLICY_ID.unpack(body)
    attrs = codec.parse_attrs(body, codec.USERPOLICY_ID.size)
    migrations = codec.migrations_from(attrs)
    family = socket.AF_INET if not migrations or migrations[0].new_dst.version == 4 else socket.AF_INET6
    return Migrate(codec.policy_id_from(values, attrs), migrations,
                   codec.encap_from(attrs.get(c.XFRMA_ENCAP), family))


def _decode_mapping(body: memoryview) -> Mapping:
    values = codec.USER_MAPPING.unpack(body)
    family = values["id.family"]
    sa_id = SaId(codec.unpack_address(values["id.daddr"], family), values["id.spi"],
                 Proto(values["id.proto"]))
    return Mapping(sa_id, values["reqid"],
                   codec.unpack_address(values["old_saddr"], family), values["old_sport"],
                   codec.unpack_address(values["new_saddr"], family), values["new_sport"])


def _decode_newae(body: memoryview) -> ReplayUpdate:
    values = codec.AEVENT_ID.unpack(body)
    family = values["sa_id.family"]
    sa_id = SaId(codec.unpack_address(values["sa_id.daddr"], family), values["sa_id.spi"],
                 Proto(values["sa_id.proto"]), codec.unpack_address(values["saddr"], family))
    return ReplayUpdate(sa_id, codec.decode_replay_info(body))


_DECODERS = {
    c.XFRM_MSG_ACQUIRE: _decode_acquire,
    c.XFRM_MSG_EXPIRE: _decode_expire,
    c.XFRM_MSG_POLEXPIRE: _decode_polexpire,
    c.XFRM_MSG_NEWSA: lambda body: SaAdded(codec.decode_sa(body)),
    c.XFRM_MSG_UPDSA: lambda body: SaUpdated(codec.decode_sa(body)),
    c.XFRM_MSG_DELSA: _decode_delsa,
    c.XFRM_MSG_FLUSHSA: _decode_flushsa,
    c.XFRM_MSG_NEWPOLICY: lambda body: PolicyAdded(codec.decode_policy(body)),
    c.XFRM_MSG_UPDPOLICY: lambda body: PolicyUpdated(codec.decode_policy(body)),
    c.XFRM_MSG_DELPOLICY: _decode_delpolicy,
    c.XFRM_MSG_FLUSHPOLICY: lambda body: PoliciesFlushed(),
    c.XFRM_MSG_MIGRATE: _decode_migrate,
    c.XFRM_MSG_MAPPING: _decode_mapping,
    c.XFRM_MSG_NEWAE: _decode_newae,
}


def decode_event(msg_type: int, body: bytes | memoryview) -> Event:
    """Decode one notification body; an unknown type becomes Unknown.

    Raises codec.DecodeError (a ValueError) for a malformed message.
    """
    decoder = _DECODERS.get(msg_type)
    if decoder is None:
        return Unknown(msg_type, bytes(body))
    try:
        return decoder(memoryview(body))
    except (KeyError, ValueError, struct.error) as error:
        raise codec.DecodeError(f"malformed XFRM notification of type {msg_type:#x}: "
                                f"{error}") from error


class XfrmEvents:
    """A socket in the XFRM multicast groups, decoding what arrives into events.

    The socket joins the groups of the network namespace of the thread that
    creates it.
    """

    def __init__(self, groups: tuple[int, ...] = DEFAULT_GROUPS, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self._socket = NetlinkSocket(groups=groups, rcvbuf=rcvbuf)

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> XfrmEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, timeout: float | None = 0.0) -> list[Event]:
        """Return the events that arrived, waiting up to ``timeout`` seconds for the first.

        After the first datagram, only what is already queued is read, and
        at most MAX_DATAGRAMS_PER_READ datagrams, so a call never runs long.
        A malformed notification is logged and skipped.
        """
        events: list[Event] = []
        wait = timeout
        for _ in range(MAX_DATAGRAMS_PER_READ):
            try:
                messages = self._socket.receive(wait)
            except OSError as error:
                if error.errno != errno_codes.ENOBUFS:
                    raise
                log.warning("XFRM event buffer overflowed; events were lost")
                events.append(Overrun())
                wait = 0.0
                continue
            if not messages:
                break
            for msg_type, _flags, _seq, body in messages:
                if msg_type < c.XFRM_MSG_NEWSA:
                    continue  # NLMSG_NOOP and friends
                try:
                    events.append(decode_event(msg_type, body))
                except codec.DecodeError as error:
                    log.warning("skipping XFRM notification: %s", error)
            wait = 0.0
        return events
