"""The daemon's view of the kernel's IPsec tables: CHILD_SAs, trap policies, moves, events.

`Kernel` installs what the IKE core negotiates through an `xfrm.XfrmApi` (the kernel's
`XfrmClient`, or `FakeXfrm` in tests) and remembers what it installed, without keys:

- a CHILD_SA: its inbound SA (completing the larval SA that ALLOCSPI reserved), its outbound
  SA and its policies (see agent.kernel_objects). A rekey adds the new pair of SAs under the
  same reqid, so the policies stay, and the old pair goes when the core deletes it;
- trap policies (`start_action = "trap"`): policies with a template but no SA, so that the
  first packet makes the kernel send an ACQUIRE, which the daemon answers by initiating;
- policies are stacked per selector: when two owners (a trap and the CHILD_SA it brought up,
  or two CHILD_SAs with the same selectors) want the same policy, the newest is installed and
  the one below comes back when it goes;
- `move_ike_sa` moves every CHILD_SA of an IKE SA to new outer addresses (MOBIKE, RFC 4555
  §3.5) with `XfrmApi.move`, keeping SPIs, keys and sequence numbers.

Everything rmobike installs uses reqids and policy priorities from reserved ranges
(kernel_objects.REQID_MIN.., PRIORITY_MIN..), and the state file lists it; at start-up
`remove_leftovers` deletes what an earlier run left in those ranges and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.ike.events import ChildSaInfo, Mode
from agent.ike.payloads import TrafficSelector
from agent.kernel_objects import (
    REQID_MAX,
    REQID_MIN,
    Endpoints,
    SaOptions,
    UnsupportedSelector,
    child_policies,
    child_sas,
    owns_policy,
    owns_reqid,
    policy_key,
    without_keys,
)
from agent.logs import SaLogger
from xfrm import KEEP, XfrmApi, ops
from xfrm import constants as xc
from xfrm import events as xev
from xfrm.errors import PolicyExists, PolicyNotFound, SaNotFound, XfrmError
from xfrm.model import Direction, Encap, Lifetime, LifetimeCurrent, Policy, SaId, SecurityAssociation, Template
from xfrm.move import MoveError, MoveResult, SaMove

logger = logging.getLogger(__name__)

# Larval SAs from ALLOCSPI carry this reqid until the real SA replaces them, so that a
# restarted daemon recognises those an earlier run left behind. No template uses it.
LARVAL_REQID = REQID_MIN
EVENT_GROUPS = (xc.XFRMNLGRP_ACQUIRE, xc.XFRMNLGRP_EXPIRE, xc.XFRMNLGRP_MAPPING)
STATE_FILE_NAME = "kernel-state.json"


class KernelError(Exception):
    """Installing, removing or moving kernel state failed; the message names what and why."""


@dataclass
class InstalledChild:
    """One CHILD_SA in the kernel, as installed (keys left out)."""

    ike_sa: int
    connection: str
    name: str
    reqid: int  # the kernel's reqid, shared with the CHILD_SAs it was rekeyed into
    spi_in: int
    spi_out: int
    mode: Mode
    inbound: SecurityAssociation
    outbound: SecurityAssociation
    prepared: SaId | None = None  # a copy of the inbound SA at another local address (prepare_inbound)

    @property
    def local(self) -> str:
        return str(self.inbound.dst)

    @property
    def remote(self) -> str:
        return str(self.outbound.dst)


@dataclass
class PolicySet:
    """The policies of one reqid: a CHILD_SA (and its rekeyed successors) or a trap."""

    reqid: int
    connection: str
    child: str
    policies: list[Policy]
    trap: bool = False


@dataclass(frozen=True)
class Counters:
    """Kernel counters of a CHILD_SA's two SAs."""

    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0


# Decisions that kernel events lead to.

@dataclass(frozen=True)
class RekeyDue:
    """An SA of the CHILD_SA reached its soft limit (XFRM_MSG_EXPIRE, hard=0)."""

    ike_sa: int
    spi_in: int


@dataclass(frozen=True)
class ChildExpired:
    """An SA of the CHILD_SA reached its hard limit; the kernel deleted it."""

    ike_sa: int
    spi_in: int


