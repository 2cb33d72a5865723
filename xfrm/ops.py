"""Requests to the XFRM layer as plain data, one class per netlink request.

``XfrmClient`` encodes them into netlink messages (``xfrm.codec``) and
``FakeXfrm`` applies them to its tables, so both run the same batches with
the same outcome. ``describe()`` is the text used in errors and logs; it
names the SA or policy and never a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from xfrm.model import (
    Address,
    Encap,
    LifetimeCurrent,
    Mark,
    Migration,
    Mode,
    Policy,
    PolicyId,
    Proto,
    ReplayState,
    SaId,
    SecurityAssociation,
)


@dataclass(frozen=True)
class AddSa:
    """XFRM_MSG_NEWSA, or XFRM_MSG_UPDSA when ``update`` is set."""

    sa: SecurityAssociation
    update: bool = False
    target = "sa"

    def describe(self) -> str:
        return f"{'update' if self.update else 'add'} SA {self.sa.id}"


@dataclass(frozen=True)
class GetSa:
    """XFRM_MSG_GETSA; the result is a SecurityAssociation, or None if ``decode`` is off.

    Without decoding, the request only checks that the SA exists, which is
    cheaper for thousands of SAs.
    """

    id: SaId
    decode: bool = True
    target = "sa"

    def describe(self) -> str:
        return f"get SA {self.id}"


@dataclass(frozen=True)
class DeleteSa:
    """XFRM_MSG_DELSA."""

    id: SaId
    target = "sa"

    def describe(self) -> str:
        return f"delete SA {self.id}"


@dataclass(frozen=True)
class FlushSas:
    """XFRM_MSG_FLUSHSA; ``proto`` None flushes every protocol."""

    proto: Proto | None = None
    target = "sa"

    def describe(self) -> str:
        return "flush SAs" + (f" of {self.proto.name.lower()}" if self.proto else "")


@dataclass(frozen=True)
class AllocSpi:
    """XFRM_MSG_ALLOCSPI: reserve an unused SPI in [low, high]. The result is the larval SA."""

    src: Address
    dst: Address
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TUNNEL
    reqid: int = 0
    low: int = 0x100
    high: int = 0xFFFFFFFF
    mark: Mark | None = None
    if_id: int = 0
    target = "sa"

    def describe(self) -> str:
        return f"allocate SPI for {self.proto.name.lower()} {self.src}->{self.dst}"


@dataclass(frozen=True)
class AddPolicy:
    """XFRM_MSG_NEWPOLICY, or XFRM_MSG_UPDPOLICY (add or replace) when ``update`` is set."""

    policy: Policy
    update: bool = False
    target = "policy"

    def describe(self) -> str:
        return f"{'update' if self.update else 'add'} {self.policy.id}"


@dataclass(frozen=True)
class GetPolicy:
    """XFRM_MSG_GETPOLICY; the result is a Policy."""

    id: PolicyId
    target = "policy"

    def describe(self) -> str:
        return f"get {self.id}"


@dataclass(frozen=True)
class DeletePolicy:
    """XFRM_MSG_DELPOLICY."""

    id: PolicyId
    target = "policy"

    def describe(self) -> str:
        return f"delete {self.id}"


@dataclass(frozen=True)
class FlushPolicies:
    """XFRM_MSG_FLUSHPOLICY (main policies)."""

    target = "policy"

    def describe(self) -> str:
        return "flush policies"


@dataclass(frozen=True)
class GetReplayState:
    """XFRM_MSG_GETAE; the result is a ReplayInfo."""

    id: SaId
    target = "sa"

    def describe(self) -> str:
        return f"get replay state of SA {self.id}"


@dataclass(frozen=True)
class SetReplayState:
    """XFRM_MSG_NEWAE: overwrite an SA's sequence numbers, window and lifetime counters."""

    id: SaId
    replay: ReplayState
    esn_window: int | None = None  # set for an SA whose state is xfrm_replay_state_esn
    current: LifetimeCurrent | None = None
    target = "sa"

    def describe(self) -> str:
        return f"set replay state of SA {self.id}"


@dataclass(frozen=True)
class Migrate:
    """XFRM_MSG_MIGRATE: move the SAs and templates of one policy to new addresses.

    ``encap`` None keeps each SA's encapsulation (the kernel cannot remove one).
    """

    policy: PolicyId
    migrations: tuple[Migration, ...]
    encap: Encap | None = None
    target = "policy"

    def describe(self) -> str:
        moves = ", ".join(f"{m.old_src}->{m.old_dst} to {m.new_src}->{m.new_dst}"
                          for m in self.migrations)
        return f"migrate {self.policy} ({moves})"


@dataclass(frozen=True)
class ReplayInfo:
    """Result of GetReplayState: the counters XFRM_MSG_GETAE returns."""

    replay: ReplayState
    current: LifetimeCurrent
    esn_window: int | None = None  # window of an xfrm_replay_state_esn; None for the legacy struct


OP_TYPES = (AddSa, GetSa, DeleteSa, FlushSas, AllocSpi, AddPolicy, GetPolicy, DeletePolicy,
            FlushPolicies, GetReplayState, SetReplayState, Migrate)
Op = Union[OP_TYPES]
