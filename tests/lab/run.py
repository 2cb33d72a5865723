"""Run the lab tests (pytest -m lab) in one lab boot.

    python -m tests.lab.run [pytest arguments...]
    python -m tests.lab.run -q tests/kernel

If the host kernel can install ESP states, pytest runs right here. Otherwise
one lab VM boots and runs pytest inside it, in the same checkout and venv.
The exit status is pytest's, so 5 (no tests collected) is an error too, and
a lab test that is skipped inside the lab fails the run (tests/conftest.py).

Environment:
  RMOBIKE_LAB_TIMEOUT  seconds for the whole run, boot included (default 3600)
  RMOBIKE_LAB_KERNEL   vmlinuz to boot instead of the newest one under /boot
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys

from tests.lab import vm

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3600.0
ENV_TIMEOUT = "RMOBIKE_LAB_TIMEOUT"

# Loaded before the tests, so that a missing module shows up once at the top
# of the output and not as a confusing failure in some test.
MODULES = (
    "esp4", "esp6", "xfrm_user", "xfrm_algo", "xfrm_interface",
    "xfrm4_tunnel", "xfrm6_tunnel", "tunnel4", "tunnel6",
    "veth", "bridge", "af_packet",
    "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nf_conntrack",
)

PYTEST_EXIT_MESSAGES = {
    1: "some tests failed",
    2: "pytest was interrupted",
    3: "pytest hit an internal error",
    4: "pytest was used wrongly",
    5: "no tests were collected: check the paths and that the tests are marked lab",
}

# Printed by the guest after pytest, so a VM that died half-way is not taken
# for a pytest result.
_DONE_MARKER = "rmobike-lab: pytest exit status"


def pytest_command(python: str, pytest_args: list[str]) -> list[str]:
    """Return the pytest command line that selects the lab tests."""
    # -m lab comes first, so an explicit -m in pytest_args (pytest keeps the last) wins.
    return [python, "-m", "pytest", "-m", "lab", *pytest_args]


def lab_environment() -> dict[str, str]:
    """Return the variables that tell tests they run in the lab and where results go."""
    return {
        vm.ENV_LAB: "1",
        vm.ENV_LAB_OUT: str(vm.LAB_OUT),
        "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is read-only in the guest
    }


def guest_script(pytest_args: list[str]) -> str:
    """Return the shell script that the VM runs: load modules, then pytest in the checkout."""
    python = str(vm.VENV_BIN / "python")
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in lab_environment().items())
    lines = [
        f"for module in {' '.join(MODULES)}; do",
        '  modprobe "$module" || echo "rmobike-lab: modprobe $module failed" >&2',
        "done",
        f"cd {shlex.quote(str(vm.CHECKOUT))} || exit 1",
        # /tmp and /var/tmp are the guest's own, writable; /var/tmp is a tmpfs.
        f"export {exports} TMPDIR=/var/tmp",
        shlex.join(pytest_command(python, pytest_args)),
        "status=$?",
        f'echo "{_DONE_MARKER} $status"',
        "exit $status",
    ]
    return "\n".join(lines)


def _run_on_host(pytest_args: list[str], timeout: float) -> int:
    log.info("the host kernel has ESP: running the lab tests on the host")
    env = dict(os.environ, **lab_environment())
    vm.LAB_OUT.mkdir(exist_ok=True)
    try:
        return subprocess.run(pytest_command(sys.executable, pytest_args), env=env,
                              cwd=vm.CHECKOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        log.error("lab tests timed out after %.0f s", timeout)
        return 1


def _run_in_vm(pytest_args: list[str], timeout: float) -> int:
    log.info("the host kernel has no ESP: running the lab tests in the lab VM")
    try:
        returncode, output = vm.run_in_vm(guest_script(pytest_args), timeout=timeout)
    except vm.LabError as error:
        log.error("%s", error)
        return 1
    if _DONE_MARKER not in output:
        log.error("the lab VM ended (status %d) before pytest finished", returncode)
        return returncode or 1
    return returncode


def main(argv: list[str] | None = None) -> int:
    """Run the lab tests with ``argv`` as pytest arguments and return pytest's exit status."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    pytest_args = sys.argv[1:] if argv is None else argv
    timeout = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))

    if vm.host_has_esp():
        returncode = _run_on_host(pytest_args, timeout)
    else:
        returncode = _run_in_vm(pytest_args, timeout)

    if returncode != 0:
        reason = PYTEST_EXIT_MESSAGES.get(returncode, "unexpected exit status")
        log.error("lab run failed with exit status %d: %s", returncode, reason)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