@dataclass(frozen=True)
class TrapTriggered:
    """A packet matched a trap policy (XFRM_MSG_ACQUIRE): the CHILD_SA is wanted."""

    connection: str
    child: str


@dataclass(frozen=True)
class MappingChanged:
    """ESP-in-UDP for a CHILD_SA arrives from a new address or port (XFRM_MSG_MAPPING)."""

    ike_sa: int
    spi_in: int
    new_address: str
    new_port: int


Decision = RekeyDue | ChildExpired | TrapTriggered | MappingChanged


# The owner of a policy set: ("child", reqid) for a CHILD_SA and its rekeyed successors, or
# ("trap", connection, child) for trap policies.
Owner = tuple


@dataclass
class _Reqids:
    """Kernel reqids in rmobike's range, above the larval one, with a count of their users."""

    users: Counter = field(default_factory=Counter)
    next: int = LARVAL_REQID + 1

    def allocate(self) -> int:
        for _ in range(REQID_MAX - REQID_MIN):
            reqid = self.next
            self.next = reqid + 1 if reqid < REQID_MAX else LARVAL_REQID + 1
            if reqid not in self.users:
                self.users[reqid] = 1
                return reqid
        raise KernelError(f"all {REQID_MAX - REQID_MIN} reqids of rmobike's range are in use")

    def retain(self, reqid: int) -> None:
        self.users[reqid] += 1

    def release(self, reqid: int) -> None:
        self.users[reqid] -= 1
        if self.users[reqid] <= 0:
            del self.users[reqid]


