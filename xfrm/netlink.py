"""The NETLINK_XFRM socket: batches of requests, dumps, multicast groups.

A batch sends many requests per ``sendmsg``. The kernel processes every
message of a datagram in order and goes on after a failed one. It sends an
error for each failure, data for each get, and an ack for the datagram's last
request only. A datagram carries at most ``window`` requests, so that these
responses fit the receive buffer: a response that does not fit is dropped by
the kernel, and its request could not be matched any more.
"""

from __future__ import annotations

import errno as errno_codes
import itertools
import logging
import os
import select
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from xfrm import codec
from xfrm import constants as c

log = logging.getLogger(__name__)

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

DEFAULT_RCVBUF = 32 << 20  # bytes; room for the acks of a full window and for event bursts
DEFAULT_SNDBUF = 4 << 20
DEFAULT_TIMEOUT = 30.0  # seconds without any response before a request counts as lost
CHUNK_BYTES = 64 << 10  # most request bytes per sendmsg
# The kernel charges each queued response with the size of its buffer (about
# 1-4 KiB), so the window follows the receive buffer actually granted.
BYTES_PER_RESPONSE = 8 << 10
MAX_WINDOW = 1024
DUMP_ATTEMPTS = 5
RECV_BUFFER = 1 << 20


@dataclass
class Response:
    """The kernel's response to one request: an errno (0 for success) and data messages."""

    errno: int = 0
    detail: str = ""
    replies: list[tuple[int, bytes]] = field(default_factory=list)
    done: bool = False


class NetlinkTimeout(OSError):
    """The kernel did not respond within the time limit."""


