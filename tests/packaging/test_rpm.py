"""The RPM package: file list, dependencies, scriptlets, and installations with rpm --root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.packaging import roots

pytestmark = pytest.mark.packaging

INSTALL_TIMEOUT = 300  # seconds for one rpm transaction


def _query(rpm: Path, *options: str) -> str:
    return roots.check(roots.run(["rpm", "-qp", *options, str(rpm)], timeout=60)).stdout


def test_rpm_files(rpm: Path) -> None:
    files = set(_query(rpm, "-l").split())
    for expected in ("/usr/sbin/rmobiked", "/usr/sbin/rmobikectl",
                     "/usr/lib/rmobike/agent/cli.py", "/usr/lib/rmobike/xfrm/__init__.py",
                     "/etc/rmobike/rmobike.toml", "/usr/lib/systemd/system/rmobiked.service",
                     "/usr/lib/udev/rules.d/90-rmobike.rules", "/usr/lib/sysusers.d/rmobike.conf"):
        assert expected in files
    for page in ("man8/rmobiked.8", "man8/rmobikectl.8", "man5/rmobike.toml.5"):
        assert [name for name in files if f"/usr/share/man/{page}" in name]
    assert not [name for name in files if "/site-packages/" in name]


def test_rpm_config_noreplace(rpm: Path) -> None:
    flags = _query(rpm, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
    config = [line.split()[-1] for line in flags.splitlines() if line.split()[0].startswith("c")]
    assert config == ["/etc/rmobike/rmobike.toml"]
    # "n" is %config(noreplace): an edited file survives an upgrade.
    assert "cn /etc/rmobike/rmobike.toml" in flags


def test_rpm_requires(rpm: Path) -> None:
    requires = _query(rpm, "-R").splitlines()
    for expected in ("python3 >= 3.11", "python3-cryptography >= 38",
                     "python3-pyroute2 >= 0.7.2", "python3-systemd", "iproute"):
        assert expected in requires


def test_rpm_scriptlets(rpm: Path) -> None:
    scripts = _query(rpm, "--scripts")
    post = scripts.split("postinstall scriptlet")[1].split("preuninstall scriptlet")[0]
    preun = scripts.split("preuninstall scriptlet")[1].split("postuninstall scriptlet")[0]
    postun = scripts.split("postuninstall scriptlet")[1]

    assert "useradd -r -g rmobike" in post
    assert "preset rmobiked.service" in post
    assert "disable --now rmobiked.service" in preun
    assert "try-restart rmobiked.service" in postun
    assert "udevadm control --reload" in postun


def test_rpm_installs_into_empty_root(rpm: Path, tmp_path: Path) -> None:
    # An empty root has no /bin/sh, so the post-install scriptlet fails with
    # a warning; the transaction must still succeed.
    result = roots.run(["rpm", "--root", str(tmp_path), "--nodeps", "-i", str(rpm)],
                       timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, result.stderr
    for path in ("usr/sbin/rmobiked", "usr/lib/rmobike/agent/cli.py",
                 "etc/rmobike/rmobike.toml", "usr/lib/systemd/system/rmobiked.service"):
        assert (tmp_path / path).exists()
    installed = roots.run(["rpm", "--root", str(tmp_path), "-q", "rmobike"], timeout=60)
    assert installed.returncode == 0, installed.stderr


def test_rpm_scriptlets_run_in_debian_root(
    rpm: Path, fresh_root: Callable[[str], roots.Root], upstream_version: str
) -> None:
    # A Debian root has the shell, getent and useradd, so the scriptlets run
    # for real; systemd does not run there, so they skip systemctl.
    root = fresh_root("bookworm")
    install = roots.run(["rpm", "--root", str(root.path), "--nodeps", "-i", str(rpm)],
                        timeout=INSTALL_TIMEOUT)
    assert install.returncode == 0, install.stderr
    assert "scriptlet failed" not in install.stderr

    assert root.check(["getent", "passwd", "rmobike"]).startswith("rmobike:")
    assert upstream_version in root.check(["rmobikectl", "--version"])

    erase = roots.run(["rpm", "--root", str(root.path), "--nodeps", "-e", "rmobike"],
                      timeout=INSTALL_TIMEOUT)
    assert erase.returncode == 0, erase.stderr
    assert "scriptlet failed" not in erase.stderr
    assert not (root.path / "usr/sbin/rmobiked").exists()
