"""Benchmark: IKE SA setups per second and memory per established IKE SA.

One setup is IKE_SA_INIT plus IKE_AUTH with a PSK, X25519, AES-GCM-256 and one CHILD_SA, with
both roles (an initiator endpoint and a responder endpoint) in this process and on one core.
Datagrams go straight from one endpoint to the other, so the figures cover parsing, crypto and
the state machines but no sockets or kernel.

Memory: 10,000 IKE SAs are established (10,000 on each endpoint, since both roles live here);
the growth of the resident set size (RSS) and, in a second run, of the Python heap traced by
tracemalloc is divided by the number of IKE SAs. Events are consumed as a driver would, so they
are not counted. Rates are in CPU time of this process, so other load on the machine does not
lower them.

    python -m tests.bench.bench_ike --out FILE [--setups N] [--sas N]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

from agent.ike import ChildConfig, IkeConfig, IkeEndpoint, Identity, IkeSaEstablished, TrafficSelector

PSK = b"benchmark shared secret"
BATCH = 100  # IKE SAs initiated before the datagrams are delivered, well below the half-open limit
INITIATOR = ("192.0.2.1", 500)
RESPONDER = ("198.51.100.1", 500)


def configs() -> tuple[IkeConfig, IkeConfig]:
    left_ts, right_ts = TrafficSelector.from_network("10.1.0.0/16"), TrafficSelector.from_network("10.2.0.0/16")
    proposals = ("aes256gcm16-prfsha256-x25519",)
    left = IkeConfig("bench", Identity.from_string("@left"), Identity.from_string("@right"), psk=PSK,
                     proposals=proposals,
                     children=(ChildConfig("net", (left_ts,), (right_ts,), esp_proposals=("aes256gcm16",)),))
    right = IkeConfig("bench", Identity.from_string("@right"), Identity.from_string("@left"), psk=PSK,
                      proposals=proposals,
                      children=(ChildConfig("net", (right_ts,), (left_ts,), esp_proposals=("aes256gcm16",)),))
    return left, right


def endpoints() -> tuple[IkeEndpoint, IkeEndpoint, IkeConfig]:
    left_config, right_config = configs()
    left = IkeEndpoint(random=os.urandom)
    right = IkeEndpoint([right_config], random=os.urandom)
    return left, right, left_config


def pump(left: IkeEndpoint, right: IkeEndpoint, now: float) -> None:
    """Deliver datagrams both ways until none is left."""
    while True:
        moved = False
        for source, destination in ((left, right), (right, left)):
            for data, local, remote in source.datagrams_to_send(now):
                moved = True
                destination.receive_datagram(data, remote, local, now)
        if not moved:
            return


def establish(left: IkeEndpoint, right: IkeEndpoint, config: IkeConfig, count: int) -> int:
    """Set up `count` IKE SAs in batches; return how many the initiator saw established."""
    done = 0
    for start in range(0, count, BATCH):
        for _ in range(min(BATCH, count - start)):
            left.initiate(config, INITIATOR, RESPONDER, 0.0)
        pump(left, right, 0.0)
        done += sum(isinstance(event, IkeSaEstablished) for event in left.events())
        right.events()
    return done


def measure_rate(setups: int) -> tuple[float, int]:
    left, right, config = endpoints()
    establish(left, right, config, min(200, setups))  # warm-up
    left, right, config = endpoints()
    # CPU time of this process, so that other processes on a shared machine do not count.
    start = time.process_time()
    done = establish(left, right, config, setups)
    return time.process_time() - start, done


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(count: int, traced: bool) -> tuple[float, int]:
    """Return (growth per IKE SA pair in bytes, IKE SAs established).

    With `traced`, the growth is that of the Python heap seen by tracemalloc. Otherwise it is
    that of the RSS, measured without tracemalloc because its own bookkeeping would inflate it.
    """
    left, right, config = endpoints()
    establish(left, right, config, 10)  # import and cache everything first
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    done = establish(left, right, config, count)
    gc.collect()
    if traced:
        growth = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    else:
        growth = rss_bytes() - before
    assert len(left.ike_sas) == len(right.ike_sas) == count + 10, (len(left.ike_sas), len(right.ike_sas))
    return growth / count, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as a Markdown section to this file")
    parser.add_argument("--setups", type=int, default=5000, help="IKE SA setups timed for the rate (default 5000)")
    parser.add_argument("--sas", type=int, default=10000, help="IKE SAs kept for the memory figure (default 10000)")
    args = parser.parse_args(argv)

    elapsed, done = measure_rate(args.setups)
    if done != args.setups:
        print(f"only {done} of {args.setups} IKE SAs were established", file=sys.stderr)
        return 1
    rate = args.setups / elapsed
    rss, established = measure_memory(args.sas, traced=False)
    traced, established_traced = measure_memory(args.sas, traced=True)
    if min(established, established_traced) != args.sas:
        print(f"only {min(established, established_traced)} of {args.sas} IKE SAs were established", file=sys.stderr)
        return 1

    lines = [
        "## IKE core (bench_ike)",
        "",
        "IKE_SA_INIT + IKE_AUTH with PSK, X25519, AES-GCM-256 (PRF-HMAC-SHA2-256) and one CHILD_SA "
        "(AES-GCM-256), initiator and responder endpoints in one process on one core, no sockets.",
        "",
        "| measure | result | target |",
        "| --- | --- | --- |",
        f"| IKE SA setups per CPU second (both roles, {args.setups} setups) | {rate:,.0f} | ≥ 1,000 |",
        f"| CPU time per setup (both roles) | {1e6 / rate:,.0f} µs | |",
        f"| Python heap per IKE SA pair at {args.sas:,} SAs (tracemalloc) | {traced / 1024:.1f} KiB | |",
        f"| RSS per IKE SA pair at {args.sas:,} SAs | {rss / 1024:.1f} KiB | |",
        f"| RSS per IKE SA (one side, half of a pair) | {rss / 2048:.1f} KiB | ≤ 20 KiB |",
        "",
        "A pair is the initiator's and the responder's IKE SA with one CHILD_SA each. The responder "
        "keeps its last IKE_AUTH response for retransmitted requests; the initiator keeps nothing "
        "of the setup.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
