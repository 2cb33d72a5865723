"""Move SAs to new outer addresses, keeping SPI, keys, sequence numbers and counters.

MOBIKE (RFC 4555 §3.5) moves an IKE SA and its Child SAs to new addresses
without rekeying. The kernel offers two ways to do that to an SA:

| method  | how                                               | keeps                                              | cannot                       |
| ------- | ------------------------------------------------- | -------------------------------------------------- | ---------------------------- |
| MIGRATE | XFRM_MSG_MIGRATE per policy, with XFRMA_ENCAP     | everything, counted up to the moment of the move   | remove UDP encapsulation; run without CONFIG_XFRM_MIGRATE or without a policy |
| REPLACE | GETSA + GETAE, NEWSA at the new addresses with XFRMA_REPLAY_(ESN_)VAL and XFRMA_LTIME_VAL, DELSA | keys, SPI, sequence numbers, replay window, lifetime counters and limits | keep inbound replay updates that arrive between GETAE and DELSA |

With MoveMethod.AUTO each move uses MIGRATE when the kernel offers it and
the move allows it, REPLACE otherwise. Policies whose templates refer to a
moved SA get the new template addresses. MIGRATE changes them in the
kernel, and both methods then send the final policy.

Nothing leaves in clear during a move: every affected outbound policy is
first switched to action BLOCK in place (XFRM_MSG_UPDPOLICY with the same
selector, direction, mark and if_id) and switched back to ALLOW with the
new templates at the end. A separate higher-priority block policy would not
work: the kernel (since Linux 5.9) identifies a policy by selector,
direction, mark and if_id but not priority, so a second policy with the same
selector replaces the first. If the process dies mid-move, the policy stays
blocked: traffic stops instead of leaking.

All moves of one call run as three batches, whatever their number:

1. block the outbound policies; read the REPLACE SAs (GETSA, GETAE);
2. REPLACE: add the new SAs (delete first when the SA id stays the same);
   MIGRATE: one message per policy and encapsulation, then GETSA of each
   migrated SA, because the kernel also reports success for an SA it did
   not find;
3. install the final policies; delete the replaced SAs; put back an SA
   whose replacement failed after its old copy was deleted.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xfrm import constants as c
from xfrm import ops
from xfrm.errors import BulkError, NotSupported, XfrmError
from xfrm.model import (
    Action,
    Address,
    Direction,
    Encap,
    Migration,
    Policy,
    PolicyId,
    SaId,
    SecurityAssociation,
    Template,
    family_of,
    to_address,
)

if TYPE_CHECKING:
    from xfrm.api import KernelFeatures, XfrmApi

log = logging.getLogger(__name__)


class MoveMethod(enum.Enum):
    AUTO = "auto"
    MIGRATE = "migrate"
    REPLACE = "replace"


class _Keep:
    """Marker for "keep the SA's current encapsulation"."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True)
