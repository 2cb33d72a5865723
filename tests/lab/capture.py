"""Find traffic between protected subnets that crossed an uplink unencrypted.

A tcpdump runs on every gateway uplink and keeps only IP packets whose outer
source and destination lie in two different protected subnets. Inside an
IPsec tunnel the outer header carries the gateways' addresses (ESP, or UDP
port 4500 with NAT-T), so any packet that matches was sent in cleartext.

tcpdump captures only packets the gateway sends (``-Q out``): on receive,
Linux hands the packet taps a tunnel-mode packet a second time after
decryption, which would look like a leak but is not. A leak on the way in is
still seen, on the other gateway's uplink as it goes out.

Example::

    capture = CleartextCapture.on_uplinks(topology)
    capture.start()
    ...  # traffic
    leaks = capture.stop()
    assert leaks == [], leaks
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from tests.lab.netns import Namespace
from tests.lab.topology import Topology

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds for tcpdump to start listening under QEMU TCG
STOP_TIMEOUT = 10.0

Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class CleartextPacket:
    """One captured packet between protected subnets, as tcpdump printed it."""

    namespace: str
    interface: str
    timestamp: float  # seconds since the epoch, from tcpdump -tt
    source: str
    destination: str
    line: str  # tcpdump's whole line, e.g. "... IP 10.1.0.10.40000 > 10.2.0.10.5001: UDP, ..."


def bpf_filter(subnets: list[Network]) -> str:
    """Return a tcpdump filter for packets from one of ``subnets`` to a different one."""
    if len(subnets) < 2:
        raise ValueError(f"need at least two protected subnets, got {subnets}")
    clauses = []
    for source, destination in itertools.permutations(subnets, 2):
        if source.version != destination.version:
            continue
        family = "ip" if source.version == 4 else "ip6"
        clauses.append(f"({family} and src net {source} and dst net {destination})")
    if not clauses:
        raise ValueError(f"no two protected subnets of the same IP version in {subnets}")
    return " or ".join(clauses)


_LINE = re.compile(r"^(?P<time>\d+\.\d+) (?:IP|IP6) (?P<source>\S+) > (?P<destination>\S+?):? ")


def _strip_port(endpoint: str) -> str:
    # tcpdump -n prints "10.1.0.10.40000" and "2001:db8:1::10.40000": address, dot, port.
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(endpoint))
    address, _, _port = endpoint.rpartition(".")
    return str(ipaddress.ip_address(address))


def parse_line(line: str, namespace: str, interface: str) -> CleartextPacket | None:
    """Parse one line of ``tcpdump -n -tt`` output; return None for lines that are no packet."""
    match = _LINE.match(line)
    if match is None:
        return None
    try:
        source = _strip_port(match["source"])
        destination = _strip_port(match["destination"])
    except ValueError:
        return None
    return CleartextPacket(namespace=namespace, interface=interface,
                           timestamp=float(match["time"]), source=source,
                           destination=destination, line=line.rstrip("\n"))


_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")


class CleartextCapture:
    """tcpdump on a set of (namespace, interface) points, looking for cleartext between subnets."""

    def __init__(self, points: list[tuple[Namespace, str]], subnets: list[Network]) -> None:
        if not points:
            raise ValueError("no interfaces to capture on")
        self.points = points
        self.subnets = subnets
        self.filter = bpf_filter(subnets)
        self.kernel_drops = 0  # packets tcpdump lost; each one matched the filter
        self._processes: list[tuple[Namespace, str, subprocess.Popen]] = []

    @classmethod
    def on_uplinks(cls, topology: Topology) -> CleartextCapture:
        """Return a capture on every gateway uplink, for the LAN subnets of ``topology``.

        The topology stops the capture at close() if the test does not.
        """
        points = [(uplink.namespace, uplink.interface)
                  for gateway in topology.gateways for uplink in gateway.uplinks]
        subnets: list[Network] = []
        for gateway in topology.gateways:
            if gateway.lan_network is not None:
                subnets.append(gateway.lan_network)
            if gateway.lan_network6 is not None:
                subnets.append(gateway.lan_network6)
        capture = cls(points, subnets)
        topology.add_cleanup(capture.close)
        return capture

    def start(self) -> None:
        """Start tcpdump on every point and return once all of them are listening."""
        for namespace, interface in self.points:
            process = namespace.popen(
                ["tcpdump", "-n", "-tt", "-l", "-Q", "out", "-i", interface, self.filter],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._processes.append((namespace, interface, process))

        for namespace, interface, process in self._processes:
            self._wait_listening(namespace, interface, process)
        log.info("capture started on %d interfaces: %s", len(self.points), self.filter)

    def _wait_listening(self, namespace: Namespace, interface: str,
                        process: subprocess.Popen) -> None:
        # tcpdump writes "listening on <interface>, ..." to stderr once it
        # captures. It is read raw, because a buffered reader could take that line
        # into its buffer where select() no longer reports it.
        assert process.stderr is not None
        descriptor = process.stderr.fileno()
        output = b""
        deadline = time.monotonic() + START_TIMEOUT
        while b"listening on" not in output and time.monotonic() < deadline:
            readable, _, _ = select.select([descriptor], [], [], 0.5)
            if not readable:
                continue
            chunk = os.read(descriptor, 4096)
            if not chunk:  # tcpdump exited
                break
            output += chunk
        if b"listening on" in output:
            return

        self.close()
        raise RuntimeError(f"tcpdump on {interface} in {namespace.name} did not start "
                           f"within {START_TIMEOUT:.0f} s (exit status {process.poll()}): "
                           f"{output.decode(errors='replace').strip()}")

    def stop(self) -> list[CleartextPacket]:
        """Stop every tcpdump and return the cleartext packets they saw, in capture order."""
        packets: list[CleartextPacket] = []
        for namespace, interface, process in self._processes:
            process.terminate()  # tcpdump flushes its output and prints its counters
            try:
                stdout, stderr = process.communicate(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()

            for line in stdout.decode(errors="replace").splitlines():
                packet = parse_line(line, namespace.name, interface)
                if packet is not None:
                    packets.append(packet)
            dropped = _DROPPED.search(stderr.decode(errors="replace"))
            if dropped and int(dropped.group(1)) > 0:
                self.kernel_drops += int(dropped.group(1))
                log.warning("tcpdump on %s in %s dropped %s cleartext packets",
                            interface, namespace.name, dropped.group(1))
        self._processes = []

        if packets:
            log.warning("capture found %d cleartext packets, first: %s",
                        len(packets), packets[0].line)
        return packets

    def close(self) -> None:
        """Kill every tcpdump still running, discarding its output."""
        for _namespace, _interface, process in self._processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=STOP_TIMEOUT)
        self._processes = []
