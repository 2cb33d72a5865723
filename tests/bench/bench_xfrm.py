"""Benchmark: install and move N SA pairs with their policies, by xfrm and by `ip -batch`.

    python -m tests.bench.bench_xfrm --out FILE [--pairs 1000 10000]

Needs root and a kernel with ESP (the lab VM, or a host with ESP). One SA pair
is what one Child SA installs: two ESP SAs in tunnel mode (AES-GCM-128,
replay window 32) and three policies (out, in, fwd) for its own pair of
subnets. For each N, in a fresh network namespace each:

- install: xfrm sends every SA and policy in one batch (``XfrmApi.bulk``);
  ip runs a batch file with one `xfrm state add` / `xfrm policy add` per item;
- move: every pair moves its local outer address to another one. xfrm moves
  by MIGRATE (what MoveMethod.AUTO picks here) and, separately, by REPLACE;
  ip runs what REPLACE does without reading the counters: per pair, delete and
  re-add the outbound SA (its id stays the same), add the new inbound SA,
  update the three policies, delete the old inbound SA.

Only the call that does the work is timed: building the Python objects and
writing the batch file are not. `ip -batch` is timed as a whole process,
start-up included. Results are printed and written to FILE as a Markdown
section (tests/bench/run.py joins the sections into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from tests.lab.netns import Namespace
from xfrm import (
    Aead,
    Direction,
    MoveMethod,
    Policy,
    SaMove,
    SecurityAssociation,
    Selector,
    Template,
    XfrmClient,
)

log = logging.getLogger(__name__)

DEFAULT_PAIRS = (1000, 10000)
LOCAL = IPv4Address("192.0.2.1")
REMOTE = IPv4Address("198.51.100.1")
NEW_LOCAL = IPv4Address("203.0.113.1")
REMOTE_LAN = IPv4Network("172.16.0.0/16")  # selectors only: no packet uses these addresses
CLIENT_TIMEOUT = 600.0  # seconds without a response; the kernel is slow under QEMU TCG
IP_TIMEOUT = 3600.0


@dataclass
class Pair:
    """One Child SA's worth of kernel state."""

    number: int
    out_sa: SecurityAssociation
    in_sa: SecurityAssociation
    policies: dict[Direction, Policy]

    @property
    def local_lan(self) -> IPv4Network:
        return self.policies[Direction.OUT].selector.src


def make_pair(number: int, local: IPv4Address = LOCAL) -> Pair:
    """Return pair ``number``: SPIs, reqid, keys and local subnet derived from the number."""
    key_out = number.to_bytes(4, "big") + bytes(15) + b"\x01"
    key_in = number.to_bytes(4, "big") + bytes(15) + b"\x02"
    reqid = number + 1
    local_lan = IPv4Network((int(IPv4Address("10.0.0.0")) + (number << 8), 24))
    out_sa = SecurityAssociation(local, REMOTE, 0x100000 + number, reqid=reqid,
                                 aead=Aead.aes_gcm(key_out))
    in_sa = SecurityAssociation(REMOTE, local, 0x200000 + number, reqid=reqid,
                                aead=Aead.aes_gcm(key_in))
    outbound, inbound = Selector(local_lan, REMOTE_LAN), Selector(REMOTE_LAN, local_lan)
    policies = {
        Direction.OUT: Policy(outbound, Direction.OUT,
                              templates=(Template(local, REMOTE, reqid=reqid),)),
        Direction.IN: Policy(inbound, Direction.IN,
                             templates=(Template(REMOTE, local, reqid=reqid),)),
        Direction.FWD: Policy(inbound, Direction.FWD,
                              templates=(Template(REMOTE, local, reqid=reqid),)),
    }
    return Pair(number, out_sa, in_sa, policies)


# --- ip -batch -----------------------------------------------------------------

def ip_state_add(sa: SecurityAssociation) -> str:
    return (f"xfrm state add src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#010x} "
            f"reqid {sa.reqid} mode tunnel replay-window {sa.replay_window} "
            f"aead {sa.aead.name} 0x{sa.aead.key.hex()} {sa.aead.icv_bits}")


