"""FakeXfrm: the XfrmApi on in-memory tables, for tests of code that uses xfrm.

It follows the kernel's rules where a caller can observe them. SAs are
identified by (dst, spi, proto) and mark, policies by (selector, dir, mark,
if_id), and the same requests fail with the same exceptions. alloc_spi
leaves a larval SA that only update_sa completes. MIGRATE moves SAs and
templates the way net/xfrm/xfrm_policy.c does and cannot remove an
encapsulation. Changes are announced as events to the sources from
``events()``.

What it does not model is traffic. ``count_traffic`` simulates packets by
advancing sequence numbers and counters. ``expire`` and ``acquire`` send
the notifications that the kernel would, and ``fail_next`` makes a request
fail with a chosen errno.
"""

from __future__ import annotations

import errno as errno_codes
import itertools
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from xfrm import codec
from xfrm import constants as c
from xfrm import events as ev
from xfrm import ops
from xfrm.api import KernelFeatures, XfrmApi
from xfrm.errors import XfrmError, error_for
from xfrm.model import (
    Address,
    LifetimeCurrent,
    Mark,
    Mode,
    Policy,
    PolicyId,
    Proto,
    ReplayState,
    SaId,
    SecurityAssociation,
    Selector,
    to_address,
)

# Algorithms the fake accepts, with their valid key lengths in bytes (None: any).
KNOWN_ALGORITHMS: dict[str, tuple[int, ...] | None] = {
    "rfc4106(gcm(aes))": (20, 28, 36),
    "rfc7539esp(chacha20,poly1305)": (36,),
    "cbc(aes)": (16, 24, 32),
    "hmac(sha1)": None,
    "hmac(sha256)": None,
    "hmac(sha384)": None,
    "hmac(sha512)": None,
}

# The multicast group of each event type.
_EVENT_GROUPS = {
    ev.Acquire: c.XFRMNLGRP_ACQUIRE,
    ev.Expire: c.XFRMNLGRP_EXPIRE,
    ev.PolicyExpire: c.XFRMNLGRP_EXPIRE,
    ev.SaAdded: c.XFRMNLGRP_SA,
    ev.SaUpdated: c.XFRMNLGRP_SA,
    ev.SaDeleted: c.XFRMNLGRP_SA,
    ev.SasFlushed: c.XFRMNLGRP_SA,
    ev.PolicyAdded: c.XFRMNLGRP_POLICY,
    ev.PolicyUpdated: c.XFRMNLGRP_POLICY,
    ev.PolicyDeleted: c.XFRMNLGRP_POLICY,
    ev.PoliciesFlushed: c.XFRMNLGRP_POLICY,
    ev.Migrate: c.XFRMNLGRP_MIGRATE,
    ev.Mapping: c.XFRMNLGRP_MAPPING,
    ev.ReplayUpdate: c.XFRMNLGRP_AEVENTS,
}


class FakeEvents:
    """Events from a FakeXfrm; ``fileno()`` becomes readable while events are queued."""

    def __init__(self, owner: FakeXfrm, groups: tuple[int, ...]) -> None:
        self.owner = owner
        self.groups = set(groups)
        self.queue: list[ev.Event] = []
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def deliver(self, event: ev.Event) -> None:
        if _EVENT_GROUPS.get(type(event)) in self.groups:
            self.queue.append(event)
            self._writer.send(b"\0")

    def read(self, timeout: float | None = 0.0) -> list[ev.Event]:
        """Return the queued events; nothing arrives while waiting, so ``timeout`` is not used."""
        events, self.queue = self.queue, []
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        return events

    def close(self) -> None:
        if self in self.owner.sources:
            self.owner.sources.remove(self)
        self._reader.close()
        self._writer.close()

    def __enter__(self) -> FakeEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _Entry:
    """One SA in the fake table, with the counters the kernel keeps beside it."""

    sa: SecurityAssociation
    replay: ReplayState
    current: LifetimeCurrent
    larval: bool = False
    serial: int = -1  # set by _SaTable.add

    def snapshot(self) -> SecurityAssociation:
        return self.sa.replace(replay=self.replay, current=self.current)