class SaMove:
    """Move ``sa`` (as installed) to outer addresses ``src`` -> ``dst``.

    ``encap``: the new UDP encapsulation, None to remove it, KEEP to leave
    it as it is. ``policies``: the installed policies whose templates refer
    to ``sa``; their templates follow the SA.
    """

    sa: SecurityAssociation
    src: Address
    dst: Address
    encap: Encap | None | _Keep = KEEP
    policies: tuple[Policy, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", to_address(self.src))
        object.__setattr__(self, "dst", to_address(self.dst))
        object.__setattr__(self, "policies", tuple(self.policies))
        if self.src.version != self.dst.version:
            raise ValueError(f"move of SA {self.sa.id}: {self.src} -> {self.dst} mixes IPv4 and IPv6")
        for policy in self.policies:
            if not any(t.matches(self.sa) for t in policy.templates):
                raise ValueError(f"move of SA {self.sa.id}: {policy.id} has no template for it")

    @property
    def new_encap(self) -> Encap | None:
        return self.sa.encap if self.encap is KEEP else self.encap

    @property
    def moved(self) -> SecurityAssociation:
        """The SA as it is after the move, without counters."""
        return self.sa.replace(src=self.src, dst=self.dst, encap=self.new_encap,
                               replay=None, current=None)


@dataclass(frozen=True)
class MoveResult:
    """Outcome of ``move_sas``: per move the SA and method; the affected policies as installed.

    For a failed move ``sas`` contains the SA as it was, and ``failures`` the error.
    """

    sas: tuple[SecurityAssociation, ...]
    methods: tuple[MoveMethod, ...]
    policies: tuple[Policy, ...]
    failures: tuple[tuple[SaMove, XfrmError], ...] = ()


class MoveError(BulkError):
    """Some moves failed; ``result`` is the MoveResult with the state after the attempt."""

    def __init__(self, result: MoveResult, total: int) -> None:
        super().__init__(list(result.failures), total)
        self.result = result


def migrate_obstacle(move: SaMove, features: KernelFeatures) -> str | None:
    """Return why XFRM_MSG_MIGRATE cannot do ``move``, or None if it can."""
    if not features.migrate:
        return "the kernel lacks XFRM_MSG_MIGRATE (CONFIG_XFRM_MIGRATE)"
    if not move.policies:
        return "XFRM_MSG_MIGRATE needs a policy with a template for the SA"
    if move.sa.encap is not None and move.new_encap is None:
        return "XFRM_MSG_MIGRATE cannot remove UDP encapsulation"
    # NOTE: the probe does not show whether the kernel applies XFRMA_ENCAP in a
    # MIGRATE; kernels from before that feature ignore it. Linux 6.1 applies it.
    return None


def choose_method(move: SaMove, features: KernelFeatures | None, requested: MoveMethod) -> MoveMethod:
    """Return the method for ``move``: MIGRATE when possible under AUTO, else REPLACE.

    Raises NotSupported when MIGRATE is requested but cannot do the move.
    """
    if requested is MoveMethod.REPLACE:
        return MoveMethod.REPLACE
    assert features is not None
    obstacle = migrate_obstacle(move, features)
    if obstacle is None:
        return MoveMethod.MIGRATE
    if requested is MoveMethod.MIGRATE:
        raise NotSupported(f"move SA {move.sa.id} by MIGRATE", message=f"move SA {move.sa.id} "
                           f"by MIGRATE: {obstacle}")
    return MoveMethod.REPLACE


def _moved_template(template: Template, move: SaMove) -> Template:
    return Template(src=move.src, dst=move.dst, proto=template.proto, mode=template.mode,
                    reqid=template.reqid, spi=template.spi, share=template.share,
                    optional=template.optional, aalgos=template.aalgos,
                    ealgos=template.ealgos, calgos=template.calgos,
                    family=family_of(move.dst))


class _Mover:
    """The state of one move_sas call: moves, their methods and outcomes."""

    def __init__(self, api: XfrmApi, moves: Sequence[SaMove], requested: MoveMethod) -> None:
        self.api = api
        self.moves = list(moves)
        features = api.features() if requested is not MoveMethod.REPLACE else None
        self.methods = [choose_method(m, features, requested) for m in self.moves]
        self.errors: dict[int, XfrmError] = {}
        self.replacements: dict[int, SecurityAssociation] = {}  # REPLACE: the new SA
        self.originals: dict[int, SecurityAssociation] = {}  # REPLACE: the old SA, as read
        self.policies: dict[PolicyId, Policy] = {}
        self.members: dict[PolicyId, list[int]] = {}  # policy -> indexes of its moves
        for i, move in enumerate(self.moves):
            for policy in move.policies:
                known = self.policies.setdefault(policy.id, policy)
                if known != policy:
                    raise ValueError(f"two different versions of {policy.id} in one move")
                self.members.setdefault(policy.id, []).append(i)

    def _fail(self, index: int, error: XfrmError) -> None:
        self.errors.setdefault(index, error)

    def _moves_of(self, policy: Policy) -> list[int]:
        return self.members[policy.id]

    # --- step 1: guard and read ----------------------------------------------

    def step_guard_and_read(self) -> None:
        requests: list[ops.Op] = []
        guarded: list[PolicyId] = []
        for policy in self.policies.values():
            if policy.dir == Direction.OUT and policy.action == Action.ALLOW:
                requests.append(ops.AddPolicy(policy.replace(action=Action.BLOCK), update=True))
                guarded.append(policy.id)
        reads = [i for i, m in enumerate(self.methods) if m is MoveMethod.REPLACE]
        for i in reads:
            requests += [ops.GetSa(self.moves[i].sa.id), ops.GetReplayState(self.moves[i].sa.id)]

        results = self.api.execute(requests)

        for policy_id, result in zip(guarded, results):
            if isinstance(result, XfrmError):
                # Without its guard no SA behind this policy moves.
                for i in self._moves_of(self.policies[policy_id]):
                    self._fail(i, result)
        read_results = results[len(guarded):]
        for n, i in enumerate(reads):
            sa, info = read_results[2 * n], read_results[2 * n + 1]
            for result in (sa, info):
                if isinstance(result, XfrmError):
                    self._fail(i, result)
            if i in self.errors:
                continue
            move = self.moves[i]
            encap = sa.encap if move.encap is KEEP else move.encap  # KEEP: what the kernel has
            self.originals[i] = sa.replace(replay=info.replay, current=info.current)
            self.replacements[i] = sa.replace(src=move.src, dst=move.dst, encap=encap,
                                              replay=info.replay, current=info.current)
        self.guarded = set(guarded)

    # --- step 2: move ---------------------------------------------------------

    def step_move(self) -> None:
        requests: list[ops.Op] = []
        owners: list[list[int]] = []  # per request: the moves it is part of

        for i, new in self.replacements.items():
            if i in self.errors:
                continue
            old_id = self.moves[i].sa.id
            if _same_id(old_id, new.id):
                requests.append(ops.DeleteSa(old_id))
                owners.append([i])
            requests.append(ops.AddSa(new))
            owners.append([i])

        migrated: dict[int, None] = {}  # an ordered set
        for policy in self.policies.values():
            for encap, members in self._migrate_groups(policy):
                for start in range(0, len(members), c.XFRM_MAX_DEPTH):
                    chunk = members[start:start + c.XFRM_MAX_DEPTH]
                    migrations = tuple(_migration(self.moves[i]) for i in chunk)
                    requests.append(ops.Migrate(policy.id, migrations, encap))
                    owners.append(chunk)
                    migrated.update(dict.fromkeys(chunk))
        for i in migrated:
            requests.append(ops.GetSa(self.moves[i].moved.id, decode=False))
            owners.append([i])

        results = self.api.execute(requests)

        self.deleted_first: set[int] = set()
        for request, members, result in zip(requests, owners, results):
            if isinstance(request, ops.DeleteSa) and not isinstance(result, XfrmError):
                self.deleted_first.update(members)
            if isinstance(result, XfrmError):
                for i in members:
                    self._fail(i, result)

    def _migrate_groups(self, policy: Policy) -> list[tuple[Encap | None, list[int]]]:
        """Return the MIGRATE moves behind ``policy``, grouped by the XFRMA_ENCAP to send."""
        groups: dict[Encap | None, list[int]] = {}
        for i in self._moves_of(policy):
            if self.methods[i] is not MoveMethod.MIGRATE or i in self.errors:
                continue
            move = self.moves[i]
            encap = None if move.encap is KEEP else move.encap
            groups.setdefault(encap, []).append(i)
        return list(groups.items())

    # --- step 3: finish -------------------------------------------------------

    def step_finish(self) -> list[Policy]:
        requests: list[ops.Op] = []
        owners: list[list[int]] = []

        final_policies = []
        for policy in self.policies.values():
            members = self._moves_of(policy)
            final = policy.replace(templates=tuple(self._final_template(t, members)
                                                   for t in policy.templates))
            final_policies.append(final)
            if self._needs_update(policy, members):
                requests.append(ops.AddPolicy(final, update=True))
                owners.append(members)

        for i, old in self.originals.items():
            if i in self.errors:
                if i in self.deleted_first:
                    # The old SA is gone and the new one failed: put the old one back.
                    requests.append(ops.AddSa(old))
                    owners.append([])
            elif i not in self.deleted_first:
                requests.append(ops.DeleteSa(self.moves[i].sa.id))
                owners.append([i])

        results = self.api.execute(requests)

        for request, members, result in zip(requests, owners, results):
            if isinstance(result, XfrmError):
                log.error("%s failed during a move: %s", request.describe(), result)
                for i in members:
                    self._fail(i, result)
        return final_policies

    def _needs_update(self, policy: Policy, members: list[int]) -> bool:
        if policy.id in self.guarded:
            return True
        for i in members:
            if self.methods[i] is MoveMethod.REPLACE and i not in self.errors:
                return True
            if self.methods[i] is MoveMethod.MIGRATE and i in self.errors:
                return True  # put back the templates that the kernel may have moved
        return False

    def _final_template(self, template: Template, members: list[int]) -> Template:
        for i in members:
            if i not in self.errors and template.matches(self.moves[i].sa):
                return _moved_template(template, self.moves[i])
        return template

    # --- result ---------------------------------------------------------------

    def result(self, policies: list[Policy]) -> MoveResult:
        sas = []
        for i, move in enumerate(self.moves):
            if i in self.errors:
                sas.append(move.sa)
            else:
                sas.append(self.replacements.get(i, move.moved))
        failures = tuple((self.moves[i], self.errors[i]) for i in sorted(self.errors))
        return MoveResult(tuple(sas), tuple(self.methods), tuple(policies), failures)


def _same_id(a: SaId, b: SaId) -> bool:
    return a.dst == b.dst and a.spi == b.spi and a.proto == b.proto


def _migration(move: SaMove) -> Migration:
    return Migration(old_src=move.sa.src, old_dst=move.sa.dst, new_src=move.src,
                     new_dst=move.dst, proto=move.sa.proto, mode=move.sa.mode,
                     reqid=move.sa.reqid)


def move_sas(api: XfrmApi, moves: Sequence[SaMove],
             method: MoveMethod = MoveMethod.AUTO) -> MoveResult:
    """Move every SA of ``moves`` with its policies to its new addresses, in three batches.

    Returns the MoveResult. Raises NotSupported (before any change) when
    ``method`` is MIGRATE and a move needs REPLACE, and MoveError when some
    moves failed (the others are done). Raises XfrmError when a batch as a
    whole failed, and then the outbound policies may stay blocked until the
    caller retries.
    """
    if not moves:
        return MoveResult((), (), ())
    mover = _Mover(api, moves, method)
    started = time.monotonic()
    mover.step_guard_and_read()
    guarded = time.monotonic()
    mover.step_move()
    moved = time.monotonic()
    policies = mover.step_finish()
    finished = time.monotonic()
    result = mover.result(policies)
    log.debug("move of %d SAs: guard and read %.3f s, move %.3f s, finish %.3f s", len(moves),
              guarded - started, moved - guarded, finished - moved)

    counts = {m: sum(1 for i, used in enumerate(mover.methods) if used is m and i not in mover.errors)
              for m in (MoveMethod.MIGRATE, MoveMethod.REPLACE)}
    log.info("moved %d SAs by MIGRATE and %d by REPLACE, %d failed, %d policies updated",
             counts[MoveMethod.MIGRATE], counts[MoveMethod.REPLACE], len(result.failures),
             len(policies))
    if result.failures:
        raise MoveError(result, len(moves))
    return result
