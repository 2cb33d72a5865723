"""The sans-I/O rtnetlink session: subscribe, dump, follow, resync.

``NetlinkSession`` owns a ``NetState`` and a ``Coalescer``. The caller
(``watcher.NetWatcher`` on asyncio, or a test) opens a socket that is
already subscribed to ``messages.WATCHED_GROUPS``, then:

- sends what ``data_to_send()`` returns,
- passes every received datagram to ``receive(data, now)``,
- calls ``handle_overrun(now)`` when a receive fails with ENOBUFS,
- calls ``handle_timer(now)`` at ``next_deadline()``,
- delivers each batch from ``batches_to_deliver()``.

Subscribing before dumping means that no change falls between the dump and
the first notification. A full resync runs at start, after ENOBUFS (lost
notifications) and after a dump that the kernel marked NLM_F_DUMP_INTR
(the table changed while it was being dumped).
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from . import messages
from .coalesce import Coalescer
from .events import NetEvent
from .messages import (NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, RTM_GETADDR,
                       RTM_GETLINK, RTM_GETROUTE, RTM_GETRULE, Message)
from .state import NetState

log = logging.getLogger(__name__)

# One dump at a time: the kernel runs at most one dump per socket. Links
# come first, because the model needs to know the XFRM interfaces before it
# can skip their addresses and routes. Rules are dumped per family because AF_UNSPEC rule dumps need
# Linux 4.12 or later.
DUMPS = (
    (RTM_GETLINK, socket.AF_UNSPEC),
    (RTM_GETADDR, socket.AF_UNSPEC),
    (RTM_GETROUTE, socket.AF_UNSPEC),
    (RTM_GETRULE, socket.AF_INET),
    (RTM_GETRULE, socket.AF_INET6),
)
MAX_DUMP_ATTEMPTS = 5  # immediate retries of an interrupted resync
RETRY_DELAY = 1.0  # seconds before trying again after MAX_DUMP_ATTEMPTS interruptions


class NetlinkSession:
    """Sequence numbers, dumps and resyncs for one rtnetlink socket, without I/O."""

    def __init__(self, state: NetState | None = None, coalescer: Coalescer | None = None,
                 first_seq: int = 1) -> None:
        self.state = state if state is not None else NetState()
        self.coalescer = coalescer if coalescer is not None else Coalescer()
        self.port_id = 0
        self._seq = first_seq - 1
        self._pending_dumps: list[tuple[int, int]] = []
        self._dump_seq: int | None = None  # the dump in flight
        self._interrupted = False
        self._overrun_during_dump = False
        self._attempts = 0
        self._retry_at: float | None = None
        self._outgoing: list[bytes] = []
        self._batches: list[list[NetEvent]] = []
        self.resync_count = 0

    # Driving the session

    def start(self, port_id: int, now: float) -> None:
        """Begin the first full dump; ``port_id`` is the socket's nl_pid from getsockname()."""
        self.port_id = port_id
        self._begin_resync(now, discard_notifications=True)

    def receive(self, data: bytes, now: float) -> None:
        for message in messages.parse_messages(data):
            if self._is_dump_reply(message):
                self._handle_dump_reply(message, now)
            elif message.pid == self.port_id and message.pid != 0:
                # A late reply to an abandoned dump: replaying it would undo newer state.
                log.debug("dropped netlink reply to old request seq %d", message.seq)
            elif message.type == NLMSG_OVERRUN:
                self.handle_overrun(now)
            elif message.record is not None:
                self._deliver(self.state.apply(message.record, message.deleted), now)

    def handle_overrun(self, now: float) -> None:
        """Start over after lost notifications (ENOBUFS on receive)."""
        log.warning("netlink receive buffer overrun: notifications lost, resyncing")
        if self._dump_seq is not None:
            # The kernel refuses a second dump on the socket while one runs,
            # so the resync restarts when the current dump ends.
            self._overrun_during_dump = True
            self.state.begin_resync(discard_notifications=True)
            return
        self._begin_resync(now, discard_notifications=True)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.coalescer.next_deadline(), self._retry_at) if d is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._attempts = 0
            self._begin_resync(now, discard_notifications=False)
        batch = self.coalescer.handle_timer(now)
        if batch:
            self._batches.append(batch)

    def data_to_send(self) -> list[bytes]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def batches_to_deliver(self) -> list[list[NetEvent]]:
        batches, self._batches = self._batches, []
        return batches

    # Dumps

    def _begin_resync(self, now: float, discard_notifications: bool) -> None:
        self.state.begin_resync(discard_notifications=discard_notifications)
        self._retry_at = None  # this resync replaces a scheduled retry
        self._pending_dumps = list(DUMPS)
        self._interrupted = False
        self._overrun_during_dump = False
        self._send_next_dump()

    def _send_next_dump(self) -> None:
        msg_type, family = self._pending_dumps.pop(0)
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1  # 0 would look like a notification
        self._dump_seq = self._seq
        self._outgoing.append(messages.encode_dump_request(msg_type, family, self._seq))

    def _is_dump_reply(self, message: Message) -> bool:
        # A notification carries the sequence number and port id of the socket
        # that requested the change (0 for the kernel's own), never this one's.
        return (self._dump_seq is not None and message.seq == self._dump_seq
                and message.pid == self.port_id)

    def _handle_dump_reply(self, message: Message, now: float) -> None:
        if message.flags & NLM_F_DUMP_INTR:
            self._interrupted = True
        if message.type == NLMSG_ERROR:
            self._handle_dump_error(message)
        elif message.type != NLMSG_DONE:
            if message.record is not None:
                self.state.add_dumped(message.record)
            return
        self._dump_done(now)

    def _handle_dump_error(self, message: Message) -> None:
        if message.error == errno.EBUSY:
            self._interrupted = True
        elif message.error == errno.EAFNOSUPPORT:
            log.debug("dump seq %d skipped: address family not supported", message.seq)
        else:
            log.error("netlink dump seq %d failed: %s", message.seq, os.strerror(message.error))

    def _dump_done(self, now: float) -> None:
        self._dump_seq = None
        if self._overrun_during_dump:
            self._begin_resync(now, discard_notifications=False)
        elif self._pending_dumps:
            self._send_next_dump()
        elif self._interrupted:
            self._retry_interrupted(now)
        else:
            self._attempts = 0
            self.resync_count += 1
            self._deliver(self.state.finish_resync(), now)

    def _retry_interrupted(self, now: float) -> None:
        self._attempts += 1
        if self._attempts < MAX_DUMP_ATTEMPTS:
            log.debug("dump interrupted by a concurrent change, attempt %d", self._attempts)
            self._begin_resync(now, discard_notifications=False)
            return
        # Keep holding notifications; the model stays as it was until a dump succeeds.
        log.warning("netlink dump interrupted %d times in a row, trying again in %.1f s",
                    self._attempts, RETRY_DELAY)
        self._retry_at = now + RETRY_DELAY

    def _deliver(self, events: list[NetEvent], now: float) -> None:
        batch = self.coalescer.push(events, now)
        if batch:
            self._batches.append(batch)