def ip_state_delete(sa: SecurityAssociation) -> str:
    return f"xfrm state delete src {sa.src} dst {sa.dst} proto esp spi {sa.spi:#010x}"


def ip_policy(verb: str, policy: Policy) -> str:
    template = policy.templates[0]
    return (f"xfrm policy {verb} src {policy.selector.src} dst {policy.selector.dst} "
            f"dir {policy.dir.name.lower()} tmpl src {template.src} dst {template.dst} "
            f"proto esp reqid {template.reqid} mode tunnel")


def ip_install_lines(pairs: list[Pair]) -> list[str]:
    lines = []
    for pair in pairs:
        lines += [ip_state_add(pair.out_sa), ip_state_add(pair.in_sa)]
        lines += [ip_policy("add", policy) for policy in pair.policies.values()]
    return lines


def ip_move_lines(pairs: list[Pair], moved: list[Pair]) -> list[str]:
    lines = []
    for old, new in zip(pairs, moved):
        lines += [ip_state_delete(old.out_sa), ip_state_add(new.out_sa), ip_state_add(new.in_sa)]
        lines += [ip_policy("update", policy) for policy in new.policies.values()]
        lines.append(ip_state_delete(old.in_sa))
    return lines


def time_ip_batch(namespace: Namespace, lines: list[str]) -> float:
    """Write ``lines`` to a batch file and return the seconds `ip -batch` takes to run it."""
    with tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False) as batch:
        batch.write("\n".join(lines) + "\n")
    try:
        start = time.perf_counter()
        result = subprocess.run(["ip", "-n", namespace.name, "-batch", batch.name],
                                capture_output=True, text=True, timeout=IP_TIMEOUT)
        elapsed = time.perf_counter() - start
    finally:
        os.unlink(batch.name)
    if result.returncode != 0:
        raise RuntimeError(f"ip -batch failed with exit status {result.returncode}: "
                           f"{result.stderr.strip()[:500]}")
    return elapsed


# --- xfrm ------------------------------------------------------------------------

def time_xfrm_install(client: XfrmClient, pairs: list[Pair]) -> float:
    batch = client.bulk()
    for pair in pairs:
        batch.add_sa(pair.out_sa)
        batch.add_sa(pair.in_sa)
        for policy in pair.policies.values():
            batch.add_policy(policy)
    start = time.perf_counter()
    batch.commit()
    return time.perf_counter() - start


def moves_for(pairs: list[Pair], new_local: IPv4Address) -> list[SaMove]:
    moves = []
    for pair in pairs:
        policies = pair.policies
        moves.append(SaMove(pair.out_sa, new_local, pair.out_sa.dst,
                            policies=(policies[Direction.OUT],)))
        moves.append(SaMove(pair.in_sa, pair.in_sa.src, new_local,
                            policies=(policies[Direction.IN], policies[Direction.FWD])))
    return moves


def time_xfrm_move(client: XfrmClient, pairs: list[Pair], new_local: IPv4Address,
                   method: MoveMethod) -> float:
    moves = moves_for(pairs, new_local)
    start = time.perf_counter()
    result = client.move(moves, method)
    elapsed = time.perf_counter() - start
    used = set(result.methods)
    if used != {method}:
        raise RuntimeError(f"move used {sorted(m.value for m in used)}, expected {method.value}")
    return elapsed


def check_installed(client: XfrmClient, pairs: int, local: IPv4Address) -> None:
    """Raise RuntimeError unless the kernel contains ``pairs`` pairs at ``local``."""
    sas = client.dump_sas()
    policies = client.dump_policies()
    at_local = sum(1 for sa in sas if local in (sa.src, sa.dst))
    if len(sas) != 2 * pairs or at_local != 2 * pairs or len(policies) != 3 * pairs:
        raise RuntimeError(f"expected {2 * pairs} SAs and {3 * pairs} policies at {local}, "
                           f"found {len(sas)} SAs ({at_local} at {local}) and "
                           f"{len(policies)} policies")


