"""The batch and dump logic of xfrm.netlink, against a stand-in kernel on a socketpair.

The stand-in reads each datagram, splits it into netlink messages and responds
to every message separately, as the kernel does: an ack (NLMSG_ERROR) for
requests with NLM_F_ACK, a data message for the others, an error where the
test requests one.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from xfrm import codec
from xfrm import constants as c
from xfrm.netlink import NetlinkSocket, Response, NetlinkTimeout, parse_error, split_messages

def ack(seq: int, number: int = 0, text: str = "") -> bytes:
    """Return an NLMSG_ERROR message (capped, with an extended-ack text if given)."""
    flags = c.NLM_F_CAPPED
    body = struct.pack("=i", -number) + codec.NLMSGHDR.pack(16, 0, 0, seq, 0)
    if text:
        flags |= c.NLM_F_ACK_TLVS
        body += codec.attr(c.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
    return codec.NLMSGHDR.pack(16 + len(body), c.NLMSG_ERROR, flags, seq, 0) + body


def is_plain_ack(message: bytes) -> bool:
    """Return whether ``message`` is an NLMSG_ERROR with error 0."""
    msg_type = codec.NLMSGHDR.unpack_from(message)[1]
    return msg_type == c.NLMSG_ERROR and struct.unpack_from("=i", message, 16)[0] == 0


class StandInKernel:
    """Responds to requests on one end of a socketpair from a thread, one datagram per message."""

    def __init__(self, respond: Callable[[int, int, int, bytes], list[bytes]]) -> None:
        self.kernel_end, self.user_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.respond = respond
        self.requests: list[tuple[int, int, int, bytes]] = []
        self.datagrams = 0
        self.ack_flags: list[list[bool]] = []  # per datagram: which requests asked for an ack
        self.unanswered_peak = 0  # maximum of requests received but without a response yet
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # Short timeouts, so that close() can stop the thread: shutdown() does
        # not wake a recv() on a datagram socketpair. The thread gives up
        # after a minute in any case.
        self.kernel_end.settimeout(0.05)
        deadline = time.monotonic() + 60.0
        while not self.stopped and time.monotonic() < deadline:
            try:
                data = self.kernel_end.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams += 1
            messages = list(split_messages(memoryview(data)))
            self.ack_flags.append([bool(flags & c.NLM_F_ACK) for _, flags, _, _ in messages])
            self.unanswered_peak = max(self.unanswered_peak, len(messages))
            for msg_type, flags, seq, body in messages:
                request = (msg_type, flags, seq, bytes(body))
                self.requests.append(request)
                for message in self.respond(*request):
                    if is_plain_ack(message) and not flags & c.NLM_F_ACK:
                        continue  # like the kernel: a success is acked only on request
                    self.kernel_end.send(message)

    def close(self) -> None:
        self.stopped = True
        self.thread.join(timeout=10.0)
        self.user_end.close()
        self.kernel_end.close()


@pytest.fixture
def make_kernel():
    kernels: list[StandInKernel] = []

    def _make(respond) -> tuple[StandInKernel, NetlinkSocket]:
        kernel = StandInKernel(respond)
        kernels.append(kernel)
        return kernel, NetlinkSocket(sock=kernel.user_end, timeout=5.0)

    yield _make
    for kernel in kernels:
        kernel.close()


def ack_all_but_every_third(msg_type: int, flags: int, seq: int, body: bytes) -> list[bytes]:
    number = struct.unpack_from("=I", body)[0]
    if number % 3 == 2:
        return [ack(seq, errno.EEXIST, f"request {number} exists")]
    return [ack(seq)]


def test_batch_maps_each_error_to_its_request(make_kernel) -> None:
    kernel, sock = make_kernel(ack_all_but_every_third)
    requests = [(c.XFRM_MSG_NEWPOLICY, c.NLM_F_REQUEST | c.NLM_F_ACK, struct.pack("=I", n))
                for n in range(3000)]

    responses = sock.transact(requests)

    assert len(responses) == 3000
    for number, response in enumerate(responses):
        if number % 3 == 2:
            assert response.errno == errno.EEXIST, number
            assert response.detail == f"request {number} exists"
        else:
            assert response.errno == 0, number
    assert len(kernel.requests) == 3000


def test_batch_sends_many_requests_per_datagram(make_kernel) -> None:
    kernel, sock = make_kernel(lambda t, f, seq, b: [ack(seq)])
    requests = [(c.XFRM_MSG_DELSA, c.NLM_F_REQUEST | c.NLM_F_ACK, bytes(24))] * 400

    sock.transact(requests)

    assert kernel.datagrams < 400 // 8
    assert len({seq for _, _, seq, _ in kernel.requests}) == 400


def test_batch_keeps_window_of_unanswered_requests(make_kernel) -> None:
    kernel, sock = make_kernel(lambda t, f, seq, b: [ack(seq)])
    sock.window = 32

    responses = sock.transact([(c.XFRM_MSG_DELSA, c.NLM_F_REQUEST | c.NLM_F_ACK, bytes(24))] * 200)

    assert kernel.unanswered_peak == 32
    assert all(response.done for response in responses)


def test_request_without_ack_is_answered_by_data(make_kernel) -> None:
    def respond(msg_type: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        if flags & c.NLM_F_ACK:
            return [ack(seq)]
        if body == b"gone":
            return [ack(seq, errno.ESRCH)]
        return [codec.message(c.XFRM_MSG_NEWSA, 0, seq, b"data" + body)]

    _, sock = make_kernel(respond)

    responses = sock.transact([
        (c.XFRM_MSG_GETSA, c.NLM_F_REQUEST, b"1234"),
        (c.XFRM_MSG_GETSA, c.NLM_F_REQUEST, b"gone"),
        (c.XFRM_MSG_DELSA, c.NLM_F_REQUEST | c.NLM_F_ACK, b"5678"),
    ])

    assert responses[0] == Response(0, "", [(c.XFRM_MSG_NEWSA, b"data1234")], True)
    assert responses[1].errno == errno.ESRCH
    assert responses[1].replies == []
    assert responses[2] == Response(0, "", [], True)


def test_batch_times_out_without_responses(make_kernel) -> None:
    _, sock = make_kernel(lambda *request: [])
    sock.timeout = 0.3

    with pytest.raises(NetlinkTimeout, match="1 requests unanswered"):
        sock.transact([(c.XFRM_MSG_DELSA, c.NLM_F_REQUEST | c.NLM_F_ACK, bytes(24))])


def dump_responses(interrupted_first: int) -> Callable[[int, int, int, bytes], list[bytes]]:
    attempts = []

    def respond(msg_type: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        attempts.append(seq)
        extra = c.NLM_F_DUMP_INTR if len(attempts) <= interrupted_first else 0
        entries = [codec.message(c.XFRM_MSG_NEWPOLICY, c.NLM_F_MULTI | extra, seq, bytes([n]) * 4)
                   for n in range(3)]
        done = codec.message(c.NLMSG_DONE, c.NLM_F_MULTI | extra, seq, bytes(4))
        return [b"".join(entries[:2]), entries[2] + done]

    return respond


def test_dump_collects_until_done(make_kernel) -> None:
    _, sock = make_kernel(dump_responses(interrupted_first=0))

    entries = sock.dump(c.XFRM_MSG_GETPOLICY)

    assert entries == [(c.XFRM_MSG_NEWPOLICY, bytes([n]) * 4) for n in range(3)]


def test_interrupted_dump_is_repeated(make_kernel) -> None:
    kernel, sock = make_kernel(dump_responses(interrupted_first=2))

    entries = sock.dump(c.XFRM_MSG_GETPOLICY)

    assert len(entries) == 3
    assert len(kernel.requests) == 3
    assert all(flags & c.NLM_F_DUMP == c.NLM_F_DUMP for _, flags, _, _ in kernel.requests)


def test_dump_interrupted_every_time_fails(make_kernel) -> None:
    _, sock = make_kernel(dump_responses(interrupted_first=100))

    with pytest.raises(OSError, match="interrupted 5 times"):
        sock.dump(c.XFRM_MSG_GETPOLICY)


def test_dump_error_is_raised(make_kernel) -> None:
    _, sock = make_kernel(lambda t, f, seq, b: [ack(seq, errno.EPERM)])

    with pytest.raises(OSError) as raised:
        sock.dump(c.XFRM_MSG_GETSA)

    assert raised.value.errno == errno.EPERM


def test_parse_error_reads_extended_ack_text() -> None:
    message = ack(7, errno.ENOSYS, "Requested AEAD algorithm not found")
    (_, _, _, body), = split_messages(memoryview(message))

    assert parse_error(c.NLM_F_CAPPED | c.NLM_F_ACK_TLVS, body) == (
        errno.ENOSYS, "Requested AEAD algorithm not found")


def test_parse_error_skips_uncapped_request() -> None:
    original = codec.message(c.XFRM_MSG_NEWSA, 5, 9, bytes(30))
    body = (struct.pack("=i", -errno.EINVAL) + original
            + codec.attr(c.NLMSGERR_ATTR_MSG, b"Invalid key\0"))

    assert parse_error(c.NLM_F_ACK_TLVS, memoryview(body)) == (errno.EINVAL, "Invalid key")


def test_split_messages_stops_at_bad_length() -> None:
    good = codec.message(c.XFRM_MSG_NEWSA, 0, 1, b"abcd")
    bad = codec.NLMSGHDR.pack(400, c.XFRM_MSG_NEWSA, 0, 2, 0)

    messages = list(split_messages(memoryview(good + bad)))

    assert [(t, s, bytes(b)) for t, _, s, b in messages] == [(c.XFRM_MSG_NEWSA, 1, b"abcd")]


def test_only_last_request_of_datagram_asks_for_ack(make_kernel) -> None:
    kernel, sock = make_kernel(ack_all_but_every_third)
    sock.window = 16
    requests = [(c.XFRM_MSG_NEWPOLICY, c.NLM_F_REQUEST | c.NLM_F_ACK, struct.pack("=I", n))
                for n in range(40)]

    responses = sock.transact(requests)

    assert kernel.ack_flags == [[False] * 15 + [True], [False] * 15 + [True], [False] * 7 + [True]]
    assert [n for n, r in enumerate(responses) if r.errno] == list(range(2, 40, 3))
    assert all(r.done for r in responses)


def test_get_last_in_datagram_gets_data_then_ack(make_kernel) -> None:
    def respond(msg_type: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        if msg_type == c.XFRM_MSG_GETSA:
            return [codec.message(c.XFRM_MSG_NEWSA, 0, seq, b"data"), ack(seq)]
        return [ack(seq)]

    kernel, sock = make_kernel(respond)

    responses = sock.transact([(c.XFRM_MSG_DELSA, c.NLM_F_REQUEST | c.NLM_F_ACK, bytes(24)),
                               (c.XFRM_MSG_GETSA, c.NLM_F_REQUEST, bytes(24))])

    assert kernel.ack_flags == [[False, True]]
    assert responses[1] == Response(0, "", [(c.XFRM_MSG_NEWSA, b"data")], True)


def test_get_without_data_is_an_error(make_kernel) -> None:
    _, sock = make_kernel(lambda t, f, seq, b: [ack(seq)])

    responses = sock.transact([(c.XFRM_MSG_GETSA, c.NLM_F_REQUEST, bytes(24)),
                               (c.XFRM_MSG_DELSA, c.NLM_F_REQUEST | c.NLM_F_ACK, bytes(24))])

    assert responses[0].errno == errno.EIO
    assert responses[1].errno == 0
