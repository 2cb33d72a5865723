"""Tests for the lab runner's pure parts: netns helpers, kernel choice, guest script."""

import shlex
from pathlib import Path

import pytest

from tests.lab import netns, run, vm


@pytest.mark.parametrize(("number", "mac"), [
    (0, "02:00:00:00:00:00"),
    (0x101, "02:00:00:00:01:01"),
    (2**32 - 1, "02:00:ff:ff:ff:ff"),
])
def test_local_mac(number: int, mac: str) -> None:
    assert netns.local_mac(number) == mac


@pytest.mark.parametrize("number", [-1, 2**32])
def test_local_mac_out_of_range(number: int) -> None:
    with pytest.raises(ValueError):
        netns.local_mac(number)


def test_command_string_split_without_shell() -> None:
    assert netns._argv("ip addr add '192.0.2.1/24' dev up0") == [
        "ip", "addr", "add", "192.0.2.1/24", "dev", "up0"]
    assert netns._argv(["sh", "-c", "a | b"]) == ["sh", "-c", "a | b"]


def test_namespace_argv_uses_ip_netns_exec() -> None:
    namespace = object.__new__(netns.Namespace)  # no namespace is created
    namespace.name = "rmb-test-1-0"

    assert namespace.argv("ip link") == ["ip", "netns", "exec", "rmb-test-1-0", "ip", "link"]


def test_veth_rejects_long_name() -> None:
    with pytest.raises(ValueError):
        netns.veth(None, "a-very-long-name0", None, "b", "02:00:00:00:00:01",  # type: ignore[arg-type]
                   "02:00:00:00:00:02")


def test_kernel_versions_sort_numerically() -> None:
    versions = ["6.1.0-9-amd64", "6.1.0-57-amd64", "5.10.0-30-amd64", "6.10.0-1-amd64"]

    assert max(versions, key=vm._version_key) == "6.10.0-1-amd64"
    assert sorted(versions, key=vm._version_key)[1] == "6.1.0-9-amd64"


def test_kernel_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vm.ENV_KERNEL, "/srv/vmlinuz-test")

    assert vm.find_kernel() == Path("/srv/vmlinuz-test")


def test_vng_command_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vm.ENV_KERNEL, "/srv/vmlinuz-test")
    monkeypatch.setattr(vm.shutil, "which", lambda name, path=None: "/venv/bin/vng")

    argv = vm.vng_command("echo hi")

    assert argv[:4] == ["/venv/bin/vng", "--disable-kvm", "--run", "/srv/vmlinuz-test"]
    assert argv[-2:] == ["--exec", "echo hi"]
    assert ["--rwdir", str(vm.LAB_OUT)] == argv[argv.index("--rwdir"):argv.index("--rwdir") + 2]


def test_pytest_command_selects_lab() -> None:
    command = run.pytest_command("/venv/bin/python", ["-q", "tests/kernel"])

    assert command == ["/venv/bin/python", "-m", "pytest", "-m", "lab", "-q", "tests/kernel"]


def test_guest_script_quotes_arguments() -> None:
    script = run.guest_script(["-k", "carrier and not nat", "tests/kernel"])

    pytest_line = next(line for line in script.splitlines() if "-m pytest" in line)
    assert shlex.split(pytest_line)[-3:] == ["-k", "carrier and not nat", "tests/kernel"]
    assert "RMOBIKE_LAB=1" in script
    assert "TMPDIR=/var/tmp" in script
    assert "modprobe" in script
    assert script.rstrip().endswith("exit $status")