class Kernel:
    """CHILD_SAs, trap policies and moves on an XfrmApi; see the module docstring.

    `state_dir`: where the list of installed objects is kept (None: nowhere, for tests).
    """

    def __init__(self, api: XfrmApi, state_dir: Path | None = None) -> None:
        self.api = api
        self.state_file = Path(state_dir) / STATE_FILE_NAME if state_dir is not None else None
        self._children: dict[int, InstalledChild] = {}  # by inbound SPI
        self._kernel_reqids: dict[int, int] = {}  # the core's reqid -> kernel reqid
        self._policy_sets: dict[Owner, PolicySet] = {}
        self._traps: dict[tuple[str, str], int] = {}  # (connection, child) -> kernel reqid
        self._owners: dict[tuple, list[Owner]] = {}  # policy key -> owners, the installed one last
        self._reqids = _Reqids()

    # --- start-up and shutdown ---------------------------------------------------------------

    def remove_leftovers(self) -> tuple[int, int]:
        """Delete the SAs and policies in rmobike's ranges that an earlier run left behind.

        Returns (SAs removed, policies removed). Objects outside the ranges are never touched.
        """
        recorded = self._read_state_file()
        removed = self._remove_owned()
        if removed != (0, 0):
            logger.info("removed %d SAs and %d policies left by an earlier run (its state file listed "
                        "%d SAs and %d policies)", removed[0], removed[1], recorded[0], recorded[1])
        self._write_state_file()
        return removed

    def probe_features(self) -> None:
        """Find out now whether the kernel has XFRM_MSG_MIGRATE, so the first move does not wait for it."""
        try:
            features = self.api.features()
        except XfrmError as error:
            logger.warning("probing the kernel's XFRM features failed: %s; moves will probe again", error)
            return
        logger.debug("kernel XFRM features: %s", features)

    def remove_all(self) -> None:
        """Delete every CHILD_SA and trap policy, then anything else in rmobike's ranges (at shutdown).

        The last step catches larval SAs of negotiations that never completed.
        """
        for spi_in in list(self._children):
            self.remove_child(spi_in)
        for connection, child in list(self._traps):
            self.remove_trap(connection, child)
        removed = self._remove_owned()
        if removed != (0, 0):
            logger.info("removed %d more SAs and %d more policies in rmobike's ranges", *removed)
        self._write_state_file()

    def _remove_owned(self) -> tuple[int, int]:
        """Delete every SA and policy in rmobike's ranges; return how many of each went."""
        # The larval SA that the kernel creates for an ACQUIRE has SPI 0, and XFRM_MSG_DELSA
        # cannot name it; it expires by itself (net.core.xfrm_acq_expires, 30 s by default).
        sas = [sa for sa in self.api.dump_sas() if owns_reqid(sa.reqid) and sa.spi != 0]
        policies = [policy for policy in self.api.dump_policies() if owns_policy(policy)]
        if not sas and not policies:
            return 0, 0
        requests = [ops.DeleteSa(sa.id) for sa in sas] + [ops.DeletePolicy(policy.id) for policy in policies]
        results = self.api.execute(requests)
        for result in results:
            if isinstance(result, XfrmError) and not isinstance(result, (SaNotFound, PolicyNotFound)):
                logger.error("removing state in rmobike's ranges: %s", result)
        removed = [result is None for result in results]
        return sum(removed[:len(sas)]), sum(removed[len(sas):])

    # --- SPIs ----------------------------------------------------------------------------------

    def allocate_spi(self, local: str, remote: str) -> int:
        """Reserve an inbound ESP SPI with XFRM_MSG_ALLOCSPI (a larval SA the kernel drops after
        about 30 s unless install_child completes it)."""
        try:
            return self.api.alloc_spi(remote, local, reqid=LARVAL_REQID)
        except XfrmError as error:
            raise KernelError(f"allocating an inbound SPI for {remote} -> {local} failed: {error}") from error

    # --- CHILD_SAs -----------------------------------------------------------------------------

    def install_child(self, ike_sa: int, connection: str, info: ChildSaInfo, *,
                      lifetime: Lifetime = Lifetime(), replay_window: int = 32) -> InstalledChild:
        """Install a new CHILD_SA: both SAs, then its policies (outbound last).

        A CHILD_SA whose core reqid is known (a rekey) keeps the policies of that reqid. A
        CHILD_SA with a trap takes the trap's reqid: adding its outbound SA then replaces the
        larval SA that the kernel created for the ACQUIRE, which would drop packets until it
        expires. Raises KernelError, after removing whatever part of it was installed.
        """
        reqid = self._kernel_reqids.get(info.reqid)
        new_reqid = reqid is None
        if new_reqid:
            reqid = self._reqid_for_child(connection, info.name)
            self._kernel_reqids[info.reqid] = reqid
        try:
            child = self._install_sas(ike_sa, connection, info, SaOptions(reqid, lifetime, replay_window))
        except KernelError:
            if new_reqid:
                self._forget_reqid(info.reqid)
            raise
        self._children[info.spi_in] = child
        if ("child", reqid) not in self._policy_sets:
            self._install_child_policies(child, info.local_ts, info.remote_ts)
        self._write_state_file()
        _child_log(child).info("installed CHILD_SA %s: %08x_i %08x_o %s -> %s, reqid %#x%s", info.name, info.spi_in,
                               info.spi_out, child.local, child.remote, reqid, ", ESP in UDP" if info.udp_encap else "")
        return child

    def _reqid_for_child(self, connection: str, name: str) -> int:
        trap_reqid = self._traps.get((connection, name))
        if trap_reqid is not None and ("child", trap_reqid) not in self._policy_sets:
            self._reqids.retain(trap_reqid)
            return trap_reqid
        return self._reqids.allocate()

    def _install_sas(self, ike_sa: int, connection: str, info: ChildSaInfo, options: SaOptions) -> InstalledChild:
        inbound, outbound = child_sas(info, options)
        try:
            self._complete_inbound(inbound)
        except XfrmError as error:
            self._delete_sas([inbound.id])  # the larval SA from ALLOCSPI
            raise KernelError(f"CHILD_SA {info.name}: installing inbound SA {inbound.id} failed: {error}") from error
        try:
            self.api.add_sa(outbound)
        except XfrmError as error:
            self._delete_sas([inbound.id])
            raise KernelError(f"CHILD_SA {info.name}: installing outbound SA {outbound.id} failed: {error}") from error
        return InstalledChild(ike_sa, connection, info.name, options.reqid, info.spi_in, info.spi_out, info.mode,
                              without_keys(inbound), without_keys(outbound))

    def _complete_inbound(self, inbound: SecurityAssociation) -> None:
        try:
            self.api.update_sa(inbound)
        except SaNotFound:
            # The larval SA from ALLOCSPI timed out (or the SPI came from elsewhere): add it.
            self.api.add_sa(inbound)

    def _install_child_policies(self, child: InstalledChild, local_ts: tuple[TrafficSelector, ...],
                                remote_ts: tuple[TrafficSelector, ...]) -> None:
        endpoints = Endpoints(child.local, child.remote, child.mode, child.reqid)
        try:
            policies = child_policies(endpoints, local_ts, remote_ts)
            self._install_policy_set(("child", child.reqid),
                                     PolicySet(child.reqid, child.connection, child.name, policies))
        except (UnsupportedSelector, KernelError) as error:
            self._delete_sas([child.inbound.id, child.outbound.id])
            del self._children[child.spi_in]
            for core_reqid, kernel_reqid in list(self._kernel_reqids.items()):
                if kernel_reqid == child.reqid:
                    self._forget_reqid(core_reqid)
            raise KernelError(f"CHILD_SA {child.name}: installing policies failed: {error}") from error

    def remove_child(self, spi_in: int) -> None:
        """Delete a CHILD_SA's SAs; its policies too when no CHILD_SA with its reqid remains."""
        child = self._children.pop(spi_in, None)
        if child is None:
            return
        self._delete_sas([child.inbound.id, child.outbound.id, *([child.prepared] if child.prepared else [])])
        if not any(other.reqid == child.reqid for other in self._children.values()):
            self._remove_policy_set(("child", child.reqid))
            for core_reqid, kernel_reqid in list(self._kernel_reqids.items()):
                if kernel_reqid == child.reqid:
                    self._forget_reqid(core_reqid)
        self._write_state_file()
        _child_log(child).info("removed CHILD_SA %s: %08x_i %08x_o", child.name, child.spi_in, child.spi_out)

    def _forget_reqid(self, core_reqid: int) -> None:
        reqid = self._kernel_reqids.pop(core_reqid, None)
        if reqid is not None:
            self._reqids.release(reqid)

    def _delete_sas(self, sa_ids: Iterable[SaId]) -> None:
        results = self.api.execute([_delete_sa(sa_id) for sa_id in sa_ids])
        for result in results:
            if isinstance(result, XfrmError) and not isinstance(result, SaNotFound):
                logger.error("%s", result)

    def child(self, spi_in: int) -> InstalledChild | None:
        return self._children.get(spi_in)

    def children_of(self, ike_sa: int) -> list[InstalledChild]:
        return [child for child in self._children.values() if child.ike_sa == ike_sa]

    @property
    def children(self) -> list[InstalledChild]:
        return list(self._children.values())

    def reassign(self, old_ike_sa: int, new_ike_sa: int) -> None:
        """Move the records of an IKE SA's CHILD_SAs to the IKE SA that replaced it (IKE rekey)."""
        for child in self._children.values():
            if child.ike_sa == old_ike_sa:
                child.ike_sa = new_ike_sa

    def counters(self, spi_in: int) -> Counters:
        """Return the kernel's byte and packet counters of a CHILD_SA (zeros for missing SAs)."""
        child = self._children.get(spi_in)
        if child is None:
            return Counters()
        results = self.api.execute([ops.GetSa(child.inbound.id), ops.GetSa(child.outbound.id)])
        current = [result.current if isinstance(result, SecurityAssociation) and result.current else None
                   for result in results]
        bytes_in, packets_in = (current[0].bytes, current[0].packets) if current[0] else (0, 0)
        bytes_out, packets_out = (current[1].bytes, current[1].packets) if current[1] else (0, 0)
        return Counters(bytes_in, packets_in, bytes_out, packets_out)

    # --- traps ---------------------------------------------------------------------------------

    def install_trap(self, connection: str, child: str, *, local: str, remote: str, mode: Mode,
                     local_ts: tuple[TrafficSelector, ...], remote_ts: tuple[TrafficSelector, ...]) -> None:
        """Install trap policies for a CHILD_SA config; raises KernelError."""
        if (connection, child) in self._traps:
            return
        reqid = self._reqids.allocate()
        try:
            policies = child_policies(Endpoints(local, remote, mode, reqid), local_ts, remote_ts)
            self._install_policy_set(("trap", connection, child), PolicySet(reqid, connection, child, policies, trap=True))
        except (UnsupportedSelector, KernelError) as error:
            self._reqids.release(reqid)
            raise KernelError(f"trap for {connection}/{child}: {error}") from error
        self._traps[(connection, child)] = reqid
        self._write_state_file()
        SaLogger(logger, connection, child_sa=child).info("installed trap policies for %s/%s, %s -> %s, reqid %#x",
                                                          connection, child, local, remote, reqid)

    def remove_trap(self, connection: str, child: str) -> None:
        reqid = self._traps.pop((connection, child), None)
        if reqid is None:
            return
        self._remove_policy_set(("trap", connection, child))
        self._reqids.release(reqid)
        self._write_state_file()
        SaLogger(logger, connection, child_sa=child).info("removed trap policies for %s/%s", connection, child)

    def has_trap(self, connection: str, child: str) -> bool:
        return (connection, child) in self._traps

    @property
    def traps(self) -> list[tuple[str, str]]:
        return list(self._traps)

    # --- policy stacks -------------------------------------------------------------------------

    def _install_policy_set(self, owner: Owner, policy_set: PolicySet) -> None:
        """Install a policy set on top of each of its selectors' stacks (inbound first)."""
        ordered = sorted(policy_set.policies, key=lambda p: p.dir == Direction.OUT)
        installed: list[Policy] = []
        try:
            for policy in ordered:
                self._push_policy(owner, policy)
                installed.append(policy)
        except KernelError:
            for policy in installed:
                self._pop_policy(owner, policy_key(policy))
            raise
        self._policy_sets[owner] = policy_set

    def _push_policy(self, owner: Owner, policy: Policy) -> None:
        key = policy_key(policy)
        stack = self._owners.setdefault(key, [])
        try:
            if stack:
                self.api.update_policy(policy)
            else:
                self._add_new_policy(policy)
        except XfrmError as error:
            if not stack:
                del self._owners[key]
            raise KernelError(f"installing {policy.id} failed: {error}") from error
        stack.append(owner)

    def _add_new_policy(self, policy: Policy) -> None:
        try:
            self.api.add_policy(policy)
        except PolicyExists:
            existing = self.api.get_policy(policy.id)
            if not owns_policy(existing):
                raise KernelError(f"{policy.id} exists already and was not installed by rmobike "
                                  f"(priority {existing.priority})") from None
            self.api.update_policy(policy)

    def _remove_policy_set(self, owner: Owner) -> None:
        policy_set = self._policy_sets.pop(owner, None)
        if policy_set is None:
            return
        # Outbound first, so that nothing is sent in clear while inbound policies go.
        for policy in sorted(policy_set.policies, key=lambda p: p.dir != Direction.OUT):
            self._pop_policy(owner, policy_key(policy))

    def _pop_policy(self, owner: Owner, key: tuple) -> None:
        """Remove `owner` from a selector's stack; reinstall the owner below, or delete the policy."""
        stack = self._owners.get(key, [])
        if owner not in stack:
            return
        was_installed = stack[-1] == owner
        stack.remove(owner)
        if not was_installed:
            return
        try:
            if stack:
                self.api.update_policy(self._policy_of(stack[-1], key))
            else:
                del self._owners[key]
                self.api.delete_policy(self._policy_of(owner, key).id)
        except PolicyNotFound:
            logger.warning("policy %s was already gone from the kernel", key[0])
        except XfrmError as error:
            logger.error("removing policy of %s failed: %s", owner, error)

    def _policy_of(self, owner: Owner, key: tuple) -> Policy:
        policy_set = self._policy_sets.get(owner)
        for policy in policy_set.policies if policy_set is not None else ():
            if policy_key(policy) == key:
                return policy
        # The set being removed is no longer in _policy_sets; its policy id is all that is needed.
        selector, direction, mark, if_id = key
        return Policy(selector, direction, mark=mark, if_id=if_id)

    # --- moves (MOBIKE) ------------------------------------------------------------------------

    def prepare_inbound(self, ike_sa: int, local: str) -> int:
        """Add, beside each inbound SA of `ike_sa`, a copy whose destination is `local`.

        For SWITCH_TO_IP_ADDRESS: ESP that the peer sends to this host's new address before the
        IKE SA has moved there finds a state. A copy has the SPI, keys and encapsulation of its
        original, and the inbound policies accept it because their templates name the peer's
        address only. `move_ike_sa` and `drop_prepared` delete the copies. Returns how many
        were added; raises KernelError.
        """
        self.drop_prepared(ike_sa)
        added = 0
        for child in self.children_of(ike_sa):
            if child.local == local:
                continue
            try:
                original = self.api.get_sa(child.inbound.id)
                copy = original.replace(dst=local, replay=None, current=None)
                self.api.add_sa(copy)
            except (XfrmError, ValueError) as error:
                raise KernelError(f"CHILD_SA {child.name}: preparing inbound SA {child.spi_in:08x} at {local} "
                                  f"failed: {error}") from error
            child.prepared = copy.id
            added += 1
        if added:
            self._write_state_file()
        return added

    def drop_prepared(self, ike_sa: int) -> None:
        """Delete the inbound copies that prepare_inbound added for `ike_sa`."""
        ids = []
        for child in self.children_of(ike_sa):
            if child.prepared is not None:
                ids.append(child.prepared)
                child.prepared = None
        if ids:
            self._delete_sas(ids)
            self._write_state_file()

    def move_ike_sa(self, ike_sa: int, local: str, remote: str, encap: Encap | None = KEEP) -> MoveResult:
        """Move every CHILD_SA of `ike_sa` to the outer addresses `local` <-> `remote`.

        `encap` is the new UDP encapsulation of the outbound SAs (the inbound ones get the
        ports reversed), None to remove it, KEEP to leave it. SPIs, keys and sequence numbers
        stay (RFC 4555 §3.5). Raises KernelError when a move failed; the records then hold
        the state after the attempt.
        """
        children = self.children_of(ike_sa)
        adopted = {child.spi_in for child in children if self._adopt_prepared(child, local, remote, encap)}
        self.drop_prepared(ike_sa)  # copies at other addresses than `local`
        moves = [move for child in children
                 for move in self._child_moves(child, local, remote, encap, inbound=child.spi_in not in adopted)]
        if not moves:
            return MoveResult((), (), ())
        try:
            result = self.api.move(moves)
        except MoveError as error:
            self._apply_move(moves, error.result)
            raise KernelError(f"moving the CHILD_SAs of IKE SA {ike_sa} to {local} <-> {remote} failed: "
                              f"{error}") from error
        except XfrmError as error:
            raise KernelError(f"moving the CHILD_SAs of IKE SA {ike_sa} failed: {error}") from error
        self._apply_move(moves, result)
        self._write_state_file()
        logger.info("moved %d CHILD_SAs of IKE SA %d to %s <-> %s", len(children), ike_sa, local, remote)
        return result

    def _adopt_prepared(self, child: InstalledChild, local: str, remote: str, encap) -> bool:
        """Make the copy that prepare_inbound put at `local` the inbound SA, so `local` has no gap.

        The copy takes the original's replay window when that is further ahead, and the new
        encapsulation. The inbound policies' templates follow, then the original is deleted.
        Returns False when there is no copy at `local` for this move.
        """
        copy_id = child.prepared
        if copy_id is None or str(copy_id.dst) != local or str(child.inbound.src) != remote:
            return False
        inbound_encap = Encap(encap.dport, encap.sport) if isinstance(encap, Encap) else encap
        try:
            original = self.api.get_replay_state(child.inbound.id)
            prepared = self.api.get_replay_state(copy_id)
            ahead = original if (original.replay.seq_hi, original.replay.seq) > (
                prepared.replay.seq_hi, prepared.replay.seq) else prepared
            counters = LifetimeCurrent(original.current.bytes + prepared.current.bytes,
                                       original.current.packets + prepared.current.packets,
                                       original.current.add_time,
                                       max(original.current.use_time, prepared.current.use_time))
            self.api.set_replay_state(copy_id, ahead.replay, counters, ahead.esn_window)
            copy = self.api.get_sa(copy_id)
            if inbound_encap is not KEEP and inbound_encap != copy.encap:
                copy = copy.replace(encap=inbound_encap, replay=None, current=None)
                self.api.update_sa(copy)
            self._retarget_inbound_policies(child, remote, local)
        except XfrmError as error:
            raise KernelError(f"CHILD_SA {child.name}: taking over inbound SA {child.spi_in:08x} at {local} "
                              f"failed: {error}") from error
        self._delete_sas([child.inbound.id])
        child.inbound = without_keys(copy).replace(replay=None, current=None)
        child.prepared = None
        return True

    def _retarget_inbound_policies(self, child: InstalledChild, remote: str, local: str) -> None:
        owner = ("child", child.reqid)
        policy_set = self._policy_sets.get(owner)
        if policy_set is None:
            return
        updated = []
        for policy in policy_set.policies:
            if self._owns_top(owner, policy) and any(t.matches(child.inbound) for t in policy.templates):
                templates = tuple(replace(t, src=remote, dst=local, family=None) if t.matches(child.inbound) else t
                                  for t in policy.templates)
                policy = policy.replace(templates=templates)
                self.api.update_policy(policy)
            updated.append(policy)
        policy_set.policies = updated

    def _child_moves(self, child: InstalledChild, local: str, remote: str, encap, *,
                     inbound: bool = True) -> list[SaMove]:
        inbound_encap = encap
        if isinstance(encap, Encap):
            inbound_encap = Encap(encap.dport, encap.sport)
        moves = []
        pairs = [(child.outbound, local, remote, encap)]
        if inbound:
            pairs.insert(0, (child.inbound, remote, local, inbound_encap))
        for sa, src, dst, new_encap in pairs:
            if (str(sa.src), str(sa.dst)) == (src, dst) and (new_encap is KEEP or new_encap == sa.encap):
                continue  # already there, e.g. moved early by agent.roaming
            policies = tuple(p for p in self._installed_policies(child.reqid)
                             if any(t.matches(sa) for t in p.templates))
            moves.append(SaMove(sa, src, dst, new_encap, policies))
        return moves

    def _installed_policies(self, reqid: int) -> list[Policy]:
        owner = ("child", reqid)
        policy_set = self._policy_sets.get(owner)
        if policy_set is None:
            return []
        return [p for p in policy_set.policies if self._owns_top(owner, p)]

    def _apply_move(self, moves: list[SaMove], result: MoveResult) -> None:
        moved = {move.sa.id: sa for move, sa in zip(moves, result.sas)}
        for child in self._children.values():
            child.inbound = without_keys(moved.get(child.inbound.id, child.inbound)).replace(replay=None, current=None)
            child.outbound = without_keys(moved.get(child.outbound.id, child.outbound)).replace(replay=None, current=None)
        by_key = {policy_key(p): p for p in result.policies}
        for owner, policy_set in self._policy_sets.items():
            policy_set.policies = [by_key.get(policy_key(p), p) if self._owns_top(owner, p) else p
                                   for p in policy_set.policies]
        self._retarget_shadowed(moves)

    def _owns_top(self, owner: Owner, policy: Policy) -> bool:
        return self._owners.get(policy_key(policy), [None])[-1] == owner

    def _retarget_shadowed(self, moves: list[SaMove]) -> None:
        """Point the templates of moved reqids' policies that are not installed at the new addresses."""
        for move in moves:
            for owner, policy_set in self._policy_sets.items():
                if policy_set.reqid != move.sa.reqid:
                    continue
                policy_set.policies = [p if self._owns_top(owner, p)
                                       else p.replace(templates=tuple(_retarget(t, move) for t in p.templates))
                                       for p in policy_set.policies]

    # --- events --------------------------------------------------------------------------------

    def open_events(self) -> xev.XfrmEvents:
        """Return a source of the ACQUIRE, EXPIRE and MAPPING events."""
        return self.api.events(EVENT_GROUPS)

    def handle_events(self, events: Iterable[xev.Event]) -> list[Decision]:
        """Turn kernel events into what the daemon must do about them."""
        decisions: list[Decision] = []
        for event in events:
            decision = self._decide(event)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _decide(self, event: xev.Event) -> Decision | None:
        if isinstance(event, xev.Expire):
            return self._expired(event)
        if isinstance(event, xev.Acquire):
            return self._acquired(event)
        if isinstance(event, xev.Mapping):
            child = self._child_by_sa(event.sa.dst, event.sa.spi)
            if child is not None:
                return MappingChanged(child.ike_sa, child.spi_in, str(event.new_src), event.new_sport)
        elif isinstance(event, xev.Overrun):
            # Lost expire events: after a missed soft expire, the hard one still deletes the CHILD_SA.
            logger.warning("XFRM events were lost (receive buffer overrun)")
        return None

    def _expired(self, event: xev.Expire) -> Decision | None:
        child = self._child_by_sa(event.sa.dst, event.sa.spi)
        if child is None:
            return None
        if event.hard:
            _child_log(child).warning("CHILD_SA %s %08x_i reached its hard lifetime; the kernel removed SA %s",
                           child.name, child.spi_in, event.sa.id)
            return ChildExpired(child.ike_sa, child.spi_in)
        _child_log(child).info("CHILD_SA %s %08x_i reached its soft lifetime", child.name, child.spi_in)
        return RekeyDue(child.ike_sa, child.spi_in)

    def _acquired(self, event: xev.Acquire) -> Decision | None:
        reqids = {template.reqid for template in event.policy.templates}
        for (connection, child), reqid in self._traps.items():
            if reqid in reqids:
                SaLogger(logger, connection, child_sa=child).info("traffic %s matched the trap of %s/%s",
                                                                  event.selector, connection, child)
                return TrapTriggered(connection, child)
        return None

    def _child_by_sa(self, dst, spi: int) -> InstalledChild | None:
        for child in self._children.values():
            for sa in (child.inbound, child.outbound):
                if sa.spi == spi and sa.dst == dst:
                    return child
        return None

    # --- state file ----------------------------------------------------------------------------

    def _write_state_file(self) -> None:
        """Record what is installed, for operators and for the start-up report of the next run."""
        if self.state_file is None:
            return
        state = {
            "pid": os.getpid(),
            "sas": [{"id": str(sa.id), "reqid": sa.reqid}
                    for child in self._children.values() for sa in (child.inbound, child.outbound)]
            + [{"id": str(child.prepared), "reqid": child.reqid}
               for child in self._children.values() if child.prepared is not None],
            "policies": [{"id": str(policy.id), "priority": policy.priority}
                         for policy_set in self._policy_sets.values() for policy in policy_set.policies],
        }
        temporary = self.state_file.with_suffix(".tmp")
        try:
            self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary.write_text(json.dumps(state, indent=1) + "\n")
            temporary.replace(self.state_file)
        except OSError as error:
            logger.error("writing %s failed: %s", self.state_file, error)

    def _read_state_file(self) -> tuple[int, int]:
        if self.state_file is None:
            return 0, 0
        try:
            state = json.loads(self.state_file.read_text())
            return len(state.get("sas", [])), len(state.get("policies", []))
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, AttributeError) as error:
            logger.warning("ignoring unreadable %s: %s", self.state_file, error)
            return 0, 0


def _child_log(child: InstalledChild) -> SaLogger:
    """Return a logger that tags records with the CHILD_SA's connection, name and peer."""
    return SaLogger(logger, child.connection, peer=child.remote, child_sa=child.name)


def _delete_sa(sa_id: SaId) -> ops.DeleteSa:
    return ops.DeleteSa(sa_id)


def _retarget(template: Template, move: SaMove) -> Template:
    if template.src is None or not template.matches(move.sa):
        return template
    return replace(template, src=move.src, dst=move.dst, family=None)
