"""`make demo`: two rmobiked gateways keep one tunnel through five uplink failures.

    python -m tests.lab.demo [--window SECONDS]

On a host whose kernel has ESP the demo runs right here; otherwise it boots the lab VM once and
runs itself inside with --in-lab. For each demo scenario of tests/lab/scenarios.py it builds a
fresh lab (two gateways with two uplinks each, a LAN host behind each) and starts rmobiked on
both gateways. Probe traffic then flows LAN to LAN in both directions while a capture watches
every uplink for cleartext, and the failure happens. The demo prints the timeline, the outage,
whether the CHILD_SA SPIs stayed the same and the number of cleartext packets. It writes a PNG
of the probe arrivals to lab-out/demo-timeline.png. The last line is `DEMO RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from tests.lab import run as lab_run
from tests.lab import vm

log = logging.getLogger("demo")

DEMO_TIMEOUT = 1800.0  # seconds for the whole VM run, boot included
DEFAULT_WINDOW = 6.0  # seconds of traffic after each failure
PNG_NAME = "demo-timeline.png"

# DEMO RESULT key for each demo scenario's outage.
RESULT_KEYS = {
    "responder_link_down": "responder_outage_ms",
    "initiator_link_down": "initiator_outage_ms",
    "silent_blackhole": "silent_outage_ms",
    "admin_switch": "admin_outage_ms",
    "nat_responder_link_down": "nat_responder_outage_ms",
}


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


def _print_outcome(outcome) -> None:
    print(f"  path before: {outcome.path_before[0]} -> {outcome.path_before[1]}")
    for at_ms, text in outcome.timeline:
        print(f"  {at_ms:+9.1f} ms  {text}")
    outage = ("traffic did not come back" if outcome.outage_ms is None
              else f"{outcome.outage_ms:.0f} ms")
    spis = ", ".join(f"{gateway} {' '.join(sorted(spis))}"
                     for gateway, spis in sorted(outcome.spis_after.items()))
    print(f"  path after:  {outcome.path_after[0]} -> {outcome.path_after[1]}")
    print(f"  outage: {outage}")
    print(f"  SPIs: {'unchanged' if outcome.spis_unchanged else 'CHANGED'} ({spis})")
    print(f"  cleartext packets: {outcome.cleartext_packets}")


def run_demo(window: float, png_path: Path) -> tuple[dict, bool]:
    """Run the demo scenarios; return the DEMO RESULT dictionary and whether all passed."""
    from tests.lab.plot import write_timeline_png
    from tests.lab.scenarios import DEMO_SCENARIOS, Outcome, RmobikePair, run_scenario

    class FirstPairShown(RmobikePair):
        """RmobikePair that prints list-sas of the first tunnel it brings up."""

        shown = False

        def start(self, topology, initiator, responder) -> None:
            super().start(topology, initiator, responder)
            if not FirstPairShown.shown:
                FirstPairShown.shown = True
                print(f"tunnel up between {initiator} (initiator) and {responder} (responder):")
                for name, daemon in self.daemons.items():
                    _print_sas(name, daemon.list_sas())

    outcomes: list[Outcome] = []
    for number, scenario in enumerate(DEMO_SCENARIOS, start=1):
        print(f"\n== {number}/{len(DEMO_SCENARIOS)} {scenario.name}: {scenario.description}",
              flush=True)
        try:
            outcome = run_scenario(scenario, FirstPairShown(), window=window)
        except Exception as error:  # noqa: BLE001 - report it and go on with the next scenario
            log.exception("scenario %s failed", scenario.name)
            print(f"  scenario failed: {error}")
            outcome = Outcome(scenario=scenario.name, implementation="rmobike", outage_ms=None,
                              recovered=False, spis_unchanged=False, cleartext_packets=0,
                              event_at=0.0, action=f"failed: {error}")
        else:
            _print_outcome(outcome)
        outcomes.append(outcome)

    write_timeline_png(png_path, [(outcome.scenario, outcome.arrivals, outcome.outage_ms)
                                  for outcome in outcomes])
    print(f"\nprobe timeline written to {png_path}")

    result: dict[str, object] = {
        RESULT_KEYS[outcome.scenario]: (None if outcome.outage_ms is None
                                        else round(outcome.outage_ms, 1))
        for outcome in outcomes
    }
    result["spis_unchanged"] = all(outcome.spis_unchanged for outcome in outcomes)
    result["cleartext_packets"] = sum(outcome.cleartext_packets for outcome in outcomes)
    passed = (all(outcome.recovered for outcome in outcomes) and result["spis_unchanged"]
              and result["cleartext_packets"] == 0)
    return result, bool(passed)


def main(argv: list[str] | None = None) -> int:
    """Run the demo (in the VM unless the host has ESP or --in-lab is given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW,
                        help=f"seconds of probe traffic after each failure (default {DEFAULT_WINDOW:g})")
    parser.add_argument("--in-lab", action="store_true",
                        help="run the demo here: this kernel has ESP (used inside the VM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    if args.in_lab or vm.host_has_esp():
        out = Path(os.environ.get(vm.ENV_LAB_OUT) or vm.LAB_OUT)
        out.mkdir(parents=True, exist_ok=True)
        result, passed = run_demo(args.window, out / PNG_NAME)
        print("DEMO RESULT " + json.dumps(result, sort_keys=True), flush=True)
        return 0 if passed else 1

    exports = " ".join(f"{key}={shlex.quote(value)}"
                       for key, value in lab_run.lab_environment().items())
    script = "\n".join([
        f"for module in {' '.join(lab_run.MODULES)}; do modprobe $module; done",
        f"cd {shlex.quote(str(vm.CHECKOUT))} || exit 1",
        f"export {exports} TMPDIR=/var/tmp",
        f"{shlex.quote(str(vm.VENV_BIN / 'python'))} -m tests.lab.demo --in-lab "
        f"--window {args.window}",
    ])
    print("starting the lab VM (Debian's kernel under QEMU TCG; the boot takes about 30 s "
          "once no other lab VM runs)...", flush=True)
    try:
        returncode, _ = vm.run_in_vm(script, timeout=DEMO_TIMEOUT)
    except vm.LabError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    return returncode


if __name__ == "__main__":
    sys.exit(main())
