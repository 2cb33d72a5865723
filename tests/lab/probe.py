"""The two ends of the traffic probe, run as processes inside lab namespaces.

    python -m tests.lab.probe receive --listen 10.2.0.10 --port 5001 --max-duration 30
    python -m tests.lab.probe send --to 10.2.0.10 --port 5001 --rate 500 --duration 10

Each datagram carries a magic value, a sequence number and the sender's
CLOCK_REALTIME in nanoseconds. The receiver takes the kernel's receive
timestamp (SO_TIMESTAMPNS, also CLOCK_REALTIME), so a receiver that is
scheduled late does not see a gap that the network did not cause. Both ends
run in namespaces of one kernel, so their clocks are the same clock.

The receiver prints READY once its socket is bound, the sender prints SENDING
just before its first datagram, and each end prints one JSON object when it
ends (after its duration, or on SIGTERM). tests.lab.traffic
starts these processes and computes the report.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time

MAGIC = b"RMBP"
HEADER = struct.Struct("!4sIq")  # magic, sequence number, send time in ns
MAX_DATAGRAM = 65535
READY = "READY"  # the receiver's first line: its socket is bound
SENDING = "SENDING"  # the sender's first line: its first datagram goes out now

# From linux/socket.h and asm-generic/socket.h; the socket module lacks them.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")


class _Stop:
    """A flag that SIGTERM sets, so that each end reports what it has before exiting."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def encode(sequence: int, sent_ns: int, size: int) -> bytes:
    """Build one probe datagram of ``size`` bytes (at least the header)."""
    header = HEADER.pack(MAGIC, sequence, sent_ns)
    return header + bytes(max(0, size - len(header)))


def decode(datagram: bytes) -> tuple[int, int] | None:
    """Return (sequence, sent_ns) of a probe datagram, or None for anything else."""
    if len(datagram) < HEADER.size:
        return None
    magic, sequence, sent_ns = HEADER.unpack_from(datagram)
    if magic != MAGIC:
        return None
    return sequence, sent_ns


def send(destination: str, port: int, rate: float, duration: float, size: int,
         source: str | None) -> dict:
    """Send ``rate`` datagrams per second for ``duration`` seconds and return the counts.

    Each datagram has a fixed send slot (start + n / rate). A late sender
    sends at once and keeps to the slots after it, and ``max_send_gap_ms``
    shows how late it got, so a stalled sender is not taken for a network
    outage. Send errors (e.g. "Network is unreachable" while a link is
    down) are counted and the datagram counts as sent and lost.
    """
    stop = _Stop()
    sock = socket.socket(_family(destination), socket.SOCK_DGRAM)
    if source is not None:
        sock.bind((source, 0))

    count = int(rate * duration)
    interval = 1.0 / rate
    errors = 0
    first_ns = last_ns = 0
    max_send_gap_ns = 0
    print(SENDING, flush=True)
    start = time.monotonic()
    sent = 0
    for sequence in range(count):
        if stop.requested:
            break
        delay = start + sequence * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)

        now_ns = time.time_ns()
        try:
            sock.sendto(encode(sequence, now_ns, size), (destination, port))
        except OSError:
            errors += 1
        sent += 1

        if sequence == 0:
            first_ns = now_ns
        else:
            max_send_gap_ns = max(max_send_gap_ns, now_ns - last_ns)
        last_ns = now_ns

    sock.close()
    return {"sent": sent, "send_errors": errors, "first_send_ns": first_ns,
            "last_send_ns": last_ns, "max_send_gap_ms": max_send_gap_ns / 1e6}


def _receive_timestamp(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanoseconds
    return time.time_ns()  # no kernel timestamp: the next best thing


def receive(listen: str, port: int, max_duration: float) -> dict:
    """Record probe datagrams until SIGTERM or ``max_duration`` seconds, and return them.

    Prints READY on stdout once the socket is bound.
    """
    stop = _Stop()
    sock = socket.socket(_family(listen), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((listen, port))
    print(READY, flush=True)

    arrivals: list[tuple[int, int, int]] = []
    sources: set[str] = set()
    ignored = 0
    deadline = time.monotonic() + max_duration
    while not stop.requested and time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if not readable:
            continue
        datagram, ancillary, _, address = sock.recvmsg(MAX_DATAGRAM, 1024)
        received_ns = _receive_timestamp(ancillary)
        decoded = decode(datagram)
        if decoded is None:
            ignored += 1
            continue
        sequence, sent_ns = decoded
        arrivals.append((sequence, sent_ns, received_ns))
        sources.add(address[0])

    sock.close()
    return {"arrivals": arrivals, "sources": sorted(sources), "ignored": ignored}


def main(argv: list[str] | None = None) -> int:
    """Run one end of the probe as the command line requests and print its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    sender = commands.add_parser("send", help="send numbered, timestamped datagrams")
    sender.add_argument("--to", required=True, help="receiver's IP address")
    sender.add_argument("--port", type=int, required=True, help="receiver's UDP port")
    sender.add_argument("--rate", type=float, default=500.0, help="datagrams per second")
    sender.add_argument("--duration", type=float, required=True, help="seconds to send")
    sender.add_argument("--size", type=int, default=64, help="UDP payload size in bytes")
    sender.add_argument("--source", help="local address to send from")

    receiver = commands.add_parser("receive", help="record the datagrams that arrive")
    receiver.add_argument("--listen", required=True, help="local IP address to bind")
    receiver.add_argument("--port", type=int, required=True, help="UDP port to bind")
    receiver.add_argument("--max-duration", type=float, required=True,
                          help="seconds after which the receiver stops by itself")

    args = parser.parse_args(argv)
    if args.command == "send":
        if args.rate <= 0 or args.duration <= 0:
            parser.error(f"invalid --rate {args.rate} or --duration {args.duration}: "
                         "both must be positive")
        result = send(args.to, args.port, args.rate, args.duration, args.size, args.source)
    else:
        result = receive(args.listen, args.port, args.max_duration)
    json.dump(result, sys.stdout)
    print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
