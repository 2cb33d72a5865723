"""NetWatcher: the asyncio reader around ``NetlinkSession``.

Example::

    def on_events(batch):
        for event in batch:
            print(event)

    watcher = NetWatcher(on_events)
    await watcher.start()          # returns after the first full dump
    watcher.state.usable_addresses()
    ...
    watcher.stop()

The socket is opened in the network namespace of the calling thread.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence

from .coalesce import DEFAULT_MAX_WINDOW, DEFAULT_MIN_WINDOW, Coalescer
from .events import NetEvent, Resynced
from .messages import WATCHED_GROUPS, NetlinkDecodeError, bitmask_of_groups
from .session import NetlinkSession
from .state import NetState

log = logging.getLogger(__name__)

# Large enough for the burst that removing a busy uplink causes (every
# address and route notification at once). Raising it past net.core.rmem_max
# needs SO_RCVBUFFORCE, hence root; without root the kernel caps it.
RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes
# The kernel builds dump datagrams of at most 32 KiB; a single notification
# is far smaller. A larger datagram is a bug or a new kernel: resync.
DATAGRAM_MAX = 64 * 1024  # bytes
DATAGRAMS_PER_WAKEUP = 64  # then yield to the event loop
DEFAULT_START_TIMEOUT = 10.0  # seconds
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; the socket module does not export it

EventCallback = Callable[[Sequence[NetEvent]], None]


def open_rtnetlink_socket(groups: Sequence[int] = WATCHED_GROUPS,
                          receive_buffer: int = RECEIVE_BUFFER) -> socket.socket:
    """Open a non-blocking NETLINK_ROUTE socket subscribed to ``groups`` (RTNLGRP_*)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, bitmask_of_groups(tuple(groups))))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class NetWatcher:
    """Watch links, addresses, routes and rules; call ``on_events`` with each batch.

    ``on_events`` runs on the event loop with a non-empty sequence of
    events. The first change after a quiet period arrives alone and at
    once; the rest of a burst arrives merged (see ``coalesce``). An
    exception raised by ``on_events`` is logged, and watching goes on.
    """

    def __init__(self, on_events: EventCallback, *,
                 min_window: float = DEFAULT_MIN_WINDOW,
                 max_window: float = DEFAULT_MAX_WINDOW) -> None:
        self._on_events = on_events
        self.session = NetlinkSession(NetState(), Coalescer(min_window, max_window))
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._synced: asyncio.Event | None = None
        self._buffer = bytearray(DATAGRAM_MAX)

    @property
    def state(self) -> NetState:
        return self.session.state

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Subscribe, dump, and return once the model contains the first full dump.

        Raises TimeoutError if the dump does not finish within ``timeout``
        seconds; the watcher is stopped then.
        """
        if self._sock is not None:
            raise RuntimeError("NetWatcher already started")
        self._loop = asyncio.get_running_loop()
        self._synced = asyncio.Event()
        self._sock = open_rtnetlink_socket()
        port_id = self._sock.getsockname()[0]
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self.session.start(port_id, self._loop.time())
        self._flush()
        log.debug("netlink watcher started, port id %d", port_id)

        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"first netlink dump did not finish within {timeout} s") from None

    def stop(self) -> None:
        """Stop watching and close the socket; a second call does nothing."""
        if self._sock is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        log.debug("netlink watcher stopped")

    def _on_readable(self) -> None:
        now = self._loop.time()
        for _ in range(DATAGRAMS_PER_WAKEUP):
            if self._sock is None or not self._receive_one(now):
                break
        self._flush()

    def _receive_one(self, now: float) -> bool:
        """Receive and process one datagram; return False when none is waiting."""
        try:
            size = self._sock.recv_into(self._buffer, DATAGRAM_MAX, socket.MSG_TRUNC)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            self.session.handle_overrun(now)
            return True

        if size > DATAGRAM_MAX:
            log.error("netlink datagram of %d bytes truncated to %d, resyncing", size, DATAGRAM_MAX)
            self.session.handle_overrun(now)
            return True
        try:
            self.session.receive(bytes(self._buffer[:size]), now)
        except NetlinkDecodeError as error:
            log.error("undecodable netlink datagram (%s), resyncing", error)
            self.session.handle_overrun(now)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(self._loop.time())
        self._flush()

    def _flush(self) -> None:
        """Send queued requests, deliver batches, and set the timer to the next deadline."""
        if self._sock is None:
            return
        for data in self.session.data_to_send():
            self._sock.send(data)

        for batch in self.session.batches_to_deliver():
            if any(isinstance(event, Resynced) for event in batch):
                self._synced.set()
            try:
                self._on_events(batch)
            except Exception:
                log.exception("netlink event callback failed on %d events", len(batch))

        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.session.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
