"""The installed daemon, started in the lab VM like its systemd unit, serves rmobikectl status.

The host prepares a Debian 12 root with the .deb installed under lab-out/,
which the VM shares read-write. tests/packaging/guest_start.py then runs
inside the VM and starts the daemon in that root; its docstring lists the
settings of the unit that it applies. The VM keeps the daemon off the host's
network, and a network namespace keeps it off the VM's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import vm
from tests.packaging import guest_start, roots

pytestmark = pytest.mark.packaging

VM_TIMEOUT = 900.0  # seconds for the whole VM run, boot included
LOCK_TIMEOUT = 1800.0  # seconds to wait for another lab VM to finish first
SUITE = "bookworm"


@pytest.fixture
def lab_root(deb: Path, root_packages: list[str]) -> Iterator[roots.Root]:
    """A root with the .deb installed, under lab-out so that the VM sees it."""
    vm.LAB_OUT.mkdir(exist_ok=True)
    path = vm.LAB_OUT / f"packaging-root-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    root = roots.Root.unpack(roots.base_tarball(SUITE, root_packages), path, SUITE)
    try:
        root.check(["dpkg", "-i", root.copy_in(deb, f"/tmp/{deb.name}")])
        roots.write_test_psk(root)
        yield root
    finally:
        root.remove()


def _guest_result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith(guest_start.RESULT_MARKER)]
    assert lines, f"no result line from the guest; last output:\n{output[-4000:]}"
    return json.loads(lines[-1].removeprefix(guest_start.RESULT_MARKER))


def test_daemon_starts_and_answers_status(lab_root: roots.Root) -> None:
    script = Path(guest_start.__file__).resolve()
    returncode, output = vm.run_in_vm(f"/usr/bin/python3 {script} {lab_root.path}",
                                      timeout=VM_TIMEOUT, echo=None,
                                      lock_timeout=LOCK_TIMEOUT)
    result = _guest_result(output)
    log = "\n".join(result.get("log_tail", []))

    assert returncode == 0, output[-4000:]
    assert "error" not in result, result.get("error")
    assert result["ready"], f"no READY=1; notify: {result['notify']}\n{log}"
    assert result["status_exit"] == 0, result["status_output"]
    assert f"pid: {result['pid']}" in result["status_output"]
    assert "version: " in result["status_output"]
    assert result["watchdog"], f"no WATCHDOG=1; notify: {result['notify']}"
    assert result["running_before_stop"], log
    assert result["exit"] == 0, log
    assert "STOPPING=1" in result["notify"]