class _SaTable:
    """The fake's SAs, indexed by (dst, spi, proto) and by outer addresses and reqid, as in the kernel."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}  # by serial number, in insertion order
        self._by_spi: dict[tuple[Any, ...], dict[int, _Entry]] = {}
        self._by_addresses: dict[tuple[Any, ...], dict[int, _Entry]] = {}
        self._serials = itertools.count()

    def __iter__(self) -> Iterator[_Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _keys(sa: SecurityAssociation) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        return (sa.dst, sa.spi, sa.proto), (sa.src, sa.dst, sa.proto, sa.reqid)

    def add(self, entry: _Entry) -> None:
        serial = next(self._serials)
        entry.serial = serial
        self._entries[serial] = entry
        spi_key, address_key = self._keys(entry.sa)
        self._by_spi.setdefault(spi_key, {})[serial] = entry
        self._by_addresses.setdefault(address_key, {})[serial] = entry

    def remove(self, entry: _Entry) -> None:
        del self._entries[entry.serial]
        spi_key, address_key = self._keys(entry.sa)
        del self._by_spi[spi_key][entry.serial]
        del self._by_addresses[address_key][entry.serial]

    def with_spi(self, dst: Address, spi: int, proto: Proto) -> list[_Entry]:
        return list(self._by_spi.get((dst, spi, proto), {}).values())

    def with_addresses(self, src: Address, dst: Address, proto: Proto, reqid: int) -> list[_Entry]:
        """Return the SAs between ``src`` and ``dst`` with ``reqid``; reqid 0 matches any."""
        if reqid:
            return list(self._by_addresses.get((src, dst, proto, reqid), {}).values())
        return [entry for key, entries in self._by_addresses.items()
                if key[:3] == (src, dst, proto) for entry in entries.values()]


def _mark_key(mark: Mark | None) -> tuple[int, int]:
    return (mark.value, mark.mask) if mark is not None else (0, 0)


def _policy_key(policy_id: PolicyId) -> tuple[Any, ...]:
    return (policy_id.selector, policy_id.dir, _mark_key(policy_id.mark), policy_id.if_id)


def _fresh_replay(sa: SecurityAssociation) -> ReplayState:
    words = (sa.replay_window + 31) // 32 if sa.uses_esn_struct else 1
    return ReplayState(bitmap=(0,) * words)


def _normalize(sa: SecurityAssociation) -> SecurityAssociation:
    """Return ``sa`` as the kernel reports it: an all-matching selector reads back as None."""
    sel = sa.selector
    if sel is not None and sel == Selector.any(sel.family):
        return sa.replace(selector=None)
    return sa


@dataclass
class _Failure:
    request_type: type
    errno: int
    count: int


class FakeXfrm(XfrmApi):
    """In-memory XFRM tables behind the XfrmApi interface.

    ``migrate_supported`` sets whether MIGRATE works, as if the kernel had
    CONFIG_XFRM_MIGRATE. ``clock`` returns seconds since the epoch, used
    as the add time of new SAs.
    """

    def __init__(self, migrate_supported: bool = True, clock: Callable[[], float] = time.time) -> None:
        self._features = KernelFeatures(migrate=migrate_supported)
        self.clock = clock
        self.sas = _SaTable()
        self.policies: dict[tuple[Any, ...], Policy] = {}
        # (selector, dir) -> keys of self.policies: how MIGRATE finds a policy.
        self._by_selector: dict[tuple[Any, ...], set[tuple[Any, ...]]] = {}
        self.sources: list[FakeEvents] = []
        self.requests: list[ops.Op] = []  # every request run, for tests to inspect
        self._index_generator = 0
        self._failures: list[_Failure] = []

    # --- XfrmApi ---------------------------------------------------------------

    def execute(self, requests: Sequence[ops.Op]) -> list[Any]:
        for request in requests:
            # Raise the ValueError or TypeError that XfrmClient would raise
            # before sending anything.
            codec.encode_op(request)
        results = []
        for request in requests:
            self.requests.append(request)
            try:
                results.append(self._apply(request))
            except XfrmError as error:
                results.append(error)
        return results

    def dump_sas(self) -> list[SecurityAssociation]:
        return [entry.snapshot() for entry in self.sas]

    def dump_policies(self) -> list[Policy]:
        return list(self.policies.values())

    def features(self) -> KernelFeatures:
        return self._features

    def events(self, groups: tuple[int, ...] = ev.DEFAULT_GROUPS) -> FakeEvents:
        source = FakeEvents(self, groups)
        self.sources.append(source)
        return source

    # --- stand-ins for traffic and the kernel's own events ---------------------

    def fail_next(self, request_type: type, errno: int, count: int = 1) -> None:
        """Make the next ``count`` requests of ``request_type`` (e.g. ops.AddSa) fail with ``errno``."""
        self._failures.append(_Failure(request_type, errno, count))

    def emit(self, event: ev.Event) -> None:
        """Deliver ``event`` to every source subscribed to its group."""
        for source in list(self.sources):
            source.deliver(event)

    def count_traffic(self, sa_id: SaId, packets: int = 1, size: int = 100,
                      inbound: bool = False) -> None:
        """Account ``packets`` of ``size`` bytes on SA ``sa_id``, as the kernel would.

        Outbound traffic advances the output sequence number; inbound traffic
        advances the highest received one and sets its bits in the window.
        Raises SaNotFound.
        """
        entry = self._find_sa(sa_id, "count traffic on SA")
        replay = entry.replay
        if inbound:
            top = replay.input_sequence + packets
            window = entry.sa.replay_window if entry.sa.uses_esn_struct else 32
            words = max(1, len(replay.bitmap))
            bits = (1 << min(packets, window)) - 1
            value = sum(w << (32 * i) for i, w in enumerate(replay.bitmap))
            value = ((value << packets) | bits) & ((1 << (32 * words)) - 1)
            bitmap = tuple((value >> (32 * i)) & 0xFFFFFFFF for i in range(words))
            entry.replay = ReplayState(replay.oseq, top & 0xFFFFFFFF, replay.oseq_hi, top >> 32, bitmap)
        else:
            top = replay.output_sequence + packets
            entry.replay = ReplayState(top & 0xFFFFFFFF, replay.seq, top >> 32, replay.seq_hi,
                                       replay.bitmap)
        now = int(self.clock())
        current = entry.current
        entry.current = LifetimeCurrent(current.bytes + packets * size, current.packets + packets,
                                        current.add_time, current.use_time or now)

    def expire(self, sa_id: SaId, hard: bool) -> None:
        """Announce that SA ``sa_id`` reached a limit; a hard one deletes it, as in the kernel."""
        entry = self._find_sa(sa_id, "expire SA")
        self.emit(ev.Expire(entry.snapshot().replace(aead=None, cipher=None, auth=None), hard))
        if hard:
            self.sas.remove(entry)
            self.emit(ev.SaDeleted(entry.snapshot()))

    def acquire(self, policy_id: PolicyId, src: Address | str, dst: Address | str, seq: int = 1) -> None:
        """Announce that traffic matched ``policy_id`` without an SA; raises PolicyNotFound."""
        policy = self._find_policy(policy_id, "acquire for")
        template = policy.templates[0] if policy.templates else None
        proto = template.proto if template is not None else Proto.ESP
        self.emit(ev.Acquire(policy, policy.selector, to_address(src), to_address(dst), proto, seq))

    # --- requests -------------------------------------------------------------

    def _apply(self, request: ops.Op) -> Any:
        for failure in self._failures:
            if isinstance(request, failure.request_type) and failure.count > 0:
                failure.count -= 1
                raise error_for(request.target, request.describe(), failure.errno)
        handler = getattr(self, "_op_" + type(request).__name__)
        return handler(request)

    def _error(self, request: ops.Op, errno: int, detail: str = "") -> XfrmError:
        return error_for(request.target, request.describe(), errno, detail)

    def _lookup_sa(self, sa_id: SaId) -> _Entry | None:
        # As __xfrm_state_lookup: the mark of the request, masked, must equal the SA's mark.
        value = sa_id.mark.value & sa_id.mark.mask if sa_id.mark is not None else 0
        for entry in self.sas.with_spi(sa_id.dst, sa_id.spi, sa_id.proto):
            mark_value, mark_mask = _mark_key(entry.sa.mark)
            if value & mark_mask == mark_value:
                return entry
        return None

    def _find_sa(self, sa_id: SaId, action: str) -> _Entry:
        entry = self._lookup_sa(sa_id)
        if entry is None:
            raise error_for("sa", f"{action} {sa_id}", errno_codes.ESRCH)
        return entry

    def _check_sa(self, request: ops.Op, sa: SecurityAssociation) -> None:
        """Apply the checks of the kernel's verify_newsa_info that a caller can hit."""
        if sa.proto == Proto.ESP and sa.aead is None and sa.cipher is None:
            raise self._error(request, errno_codes.EINVAL, "ESP needs an encryption algorithm")
        if sa.proto == Proto.AH and (sa.auth is None or sa.cipher or sa.aead):
            raise self._error(request, errno_codes.EINVAL, "AH needs an authentication algorithm only")
        if sa.esn and sa.replay_window == 0:
            raise self._error(request, errno_codes.EINVAL, "ESN replay window must be > 0")
        for algorithm in (sa.aead, sa.cipher, sa.auth):
            if algorithm is None:
                continue
            if algorithm.name not in KNOWN_ALGORITHMS:
                raise self._error(request, errno_codes.ENOSYS,
                                  f"requested algorithm {algorithm.name} not found")
            lengths = KNOWN_ALGORITHMS[algorithm.name]
            if lengths is not None and len(algorithm.key) not in lengths:
                raise self._error(request, errno_codes.EINVAL,
                                  f"invalid key length for {algorithm.name}")
        if sa.replay is not None and sa.uses_esn_struct and sa.replay.bitmap:
            if len(sa.replay.bitmap) != (sa.replay_window + 31) // 32:
                raise self._error(request, errno_codes.EINVAL, "replay bitmap of the wrong size")

    def _new_entry(self, sa: SecurityAssociation) -> _Entry:
        replay = sa.replay or _fresh_replay(sa)
        if sa.uses_esn_struct and not replay.bitmap:
            replay = ReplayState(replay.oseq, replay.seq, replay.oseq_hi, replay.seq_hi,
                                 _fresh_replay(sa).bitmap)
        current = sa.current or LifetimeCurrent(add_time=int(self.clock()))
        return _Entry(_normalize(sa.replace(replay=None, current=None)), replay, current)

    def _op_AddSa(self, request: ops.AddSa) -> None:
        sa = request.sa
        self._check_sa(request, sa)
        existing = self._lookup_sa(sa.id)
        if not request.update:
            if existing is not None:
                raise self._error(request, errno_codes.EEXIST)
            entry = self._new_entry(sa)
            self.sas.add(entry)
            self.emit(ev.SaAdded(entry.snapshot()))
            return
        if existing is None:
            raise self._error(request, errno_codes.ESRCH)
        if existing.larval:
            self.sas.remove(existing)
            self.sas.add(self._new_entry(sa))
        else:
            # xfrm_state_update changes only limits and the ports/address of an encapsulation.
            old = existing.sa
            if (old.encap is None) != (sa.encap is None) or (
                    old.encap is not None and sa.encap is not None and old.encap.type != sa.encap.type):
                raise self._error(request, errno_codes.EINVAL, "encapsulation cannot be added or removed")
            existing.sa = old.replace(lifetime=sa.lifetime, encap=sa.encap)
        self.emit(ev.SaUpdated(self._lookup_sa(sa.id).snapshot()))

    def _op_GetSa(self, request: ops.GetSa) -> SecurityAssociation | None:
        entry = self._lookup_sa(request.id)
        if entry is None:
            raise self._error(request, errno_codes.ESRCH)
        return entry.snapshot() if request.decode else None

    def _op_DeleteSa(self, request: ops.DeleteSa) -> None:
        entry = self._lookup_sa(request.id)
        if entry is None:
            raise self._error(request, errno_codes.ESRCH)
        self.sas.remove(entry)
        self.emit(ev.SaDeleted(entry.snapshot()))

    def _op_FlushSas(self, request: ops.FlushSas) -> None:
        for entry in self.sas:
            if request.proto is None or entry.sa.proto == request.proto:
                self.sas.remove(entry)
        self.emit(ev.SasFlushed(request.proto))

    def _op_AllocSpi(self, request: ops.AllocSpi) -> SecurityAssociation:
        if request.low > request.high:
            raise self._error(request, errno_codes.EINVAL, "SPI range is empty")
        spi = request.low
        while self.sas.with_spi(request.dst, spi, request.proto) and spi < request.high:
            spi += 1
        if self.sas.with_spi(request.dst, spi, request.proto):
            raise self._error(request, errno_codes.ENOENT, "no free SPI in the range")
        larval = SecurityAssociation(request.src, request.dst, spi, request.proto, request.mode,
                                     request.reqid, replay_window=0, mark=request.mark,
                                     if_id=request.if_id)
        self.sas.add(_Entry(larval, ReplayState(), LifetimeCurrent(add_time=int(self.clock())),
                            larval=True))
        return larval

    def _op_GetReplayState(self, request: ops.GetReplayState) -> ops.ReplayInfo:
        entry = self._lookup_sa(request.id)
        if entry is None:
            raise self._error(request, errno_codes.ESRCH)
        window = entry.sa.replay_window if entry.sa.uses_esn_struct else None
        return ops.ReplayInfo(entry.replay, entry.current, window)

    def _op_SetReplayState(self, request: ops.SetReplayState) -> None:
        entry = self._lookup_sa(request.id)
        if entry is None:
            raise self._error(request, errno_codes.ESRCH)
        sa = entry.sa
        if entry.larval:
            raise self._error(request, errno_codes.EINVAL, "SA is not valid yet")
        expected = sa.replay_window if sa.uses_esn_struct else None
        if (request.esn_window is None) != (expected is None):
            return  # the kernel ignores a replay state of the other struct
        words = len(request.replay.bitmap)
        if request.esn_window != expected or (expected is not None and words not in (0, (expected + 31) // 32)):
            raise self._error(request, errno_codes.EINVAL, "replay state does not fit the SA")
        replay = request.replay
        if not replay.bitmap:
            replay = ReplayState(replay.oseq, replay.seq, replay.oseq_hi, replay.seq_hi,
                                 _fresh_replay(sa).bitmap)
        entry.replay = replay
        if request.current is not None:
            entry.current = request.current

    # --- policies ----------------------------------------------------------------

    def _find_policy(self, policy_id: PolicyId, action: str) -> Policy:
        if policy_id.index:
            for policy in self.policies.values():
                if (policy.index == policy_id.index and _mark_key(policy.mark) == _mark_key(policy_id.mark)
                        and policy.if_id == policy_id.if_id):
                    return policy
        else:
            policy = self.policies.get(_policy_key(policy_id))
            if policy is not None:
                return policy
        raise error_for("policy", f"{action} {policy_id}", errno_codes.ENOENT)

    def _next_index(self, direction: int) -> int:
        # As xfrm_gen_index: the low 3 bits carry the direction.
        index = self._index_generator | direction
        self._index_generator += 8
        return index or 8

    def _op_AddPolicy(self, request: ops.AddPolicy) -> None:
        policy = request.policy
        if policy.index and policy.index & 7 != policy.dir:
            raise self._error(request, errno_codes.EINVAL, "index does not match the direction")
        key = _policy_key(policy.id)
        existing = self.policies.get(key)
        if existing is not None and not request.update:
            raise self._error(request, errno_codes.EEXIST)
        index = existing.index if existing is not None else (policy.index or self._next_index(policy.dir))
        self.policies[key] = policy.replace(index=index)
        self._by_selector.setdefault((policy.selector, policy.dir), set()).add(key)
        event = ev.PolicyUpdated if request.update else ev.PolicyAdded
        self.emit(event(self.policies[key]))

    def _op_GetPolicy(self, request: ops.GetPolicy) -> Policy:
        try:
            return self._find_policy(request.id, "get")
        except XfrmError:
            raise self._error(request, errno_codes.ENOENT) from None

    def _op_DeletePolicy(self, request: ops.DeletePolicy) -> None:
        try:
            policy = self._find_policy(request.id, "delete")
        except XfrmError:
            raise self._error(request, errno_codes.ENOENT) from None
        del self.policies[_policy_key(policy.id)]
        self._by_selector[(policy.selector, policy.dir)].discard(_policy_key(policy.id))
        self.emit(ev.PolicyDeleted(policy))

    def _op_FlushPolicies(self, request: ops.FlushPolicies) -> None:
        self.policies.clear()
        self._by_selector.clear()
        self.emit(ev.PoliciesFlushed())

    # --- MIGRATE -------------------------------------------------------------------

    def _op_Migrate(self, request: ops.Migrate) -> None:
        if not self._features.migrate:
            raise self._error(request, errno_codes.ENOPROTOOPT)
        if not 1 <= len(request.migrations) <= c.XFRM_MAX_DEPTH:
            raise self._error(request, errno_codes.EINVAL, "1 to 6 migrations per message")
        policy = self._migrate_policy(request)
        if policy is None:
            raise self._error(request, errno_codes.ENOENT)

        for item in request.migrations:
            entry = self._migrate_state(item, request.policy.if_id)
            if entry is None:
                continue  # the kernel skips entries without a state, too
            self._migrate_entry(request, entry, item)

        templates = []
        for template in policy.templates:
            for item in request.migrations:
                if _template_matches(template, item):
                    template = template.__class__(
                        src=item.new_src, dst=item.new_dst, proto=template.proto, mode=template.mode,
                        reqid=template.reqid, spi=template.spi, share=template.share,
                        optional=template.optional, aalgos=template.aalgos, ealgos=template.ealgos,
                        calgos=template.calgos, family=socket.AF_INET if item.new_dst.version == 4
                        else socket.AF_INET6)
                    break
            templates.append(template)
        self.policies[_policy_key(policy.id)] = policy.replace(templates=tuple(templates))
        self.emit(ev.Migrate(PolicyId(policy.selector, policy.dir), request.migrations, request.encap))

    def _migrate_policy(self, request: ops.Migrate) -> Policy | None:
        # As xfrm_migrate_policy_find: by selector, direction and if_id, not by mark;
        # the lowest priority value wins.
        requested = request.policy
        keys = self._by_selector.get((requested.selector, requested.dir), set())
        candidates = [self.policies[key] for key in keys
                      if requested.if_id == 0 or self.policies[key].if_id == requested.if_id]
        return min(candidates, key=lambda p: p.priority, default=None)

    def _migrate_state(self, item: Any, if_id: int) -> _Entry | None:
        for entry in self.sas.with_addresses(item.old_src, item.old_dst, item.proto, item.reqid):
            sa = entry.sa
            if not entry.larval and sa.mode == item.mode and (if_id == 0 or sa.if_id == if_id):
                return entry
        return None

    def _migrate_entry(self, request: ops.Migrate, entry: _Entry, item: Any) -> None:
        moved = entry.sa.replace(src=item.new_src, dst=item.new_dst,
                                 encap=request.encap if request.encap is not None else entry.sa.encap)
        if item.new_dst != item.old_dst and self._lookup_sa(moved.id) is not None:
            raise self._error(request, errno_codes.ENODATA, "the new SA exists already")
        self.sas.remove(entry)
        self.sas.add(_Entry(moved, entry.replay, entry.current))


def _template_matches(template: Any, item: Any) -> bool:
    # As migrate_tmpl_match: addresses count for tunnel and BEET mode only.
    if template.mode != item.mode or template.proto != item.proto:
        return False
    if item.reqid and template.reqid != item.reqid:
        return False
    if template.mode in (Mode.TUNNEL, Mode.BEET):
        return template.src == item.old_src and template.dst == item.old_dst
    return True