# --- the run ------------------------------------------------------------------------

@dataclass
class Row:
    pairs: int
    operation: str
    xfrm_seconds: float
    ip_seconds: float

    def markdown(self) -> str:
        ratio = self.xfrm_seconds / self.ip_seconds
        return (f"| {self.pairs:,} | {self.operation} | {self.xfrm_seconds:.2f} | "
                f"{self.ip_seconds:.2f} | {ratio:.2f} |")


def measure(count: int) -> list[Row]:
    pairs = [make_pair(n) for n in range(count)]
    moved = [make_pair(n, NEW_LOCAL) for n in range(count)]

    with Namespace("bench-xfrm") as namespace:
        with namespace.entered():
            client = XfrmClient(timeout=CLIENT_TIMEOUT)
        with client:
            client.features()  # the MIGRATE probe, outside the timed part
            install = time_xfrm_install(client, pairs)
            check_installed(client, count, LOCAL)
            log.info("%d pairs: xfrm install %.2f s", count, install)
            migrate = time_xfrm_move(client, pairs, NEW_LOCAL, MoveMethod.MIGRATE)
            check_installed(client, count, NEW_LOCAL)
            log.info("%d pairs: xfrm move by MIGRATE %.2f s", count, migrate)
            replace = time_xfrm_move(client, moved, LOCAL, MoveMethod.REPLACE)
            check_installed(client, count, LOCAL)
            log.info("%d pairs: xfrm move by REPLACE %.2f s", count, replace)
            client.flush_policies()
            client.flush_sas()

    with Namespace("bench-ip") as namespace:
        ip_install = time_ip_batch(namespace, ip_install_lines(pairs))
        log.info("%d pairs: ip -batch install %.2f s", count, ip_install)
        ip_move = time_ip_batch(namespace, ip_move_lines(pairs, moved))
        log.info("%d pairs: ip -batch move %.2f s", count, ip_move)
        with namespace.entered():
            client = XfrmClient(timeout=CLIENT_TIMEOUT)
        with client:
            check_installed(client, count, NEW_LOCAL)

    return [
        Row(count, "install", install, ip_install),
        Row(count, "move (xfrm: MIGRATE)", migrate, ip_move),
        Row(count, "move (xfrm: REPLACE)", replace, ip_move),
    ]


def section(rows: list[Row]) -> str:
    where = "the lab VM (QEMU TCG)" if os.environ.get("RMOBIKE_LAB") == "1" else "the host"
    lines = [
        "## XFRM: installing and moving SA pairs, xfrm against `ip -batch`",
        "",
        f"Measured by `python -m tests.bench.bench_xfrm` in {where}, kernel {platform.release()}, "
        f"{os.cpu_count()} CPUs. One pair is two ESP SAs (tunnel mode, AES-GCM-128) and three "
        "policies (out, in, fwd). A move changes the local outer address of every pair; "
        "`ip -batch` does it by deleting and re-adding SAs and updating policies, xfrm by "
        "XFRM_MSG_MIGRATE or by REPLACE (which also reads and copies each SA's counters and "
        "blocks the outbound policy during the move). Times are wall-clock seconds of one run.",
        "",
        "| SA pairs | operation | xfrm (s) | ip -batch (s) | xfrm / ip |",
        "| ---: | --- | ---: | ---: | ---: |",
        *(row.markdown() for row in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="file to write the Markdown section to")
    parser.add_argument("--pairs", type=int, nargs="+", default=list(DEFAULT_PAIRS),
                        help="numbers of SA pairs to measure (default: 1000 10000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("xfrm.move").setLevel(logging.DEBUG)  # the time of each move step

    rows = []
    for count in args.pairs:
        rows += measure(count)
    text = section(rows)
    print(text)
    with open(args.out, "w") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
