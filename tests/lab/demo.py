"""`make demo`: two rmobiked gateways in the lab bring a tunnel up and carry LAN traffic.

    python -m tests.lab.demo [--duration SECONDS]

On a host whose kernel has ESP the demo runs right here; otherwise it boots the lab VM once and
runs itself inside with --in-lab. In the lab it builds the standard topology (two gateways with
two uplinks each, a LAN host behind each), starts rmobiked on both gateways, waits for the
CHILD_SA, streams probe traffic LAN to LAN through kernel ESP while a capture watches every
uplink for cleartext, and prints what it saw. The last line is `DEMO RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time

from tests.lab import run as lab_run
from tests.lab import vm

log = logging.getLogger("demo")

DEMO_TIMEOUT = 900.0  # seconds for the whole VM run, boot included


def _spis(sas: dict) -> set[tuple[str, str]]:
    """Return the (in, out) CHILD_SA SPI pairs of a list-sas JSON document."""
    pairs = set()
    for ike_sa in sas.get("ike_sas", []):
        for child in ike_sa.get("children", []):
            pairs.add((child.get("spi_in", ""), child.get("spi_out", "")))
    return pairs


def _print_sas(name: str, sas: dict) -> None:
    for ike_sa in sas.get("ike_sas", []):
        print(f"  {name}: IKE SA {ike_sa.get('name')} {ike_sa.get('state')} "
              f"{ike_sa.get('local_address')}:{ike_sa.get('local_port')} -> "
              f"{ike_sa.get('remote_address')}:{ike_sa.get('remote_port')} "
              f"mobike={ike_sa.get('mobike')} switch={ike_sa.get('switch')} nat={ike_sa.get('nat')}")
        for child in ike_sa.get("children", []):
            print(f"  {name}:   CHILD_SA {child.get('name')} {child.get('state')} "
                  f"SPI in {child.get('spi_in')} out {child.get('spi_out')} "
                  f"{child.get('local_ts')} <=> {child.get('remote_ts')}")


def run_demo(duration: float) -> dict:
    """Run the demo in the lab and return the result dictionary."""
    from tests.lab.capture import CleartextCapture
    from tests.lab.gateways import kernel_state, start_pair
    from tests.lab.topology import build
    from tests.lab.traffic import lan_probe

    with build() as topology:
        print("lab: gw1 and gw2 with two uplinks each, a router between them, LAN hosts behind")
        started = time.monotonic()
        gw1, gw2 = start_pair(topology)
        gw1.wait_for_children()
        gw2.wait_for_children()
        up_ms = (time.monotonic() - started) * 1000
        print(f"tunnel up {up_ms:.0f} ms after starting both daemons (QEMU TCG is slow)")
        sas1, sas2 = gw1.list_sas(), gw2.list_sas()
        _print_sas("gw1", sas1)
        _print_sas("gw2", sas2)
        spis1 = _spis(sas1)
        spis_match = bool(spis1) and {(out, inn) for inn, out in _spis(sas2)} == spis1

        capture = CleartextCapture.on_uplinks(topology)
        capture.start()
        probe = lan_probe(topology, "gw1", "gw2", duration=duration)
        probe.start()
        report = probe.wait()
        cleartext = capture.stop()
        print(f"probe LAN1 -> LAN2 for {duration:.0f} s: {report.summary()}")
        print(f"cleartext packets between the LANs on any uplink: {len(cleartext)}")

        states, _ = kernel_state(gw1.namespace)
        esp_states = states.count("proto esp")
        print(f"gw1 kernel ESP states: {esp_states}")

        gw1.stop()
        gw2.stop()
        leftover = [name for name, daemon in (("gw1", gw1), ("gw2", gw2))
                    if any(kernel_state(daemon.namespace))]
        print(f"kernel state left after SIGTERM: {', '.join(leftover) or 'none'}")

    return {
        "tunnel_up_ms": round(up_ms),
        "spis_match": spis_match,
        "probe_sent": report.sent,
        "probe_received": report.received,
        "probe_max_gap_ms": round(report.max_gap_ms, 1),
        "cleartext_packets": len(cleartext),
        "kernel_state_left": leftover,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the demo (in the VM unless the host has ESP or --in-lab is given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of probe traffic (default 10)")
    parser.add_argument("--in-lab", action="store_true",
                        help="run the demo here: this kernel has ESP (used inside the VM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    if args.in_lab or vm.host_has_esp():
        result = run_demo(args.duration)
        print("DEMO RESULT " + json.dumps(result, sort_keys=True))
        ok = result["spis_match"] and result["cleartext_packets"] == 0 \
            and result["probe_received"] > 0 and not result["kernel_state_left"]
        return 0 if ok else 1

    exports = " ".join(f"{key}={shlex.quote(value)}"
                       for key, value in lab_run.lab_environment().items())
    script = "\n".join([
        f"for module in {' '.join(lab_run.MODULES)}; do modprobe $module; done",
        f"cd {shlex.quote(str(vm.CHECKOUT))} || exit 1",
        f"export {exports} TMPDIR=/var/tmp",
        f"{shlex.quote(str(vm.VENV_BIN / 'python'))} -m tests.lab.demo --in-lab "
        f"--duration {args.duration}",
    ])
    print("booting the lab VM (Debian's kernel under QEMU TCG, about 30 s)...", flush=True)
    try:
        returncode, _ = vm.run_in_vm(script, timeout=DEMO_TIMEOUT)
    except vm.LabError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    return returncode


if __name__ == "__main__":
    sys.exit(main())
