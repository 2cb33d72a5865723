"""The interface shared by XfrmClient (the kernel) and FakeXfrm (memory).

Both implement ``execute`` (run a batch of requests), the two dumps,
``features`` and ``events``. Everything else here is built on those, so the
fake behaves like the kernel for every method, including ``move``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from xfrm import ops
from xfrm.errors import BulkError, XfrmError
from xfrm.events import DEFAULT_GROUPS, Event
from xfrm.move import MoveMethod, MoveResult, SaMove, move_sas
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
    to_address,
)


@dataclass(frozen=True)
class KernelFeatures:
    """Optional kernel features, probed once per client."""

    migrate: bool  # XFRM_MSG_MIGRATE works (CONFIG_XFRM_MIGRATE)


class EventSource(Protocol):
    """A source of events: XfrmEvents for the kernel, FakeEvents for the fake."""

    def fileno(self) -> int: ...

    def read(self, timeout: float | None = 0.0) -> list[Event]: ...

    def close(self) -> None: ...


class XfrmApi(abc.ABC):
    """Program SAs and policies; every method raises an XfrmError subclass on failure."""

    # --- what an implementation provides ---------------------------------

    @abc.abstractmethod
    def execute(self, requests: Sequence[ops.Op]) -> list[Any]:
        """Run ``requests`` in order as one batch and return one result per request.

        A result is the request's value (a SecurityAssociation, Policy or
        ReplayInfo for the get requests, None otherwise) or the XfrmError
        that the request failed with. A failed request does not stop the
        ones after it. Raises ValueError, before anything runs, for a
        request that cannot be encoded, and XfrmError if the batch as a
        whole failed (for example, no response from the kernel).
        """

    @abc.abstractmethod
    def dump_sas(self) -> list[SecurityAssociation]:
        """Return every SA, with keys and counters."""

    @abc.abstractmethod
    def dump_policies(self) -> list[Policy]:
        """Return every policy of the main type (not per-socket policies)."""

    @abc.abstractmethod
    def features(self) -> KernelFeatures:
        """Return what the kernel offers, probing on the first call only."""

    @abc.abstractmethod
    def events(self, groups: tuple[int, ...] = DEFAULT_GROUPS) -> EventSource:
        """Return a new source of the events of the XFRMNLGRP_* ``groups``."""

    def close(self) -> None:
        """Release the socket; the default does nothing."""

    def __enter__(self) -> XfrmApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- single requests ---------------------------------------------------

    def run(self, request: ops.Op) -> Any:
        """Run one request and return its value; raises its XfrmError."""
        result = self.execute([request])[0]
        if isinstance(result, XfrmError):
            raise result
        return result

    def add_sa(self, sa: SecurityAssociation) -> None:
        """Install ``sa``; raises SaExists if its (dst, spi, proto, mark) is taken."""
        self.run(ops.AddSa(sa))

    def update_sa(self, sa: SecurityAssociation) -> None:
        """Complete an SA reserved by alloc_spi, or change an installed SA.

        For an installed SA the kernel changes only its lifetime limits and
        the ports and address of an existing encapsulation. Raises SaNotFound.
        """
        self.run(ops.AddSa(sa, update=True))

    def get_sa(self, sa_id: SaId) -> SecurityAssociation:
        """Return the installed SA ``sa_id`` with keys and counters; raises SaNotFound."""
        return self.run(ops.GetSa(sa_id))

    def delete_sa(self, sa_id: SaId) -> None:
        """Remove SA ``sa_id``; raises SaNotFound."""
        self.run(ops.DeleteSa(sa_id))

    def flush_sas(self, proto: Proto | None = None) -> None:
        """Remove every SA (of ``proto``, if given)."""
        self.run(ops.FlushSas(proto))

    def alloc_spi(self, src: Address | str, dst: Address | str, proto: Proto = Proto.ESP,
                  mode: Mode = Mode.TUNNEL, reqid: int = 0, low: int = 0x100,
                  high: int = 0xFFFFFFFF, mark: Mark | None = None, if_id: int = 0) -> int:
        """Reserve an unused SPI in [low, high] for an inbound SA from ``src`` to ``dst``.

        The kernel keeps a larval SA under that SPI for about 30 s. Install
        the real SA with update_sa, because add_sa would raise SaExists.
        """
        larval = self.run(ops.AllocSpi(to_address(src), to_address(dst), proto, mode, reqid,
                                       low, high, mark, if_id))
        return larval.spi

    def add_policy(self, policy: Policy) -> None:
        """Install ``policy``; raises PolicyExists if its (selector, dir, mark, if_id) is taken."""
        self.run(ops.AddPolicy(policy))

    def update_policy(self, policy: Policy) -> None:
        """Install ``policy``, replacing the one with the same identity (keeping its index)."""
        self.run(ops.AddPolicy(policy, update=True))

    def get_policy(self, policy_id: PolicyId) -> Policy:
        """Return the installed policy ``policy_id``; raises PolicyNotFound."""
        return self.run(ops.GetPolicy(policy_id))

    def delete_policy(self, policy_id: PolicyId) -> None:
        """Remove policy ``policy_id``; raises PolicyNotFound."""
        self.run(ops.DeletePolicy(policy_id))

    def flush_policies(self) -> None:
        """Remove every policy of the main type."""
        self.run(ops.FlushPolicies())

    def get_replay_state(self, sa_id: SaId) -> ops.ReplayInfo:
        """Return the sequence numbers, replay window and lifetime counters of SA ``sa_id``."""
        return self.run(ops.GetReplayState(sa_id))

    def set_replay_state(self, sa_id: SaId, replay: ReplayState,
                         current: LifetimeCurrent | None = None,
                         esn_window: int | None = None) -> None:
        """Overwrite the counters of SA ``sa_id`` (XFRM_MSG_NEWAE).

        ``esn_window`` must be the SA's window when its state is the ESN
        struct (ESN or a window above 32), and None otherwise. The kernel
        rejects an ESN bitmap of another size with InvalidArgument, but
        ignores without an error a replay state of the other struct.
        """
        self.run(ops.SetReplayState(sa_id, replay, esn_window, current))

    def migrate(self, policy_id: PolicyId, migrations: Sequence[Migration],
                encap: Encap | None = None) -> None:
        """Send one XFRM_MSG_MIGRATE for ``policy_id`` (at most 6 migrations).

        Raises PolicyNotFound, or NotSupported without CONFIG_XFRM_MIGRATE.
        The kernel moves the SAs it finds and the policy's templates. It
        reports success even for an entry whose SA it did not find, which
        ``move`` checks for.
        """
        self.run(ops.Migrate(policy_id, tuple(migrations), encap))

    # --- many requests -----------------------------------------------------

    def bulk(self) -> Batch:
        """Return a batch: queue requests on it, then commit (or leave the ``with`` block)."""
        return Batch(self)

    def move(self, moves: Sequence[SaMove], method: MoveMethod = MoveMethod.AUTO) -> MoveResult:
        """Move SAs and their policies to new outer addresses; see xfrm.move.move_sas."""
        return move_sas(self, moves, method)


class Batch:
    """Requests queued to run as one batch.

    ``commit()`` sends them; leaving a ``with`` block without an exception
    commits too. A failed request does not stop the others; afterwards
    BulkError lists every failed request with its error.
    """

    def __init__(self, api: XfrmApi) -> None:
        self.api = api
        self.requests: list[ops.Op] = []

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.commit()

    def __len__(self) -> int:
        return len(self.requests)

    def add(self, request: ops.Op) -> Batch:
        self.requests.append(request)
        return self

    def add_sa(self, sa: SecurityAssociation) -> Batch:
        return self.add(ops.AddSa(sa))

    def update_sa(self, sa: SecurityAssociation) -> Batch:
        return self.add(ops.AddSa(sa, update=True))

    def delete_sa(self, sa_id: SaId) -> Batch:
        return self.add(ops.DeleteSa(sa_id))

    def add_policy(self, policy: Policy) -> Batch:
        return self.add(ops.AddPolicy(policy))

    def update_policy(self, policy: Policy) -> Batch:
        return self.add(ops.AddPolicy(policy, update=True))

    def delete_policy(self, policy_id: PolicyId) -> Batch:
        return self.add(ops.DeletePolicy(policy_id))

    def commit(self) -> list[Any]:
        """Run the queued requests and return their results, in order.

        Raises BulkError (with ``results`` set) if any request failed.
        """
        requests, self.requests = self.requests, []
        results = self.api.execute(requests)
        failures = [(request, result) for request, result in zip(requests, results)
                    if isinstance(result, XfrmError)]
        if failures:
            raise BulkError(failures, len(requests), results)
        return results
