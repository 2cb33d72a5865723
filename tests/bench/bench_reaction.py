"""How fast the manager reacts to a network event: the event's delivery to the first IKE datagram.

    python -m tests.bench.bench_reaction [--out FILE] [--trials N]

Runs on the host, natively: two managers joined by the unit tests' in-memory network, with the
fake XFRM backend and fixed path rankings (no netlink, no route lookups). Each trial brings a
fresh tunnel up and makes the initiator's, or the responder's, current address unusable. It
times `Manager.on_net_events` until the first datagram is handed to the transport.
The route lookups that the daemon does for the ranking are timed apart, against the host kernel
in a network namespace of their own (needs root). The two add up to the daemon's share of
"netlink event to first IKE packet"; the kernel's delivery of the netlink message comes on top.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.netwatch.events import Resynced
from agent.paths import FixedPaths
from tests.unit.test_manager import A, A2, B, B2, Pair, make_pair

EVENT = [Resynced(initial=False)]


def tunnel(directory: Path) -> Pair:
    pair = make_pair(directory, a_extra="switch = true", b_extra="switch = true", second_addresses=True)
    pair.a.paths = FixedPaths(ranked={"site": [(A, B), (A2, B), (A, B2), (A2, B2)]}, local={A, A2})
    pair.b.paths = FixedPaths(ranked={"site": [(B, A), (B2, A)]}, local={B, B2})
    pair.bring_up()
    return pair


def reaction_ns(pair: Pair, side: str) -> int:
    """Return the nanoseconds from on_net_events to the first datagram `side` sends."""
    manager = pair.a if side == "initiator" else pair.b
    if side == "initiator":
        manager.paths = FixedPaths(ranked={"site": [(A2, B), (A2, B2)]}, local={A2})
    else:
        manager.paths = FixedPaths(ranked={"site": [(B2, A)]}, local={B2})
    sent_at: list[int] = []
    transport = manager.transport

    class Timed:
        def send(self, data, local, remote) -> bool:
            sent_at.append(time.perf_counter_ns())
            return transport.send(data, local, remote)

    manager.transport = Timed()
    start = time.perf_counter_ns()
    manager.on_net_events(EVENT)
    if not sent_at:
        raise RuntimeError(f"the {side} sent nothing after the network event")
    pair.network.deliver()
    return sent_at[0] - start


def measure(side: str, trials: int) -> list[float]:
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for trial in range(trials):
            path = Path(directory) / f"{side}-{trial}"
            path.mkdir()
            results.append(reaction_ns(tunnel(path), side) / 1e6)
    return results


# Route lookups timed in a namespace of their own: two veth uplinks with a default route each.
LOOKUP_SCRIPT = """
import time, statistics
from agent.uplinks import RouteResolver
pairs = [(r, l) for r in ("198.51.100.74", "203.0.113.74") for l in (None, "192.0.2.10", "198.51.100.10")]
times = []
with RouteResolver() as resolver:
    for _ in range({trials}):
        start = time.perf_counter_ns()
        for remote, local in pairs:
            resolver.lookup(remote, src=local)
        times.append((time.perf_counter_ns() - start) / 1e6)
print(statistics.median(times), min(times), max(times))
"""
NAMESPACE_SETUP = [
    "link add up0 type veth peer name up0p", "link add up1 type veth peer name up1p",
    "link set up0 up", "link set up0p up", "link set up1 up", "link set up1p up",
    "addr add 192.0.2.10/24 dev up0", "addr add 198.51.100.10/24 dev up1",
    "route add default via 192.0.2.1 dev up0 metric 100", "route add default via 198.51.100.1 dev up1 metric 101",
]


def measure_lookups(trials: int) -> tuple[float, float, float]:
    """Time the six route lookups of one replan (2 remotes x (kernel choice + 2 sources)), in ms."""
    namespace = f"rmb-bench-rt-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for command in NAMESPACE_SETUP:
            subprocess.run(["ip", "-n", namespace, *command.split()], check=True)
        result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c",
                                 LOOKUP_SCRIPT.format(trials=trials)],
                                check=True, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    median, low, high = map(float, result.stdout.split())
    return median, low, high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as a Markdown section to this file")
    parser.add_argument("--trials", type=int, default=50, help="tunnels per side (default 50)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the managers log every step at INFO

    rows = []
    for side, action in (("initiator", "MOBIKE update on the other pair"),
                         ("responder", "SWITCH_TO_IP_ADDRESS, after copying the inbound SA")):
        times = measure(side, args.trials)
        rows.append(f"| {side}: address unusable → {action} | {statistics.median(times):.2f} ms "
                    f"| {min(times):.2f}–{max(times):.2f} ms | ≤ 5 ms with the lookups |")
    median, low, high = measure_lookups(args.trials * 10)
    rows.append(f"| route lookups of one replan: 2 remotes × (kernel's choice + 2 sources) | {median:.2f} ms "
                f"| {low:.2f}–{high:.2f} ms | |")
    lines = [
        "## Reaction to a network event (bench_reaction)",
        "",
        "From the delivery of a network event to the manager until its first IKE datagram is "
        f"handed to the socket, native CPU, {args.trials} fresh tunnels per row. The fake XFRM "
        "backend and fixed path rankings stand in for the kernel. The route lookups (one RTM_GETROUTE "
        "per candidate pair) are timed apart, against this host's kernel in a namespace with two "
        "veth uplinks; the two add up to the daemon's reaction. The kernel's delivery of the "
        "netlink event itself is not included.",
        "",
        "| reaction | median | min–max | target (event to first IKE packet) |",
        "| --- | --- | --- | --- |",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
