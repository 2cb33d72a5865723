"""Shared pytest set-up: when lab tests run, and the lab fixtures.

Tests marked ``lab`` need a kernel that can install ESP states. They run when
RMOBIKE_LAB=1 (set by ``python -m tests.lab.run``, in the VM or on an
ESP-capable host) or when this host's kernel has ESP; elsewhere they are
skipped with a pointer to the lab. Inside the lab a skipped lab test is an
error, so a run cannot pass while tests quietly did not run. So is a module
skipped at import (pytest.importorskip), because its lab tests cannot be
distinguished from its other tests before it is imported.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab import vm
from tests.lab.netns import PREFIX, Namespace
from tests.lab.topology import STANDARD, LabSpec, Topology, build

LAB_SKIP_REASON = "needs the lab: run `make test` or `python -m tests.lab.run`"


def in_lab() -> bool:
    """Return True if this pytest runs inside the lab (RMOBIKE_LAB=1)."""
    return os.environ.get(vm.ENV_LAB) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the lab tests unless this is the lab or the host kernel has ESP."""
    lab_items = [item for item in items if item.get_closest_marker("lab") is not None]
    if not lab_items or in_lab() or vm.host_has_esp():
        return
    skip = pytest.mark.skip(reason=LAB_SKIP_REASON)
    for item in lab_items:
        item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Inside the lab, turn a skipped lab test into a failure that names the skip reason."""
    outcome = yield
    report = outcome.get_result()
    if not (in_lab() and report.skipped and item.get_closest_marker("lab") is not None):
        return
    if hasattr(report, "wasxfail"):  # an expected failure, not a skip
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"lab test was skipped inside the lab, where every lab test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Inside the lab, turn a module skipped at import (e.g. importorskip) into an error."""
    outcome = yield
    report = outcome.get_result()
    if in_lab() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped at collection inside the lab, "
                           f"where every lab test must run: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Delete lab namespaces that this process created and left behind, with a warning."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return
    leftovers = sorted(path.name for path in netns_dir.glob(f"{PREFIX}*-{os.getpid()}-*"))
    for name in leftovers:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"deleted {len(leftovers)} namespaces that tests left behind: {leftovers}"
        if reporter is not None:
            reporter.write_line(f"WARNING: {message}", yellow=True)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A fresh, empty network namespace (loopback up), deleted after the test."""
    with Namespace("test") as namespace:
        yield namespace


@pytest.fixture
def build_lab() -> Iterator[Callable[[LabSpec], Topology]]:
    """A function that builds a lab from a LabSpec; every lab it built is removed after the test."""
    topologies: list[Topology] = []

    def _build(spec: LabSpec = STANDARD) -> Topology:
        topology = build(spec)
        topologies.append(topology)
        return topology

    yield _build
    errors = []
    for topology in reversed(topologies):
        try:
            topology.close()
        except Exception as error:  # noqa: BLE001 - close the others first
            errors.append(error)
    if errors:
        raise errors[0]


@pytest.fixture
def lab_topology(build_lab: Callable[[LabSpec], Topology]) -> Topology:
    """The standard lab: gw1 and gw2 with two uplinks each, a router, a LAN host behind each."""
    return build_lab(STANDARD)