class NetlinkSocket:
    """An AF_NETLINK socket of protocol NETLINK_XFRM, optionally in multicast ``groups``.

    The socket lives in the network namespace of the thread that creates it.
    Buffers are forced to the requested size when the process may (root);
    otherwise the kernel's limit (net.core.rmem_max) applies.
    """

    def __init__(self, groups: Iterable[int] = (), rcvbuf: int = DEFAULT_RCVBUF,
                 sndbuf: int = DEFAULT_SNDBUF, timeout: float = DEFAULT_TIMEOUT,
                 sock: socket.socket | None = None) -> None:
        self.timeout = timeout
        if sock is not None:
            self.sock = sock  # already set up, e.g. a test's stand-in for the kernel
        else:
            self.sock = _open(groups, rcvbuf, sndbuf)
        granted = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.window = max(16, min(MAX_WINDOW, granted // BYTES_PER_RESPONSE))
        self._seq = itertools.count(int.from_bytes(os.urandom(3), "big") + 1)
        self._buffer = bytearray(RECV_BUFFER)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF or next(self._seq) & 0xFFFFFFFF

    # --- receiving -----------------------------------------------------------

    def receive(self, timeout: float | None) -> list[tuple[int, int, int, memoryview]]:
        """Wait up to ``timeout`` seconds (None: forever) for one datagram and split it.

        Returns (type, flags, seq, body) per message, or [] on timeout. The
        bodies point into a buffer that the next call overwrites. Raises
        OSError(ENOBUFS) when the kernel dropped messages for lack of room.
        """
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
            if not ready:
                return []
        size = self.sock.recv_into(self._buffer, len(self._buffer), socket.MSG_TRUNC)
        if size > len(self._buffer):
            raise OSError(errno_codes.EMSGSIZE, f"netlink message of {size} bytes is larger "
                                                f"than the {len(self._buffer)} byte buffer")
        return list(split_messages(memoryview(self._buffer)[:size]))

    # --- requests ------------------------------------------------------------

    def transact(self, requests: Sequence[tuple[int, int, bytes]]) -> list[Response]:
        """Send ``requests`` (type, flags, body) as one batch and return the responses, in order.

        A request with NLM_F_ACK succeeds unless an error message names it. A
        request without it (a get) gets its first data message or an error.
        Raises NetlinkTimeout when no response arrives for ``timeout``
        seconds, and OSError(ENOBUFS) if the kernel dropped responses.
        """
        responses = [Response() for _ in requests]
        start = 0
        while start < len(requests):
            end, seqs = self._send_datagram(requests, start)
            self._collect(requests, responses, start, end, seqs)
            start = end
        return responses

    def _send_datagram(self, requests: Sequence[tuple[int, int, bytes]],
                       start: int) -> tuple[int, dict[int, int]]:
        """Send requests from ``start`` on in one datagram.

        Returns the index after the last request sent, and the request index
        of each sequence number used.

        The kernel acks only the last request of the datagram. It processes
        the messages of a datagram in order during sendmsg() and queues an
        error for each one that fails, so when that ack arrives, every
        request before it is done, and each one without an error succeeded.
        Leaving out the other acks saves the kernel and this process one
        message per request.
        """
        chunk: list[bytes] = []
        size = 0
        seqs: dict[int, int] = {}
        index = start
        while index < len(requests) and index - start < self.window and size < CHUNK_BYTES:
            msg_type, flags, body = requests[index]
            seq = self.next_seq()
            seqs[seq] = index
            chunk.append(codec.message(msg_type, flags & ~c.NLM_F_ACK, seq, body))
            size += len(chunk[-1])
            index += 1

        # Ask for the ack of the last request, keeping its header otherwise.
        last_type, last_flags, last_body = requests[index - 1]
        chunk[-1] = codec.message(last_type, last_flags | c.NLM_F_ACK, seq, last_body)
        self.sock.send(b"".join(chunk))
        return index, seqs

    def _collect(self, requests: Sequence[tuple[int, int, bytes]], responses: list[Response],
                 start: int, end: int, seqs: dict[int, int]) -> None:
        """Read the responses to requests[start:end] until the last one is acked."""
        last = responses[end - 1]
        deadline = time.monotonic() + self.timeout
        while not last.done:
            messages = self.receive(deadline - time.monotonic())
            if not messages:
                raise NetlinkTimeout(errno_codes.ETIMEDOUT,
                                     f"no response from the kernel within {self.timeout} s "
                                     f"({end - start} requests unanswered)")
            for msg_type, flags, seq, body in messages:
                index = seqs.get(seq)
                if index is None:
                    continue  # a late response to an abandoned request
                response = responses[index]
                if msg_type == c.NLMSG_ERROR:
                    response.errno, response.detail = parse_error(flags, body)
                    response.done = True
                elif msg_type >= c.XFRM_MSG_NEWSA:
                    response.replies.append((msg_type, bytes(body)))
                    if index != end - 1:
                        response.done = True  # the last request's ack follows its data
            deadline = time.monotonic() + self.timeout

        for index in range(start, end - 1):
            response = responses[index]
            if response.done:
                continue
            response.done = True
            if not requests[index][1] & c.NLM_F_ACK:
                # A get that the kernel processed without sending data or an error.
                response.errno, response.detail = errno_codes.EIO, "no reply from the kernel"

    def dump(self, msg_type: int, body: bytes = b"") -> list[tuple[int, bytes]]:
        """Run a dump request and return its messages as (type, body).

        A dump that the kernel marks as interrupted (NLM_F_DUMP_INTR: the
        table changed while it was read) is run again, up to DUMP_ATTEMPTS
        times in all. Raises OSError for an error response or when every
        attempt was interrupted.
        """
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            entries, interrupted = self._dump_once(msg_type, body)
            if not interrupted:
                return entries
            log.debug("dump of message type %#x interrupted, attempt %d of %d",
                      msg_type, attempt, DUMP_ATTEMPTS)
        raise OSError(errno_codes.EINTR, f"dump of message type {msg_type:#x} was interrupted "
                                         f"{DUMP_ATTEMPTS} times by concurrent changes")

    def _dump_once(self, msg_type: int, body: bytes) -> tuple[list[tuple[int, bytes]], bool]:
        seq = self.next_seq()
        self.sock.send(codec.message(msg_type, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, body))
        entries: list[tuple[int, bytes]] = []
        interrupted = False
        while True:
            messages = self.receive(self.timeout)
            if not messages:
                raise NetlinkTimeout(errno_codes.ETIMEDOUT,
                                     f"dump of message type {msg_type:#x}: no response within "
                                     f"{self.timeout} s")
            for kind, flags, msg_seq, payload in messages:
                if msg_seq != seq:
                    continue
                if flags & c.NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == c.NLMSG_DONE:
                    return entries, interrupted
                if kind == c.NLMSG_ERROR:
                    number, detail = parse_error(flags, payload)
                    if number == 0:
                        return entries, interrupted
                    raise OSError(number, f"dump of message type {msg_type:#x} failed: "
                                          f"{os.strerror(number)} {detail}".rstrip())
                entries.append((kind, bytes(payload)))


def _open(groups: Iterable[int], rcvbuf: int, sndbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, c.NETLINK_XFRM)
    try:
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        for option in (c.NETLINK_CAP_ACK, c.NETLINK_EXT_ACK):
            try:
                sock.setsockopt(c.SOL_NETLINK, option, 1)
            except OSError:
                pass  # before Linux 4.3 / 4.12: full acks, no error texts
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(c.SOL_NETLINK, c.NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_buffer(sock: socket.socket, force_option: int, option: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def split_messages(data: memoryview) -> Iterable[tuple[int, int, int, memoryview]]:
    """Yield (type, flags, seq, body) for each netlink message in ``data``."""
    offset = 0
    while offset + codec.NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = codec.NLMSGHDR.unpack_from(data, offset)
        if length < codec.NLMSGHDR.size or offset + length > len(data):
            log.warning("dropping netlink datagram with invalid message length %d", length)
            return
        yield msg_type, flags, seq, data[offset + codec.NLMSGHDR.size:offset + length]
        offset += codec.align4(length)


def parse_error(flags: int, body: memoryview) -> tuple[int, str]:
    """Return (errno, extended-ack text) of an NLMSG_ERROR body; errno 0 is a plain ack."""
    if len(body) < 4:
        return errno_codes.EIO, "short NLMSG_ERROR message"
    (error,) = codec.NLMSGERR_ERROR.unpack_from(body)
    detail = ""
    if flags & c.NLM_F_ACK_TLVS and len(body) >= 4 + codec.NLMSGHDR.size:
        # The original request follows: its header only if NLM_F_CAPPED.
        original = codec.NLMSGHDR.unpack_from(body, 4)[0]
        offset = 4 + (codec.NLMSGHDR.size if flags & c.NLM_F_CAPPED else codec.align4(original))
        try:
            for attr_type, payload in codec.iter_attrs(body, offset, len(body)):
                if attr_type == c.NLMSGERR_ATTR_MSG:
                    detail = bytes(payload).split(b"\0", 1)[0].decode("utf-8", "replace")
        except codec.DecodeError:
            pass  # the error number is what matters; the text is a bonus
    return -error, detail
