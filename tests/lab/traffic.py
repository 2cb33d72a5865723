"""Measure outages from traffic: a UDP probe between two lab namespaces.

The sender emits numbered, timestamped datagrams at a fixed rate; the
receiver records when each arrives. An outage is the longest stretch with no
arrival, measured from the traffic itself, because ``ip`` commands alone take
100-400 ms under QEMU TCG and would blur any measurement taken around them.

Example::

    probe = lan_probe(topology, "gw1", "gw2", duration=8.0)
    probe.start()
    time.sleep(2)
    topology.link_down(topology.uplink("gw2", 0))
    report = probe.wait()
    print(report.lost, report.max_gap_ms)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.lab.netns import Namespace
from tests.lab.topology import Topology

log = logging.getLogger(__name__)

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RATE = 500.0  # datagrams per second
DEFAULT_PORT = 5001
START_TIMEOUT = 30.0  # seconds for each probe end to start; Python starts slowly under TCG
LINGER = 1.0  # seconds the receiver keeps listening after the sender ends
EXIT_TIMEOUT = 30.0  # seconds for either end to print its result after it should end

_ports = itertools.count(DEFAULT_PORT)


@dataclass
class ProbeReport:
    """What one probe run measured. Times are in ms from the first datagram sent."""

    sent: int
    received: int  # distinct sequence numbers that arrived
    lost: int
    duplicates: int
    max_gap_ms: float  # maximum time without an arrival, between first and last send
    max_gap_start_ms: float  # when that gap began
    send_errors: int  # sendto() failures, counted in sent and lost
    max_send_gap_ms: float  # the sender's maximum pause, to tell stalls from outages
    first_send_ns: int = 0  # CLOCK_REALTIME of the first datagram, as time.time_ns()
    receive_times_ms: list[float] = field(default_factory=list)  # per arrival, in order
    sources: list[str] = field(default_factory=list)  # source addresses seen

    def max_gap_interval(self) -> tuple[float, float]:
        """Return the longest gap as (start, end) in seconds since the epoch, like time.time()."""
        start = self.first_send_ns / 1e9 + self.max_gap_start_ms / 1e3
        return start, start + self.max_gap_ms / 1e3

    def summary(self) -> str:
        """Return a one-line description for logs and assertion messages."""
        return (f"sent {self.sent}, received {self.received}, lost {self.lost}, "
                f"max gap {self.max_gap_ms:.1f} ms at {self.max_gap_start_ms:.0f} ms, "
                f"send errors {self.send_errors}, max send gap {self.max_send_gap_ms:.1f} ms")


def compute_report(sender: dict, receiver: dict) -> ProbeReport:
    """Combine the JSON results of the two probe ends into a ProbeReport.

    ``sender`` has sent, send_errors, first_send_ns, last_send_ns and
    max_send_gap_ms; ``receiver`` has arrivals as [sequence, sent_ns,
    received_ns] lists and sources. The longest gap is taken over the
    receive times of the first copy of each datagram, with the first and
    last send times as the window's ends, so an outage at the start or one
    that never ends also counts.
    """
    sent = sender["sent"]
    first_ns = sender["first_send_ns"]
    last_ns = sender["last_send_ns"]

    seen: set[int] = set()
    duplicates = 0
    receive_ns = []
    for sequence, _sent_ns, received_ns in receiver["arrivals"]:
        if sequence in seen:
            duplicates += 1
            continue
        seen.add(sequence)
        receive_ns.append(received_ns)

    gap_ns, gap_start_ns = _max_gap(sorted(receive_ns), first_ns, last_ns)
    return ProbeReport(
        sent=sent,
        received=len(seen),
        lost=sent - len(seen),
        duplicates=duplicates,
        max_gap_ms=gap_ns / 1e6,
        max_gap_start_ms=(gap_start_ns - first_ns) / 1e6,
        send_errors=sender["send_errors"],
        max_send_gap_ms=sender["max_send_gap_ms"],
        first_send_ns=first_ns,
        receive_times_ms=[(received - first_ns) / 1e6 for received in receive_ns],
        sources=list(receiver["sources"]),
    )


def _max_gap(times_ns: list[int], first_ns: int, last_ns: int) -> tuple[int, int]:
    """Return (length, start) of the longest interval without an arrival in [first, last]."""
    inside = [time_ns for time_ns in times_ns if first_ns <= time_ns <= last_ns]
    points = [first_ns, *inside, last_ns]
    longest, start = 0, first_ns
    for earlier, later in itertools.pairwise(points):
        if later - earlier > longest:
            longest, start = later - earlier, earlier
    return longest, start


class ProbeError(RuntimeError):
    """A probe end failed to start, crashed or printed no result."""


class Probe:
    """A bounded UDP probe from one namespace to an address in another.

    ``start()`` launches the receiver, waits until it is bound, then launches
    the sender and returns when its first datagram goes out. The sender stops
    by itself after ``duration`` seconds. ``wait()``
    returns the report; ``stop()`` ends the sender early and returns the
    report. ``close()`` kills whatever still runs and is safe to call twice.
    """

    def __init__(self, sender: Namespace, receiver: Namespace, destination: str,
                 duration: float, rate: float = DEFAULT_RATE, port: int | None = None,
                 size: int = 64, source: str | None = None) -> None:
        if rate < 1 or duration <= 0:
            raise ValueError(f"invalid probe rate {rate}/s or duration {duration} s")
        self.sender_namespace = sender
        self.receiver_namespace = receiver
        self.destination = destination
        self.duration = duration
        self.rate = rate
        self.port = port if port is not None else next(_ports)
        self.size = size
        self.source = source
        self._sender: subprocess.Popen | None = None
        self._receiver: subprocess.Popen | None = None

    def __enter__(self) -> Probe:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, namespace: Namespace, arguments: list[str]) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=CHECKOUT)
        # -S skips the site module: the probe needs only the standard library,
        # and site's path scan is slow on the lab VM's 9p root filesystem.
        return namespace.popen([sys.executable, "-S", "-m", "tests.lab.probe", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=CHECKOUT)

    def start(self) -> None:
        """Start the receiver, wait until it listens, then start the sender and wait until it sends."""
        max_duration = self.duration + LINGER + START_TIMEOUT + EXIT_TIMEOUT
        self._receiver = self._spawn(self.receiver_namespace, [
            "receive", "--listen", self.destination, "--port", str(self.port),
            "--max-duration", str(max_duration)])
        self._wait_line(self._receiver, "receiver", "READY")

        arguments = ["send", "--to", self.destination, "--port", str(self.port),
                     "--rate", str(self.rate), "--duration", str(self.duration),
                     "--size", str(self.size)]
        if self.source is not None:
            arguments += ["--source", self.source]
        self._sender = self._spawn(self.sender_namespace, arguments)
        self._wait_line(self._sender, "sender", "SENDING")
        log.info("probe started: %s -> %s port %d, %.0f/s for %.1f s",
                 self.sender_namespace.name, self.destination, self.port,
                 self.rate, self.duration)

    def _wait_line(self, process: subprocess.Popen, role: str, expected: str) -> None:
        # Python starts slowly under TCG, so a test that acts right after
        # start() returned would otherwise act before any traffic flows.
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline().strip() if readable else ""
        if line == expected:
            return

        self.close()
        stderr = process.stderr.read() if process.stderr is not None else ""
        raise ProbeError(f"probe {role} for {self.destination} port {self.port} did not "
                         f"start within {START_TIMEOUT:.0f} s: output {line!r}, {stderr.strip()}")

    def run(self) -> ProbeReport:
        """Start the probe, wait for its duration and return the report."""
        self.start()
        return self.wait()

    def wait(self) -> ProbeReport:
        """Wait for the sender to finish its duration, then stop the receiver; return the report."""
        return self._finish(timeout=self.duration + EXIT_TIMEOUT)

    def stop(self) -> ProbeReport:
        """End the sender now, then stop the receiver; return the report."""
        if self._sender is not None and self._sender.poll() is None:
            self._sender.terminate()
        return self._finish(timeout=EXIT_TIMEOUT)

    def _finish(self, timeout: float) -> ProbeReport:
        if self._sender is None or self._receiver is None:
            raise ProbeError("probe was not started")
        try:
            sender_result = _result(self._sender, "sender", timeout)
            time.sleep(LINGER)  # datagrams still in flight
            self._receiver.terminate()
            receiver_result = _result(self._receiver, "receiver", EXIT_TIMEOUT)
        finally:
            self.close()

        report = compute_report(sender_result, receiver_result)
        log.info("probe report: %s", report.summary())
        return report

    def close(self) -> None:
        """Kill both ends if they still run."""
        for process in (self._sender, self._receiver):
            if process is not None and process.poll() is None:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=EXIT_TIMEOUT)


def _result(process: subprocess.Popen, role: str, timeout: float) -> dict:
    """Wait for one probe end and parse the JSON on the last line of its output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ProbeError(f"probe {role} did not finish within {timeout:.0f} s") from None
    lines = stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        raise ProbeError(f"probe {role} failed with exit status {process.returncode}: "
                         f"{stderr.strip()}")
    return json.loads(lines[-1])


def lan_probe(topology: Topology, sender: str, receiver: str, duration: float,
              rate: float = DEFAULT_RATE, ipv6: bool = False) -> Probe:
    """Return a probe from the LAN host of gateway ``sender`` to the LAN host of ``receiver``.

    The probe is not started yet; the topology kills it at close() if the
    test does not get to wait for it.
    """
    source_gateway = topology.gateway(sender)
    target_gateway = topology.gateway(receiver)
    if source_gateway.lan_host is None or target_gateway.lan_host is None:
        raise ValueError(f"lab has no LAN host behind {sender} or {receiver}")

    if ipv6:
        if target_gateway.lan_host_address6 is None:
            raise ValueError(f"lab has no IPv6 on the LAN behind {receiver}")
        destination = str(target_gateway.lan_host_address6.ip)
    else:
        assert target_gateway.lan_host_address is not None
        destination = str(target_gateway.lan_host_address.ip)

    probe = Probe(source_gateway.lan_host, target_gateway.lan_host, destination,
                  duration=duration, rate=rate)
    topology.add_cleanup(probe.close)
    return probe
