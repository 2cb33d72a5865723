"""The Debian package: its contents, and an installation in clean Debian 12 and 13 roots."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.packaging import roots

pytestmark = pytest.mark.packaging

UNIT = "rmobiked.service"
EXAMPLE_CONFIG = "/etc/rmobike/rmobike.toml"

# Highest `systemd-analyze security` exposure accepted for the unit (0 is
# best, 10 worst); docs/packaging.md records the current value.
MAX_EXPOSURE = 2.0


def _deb_paths(deb: Path) -> set[str]:
    output = roots.check(roots.run(["dpkg-deb", "-c", str(deb)], timeout=60)).stdout
    return {line.split()[-1].removeprefix(".") for line in output.splitlines()}


# -- the .deb file ------------------------------------------------------------------------


def test_deb_files(deb: Path) -> None:
    paths = _deb_paths(deb)
    for expected in ("/usr/sbin/rmobiked", "/usr/sbin/rmobikectl",
                     "/usr/lib/rmobike/agent/cli.py", "/usr/lib/rmobike/xfrm/__init__.py",
                     EXAMPLE_CONFIG, "/usr/lib/sysusers.d/rmobike.conf",
                     "/usr/share/man/man8/rmobiked.8.gz", "/usr/share/man/man8/rmobikectl.8.gz",
                     "/usr/share/man/man5/rmobike.toml.5.gz",
                     "/usr/share/doc/rmobike/copyright"):
        assert expected in paths
    # dh_installsystemd and dh_installudev pick the directory of the release.
    assert {f"/lib/systemd/system/{UNIT}", f"/usr/lib/systemd/system/{UNIT}"} & paths
    assert {"/lib/udev/rules.d/90-rmobike.rules", "/usr/lib/udev/rules.d/90-rmobike.rules"} & paths
    # Nothing on the default Python path: the modules are private.
    assert not [path for path in paths if path.startswith("/usr/lib/python3")]
    assert not [path for path in paths if path.startswith("/usr/bin/")]


def test_deb_conffiles(deb: Path, tmp_path: Path) -> None:
    roots.check(roots.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], timeout=60))
    conffiles = (tmp_path / "control" / "conffiles").read_text().split()
    assert conffiles == [EXAMPLE_CONFIG]


def test_deb_depends(deb: Path) -> None:
    depends = [clause.strip() for clause in roots.deb_field(deb, "Depends").split(",")]
    for expected in ("python3-pyroute2 (>= 0.7.2)", "python3-cryptography (>= 38)",
                     "python3-systemd", "iproute2", "procps"):
        assert expected in depends


def test_example_config_has_no_secret(deb: Path, tmp_path: Path) -> None:
    roots.check(roots.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], timeout=60))
    text = (tmp_path / EXAMPLE_CONFIG.lstrip("/")).read_text()
    assert not re.search(r"^\s*secret\s*=", text, re.MULTILINE)


def test_lintian_clean(deb: Path) -> None:
    # build-deb.sh writes lintian's report next to the package.
    report = (roots.DIST / "lintian.txt").read_text()
    problems = [line for line in report.splitlines() if re.match(r"[EW]: ", line)]
    assert problems == []


# -- installed in a clean root ------------------------------------------------------------


def test_install_creates_user(installed_root: roots.Root) -> None:
    entry = installed_root.check(["getent", "passwd", "rmobike"]).strip().split(":")
    assert entry[5] == "/var/lib/rmobike"
    assert entry[6].endswith("nologin")


def test_install_leaves_unit_disabled(installed_root: roots.Root) -> None:
    wants = installed_root.path / "etc/systemd/system/multi-user.target.wants" / UNIT
    assert not wants.exists()


def test_rmobiked_version(installed_root: roots.Root, upstream_version: str) -> None:
    output = installed_root.check(["rmobiked", "--version"])
    assert upstream_version in output


def test_rmobikectl_version(installed_root: roots.Root, upstream_version: str) -> None:
    output = installed_root.check(["rmobikectl", "--version"])
    assert output.strip() == f"rmobikectl {upstream_version}"


def test_rmobikectl_without_daemon(installed_root: roots.Root) -> None:
    result = installed_root.run(["rmobikectl", "status"])
    assert result.returncode == 3
    assert "/run/rmobike/control.sock" in result.stderr


def test_check_shipped_example(installed_root: roots.Root) -> None:
    # The example names /etc/rmobike/site.psk; installed_root wrote a test key there.
    result = installed_root.run(["rmobiked", "--check", "--config", EXAMPLE_CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_bad_config(installed_root: roots.Root) -> None:
    bad = installed_root.path / "tmp/bad.toml"
    bad.write_text('[connections.site]\ndpd_dealy = "10s"\n')
    result = installed_root.run(["rmobiked", "--check", "--config", "/tmp/bad.toml"])
    assert result.returncode != 0
    assert "dpd_dealy" in result.stdout + result.stderr


def test_modules_import(installed_root: roots.Root) -> None:
    # Every module, with the suite's own pyroute2, cryptography and systemd.
    script = (
        "import importlib, pkgutil, sys\n"
        "sys.path.insert(0, '/usr/lib/rmobike')\n"
        "import agent, xfrm\n"
        "failed = []\n"
        "for package in (agent, xfrm):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        try:\n"
        "            importlib.import_module(module.name)\n"
        "        except Exception as error:\n"
        "            failed.append(f'{module.name}: {error!r}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = installed_root.run(["python3", "-I", "-c", script])
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_with_suite_libraries(installed_root: roots.Root, tmp_path: Path) -> None:
    # The unit tests of the packaged source, run against the installed modules
    # and the suite's python3-pyroute2, python3-cryptography and python3-systemd.
    orig = sorted(roots.DIST.glob("rmobike_*.orig.tar.xz"))
    assert len(orig) == 1
    target = installed_root.path / "tmp/rmobike-tests"
    target.mkdir()
    roots.check(roots.run(["tar", "-xJf", str(orig[0]), "-C", str(target),
                           "--strip-components=1"], timeout=120))
    # The source's agent/ and xfrm/ would shadow the installed modules.
    shutil.rmtree(target / "agent")
    shutil.rmtree(target / "xfrm")
    result = installed_root.run(
        # The command runs in a network namespace of its own (Root.run), whose
        # loopback starts down; some unit tests use it.
        ["sh", "-c", "ip link set lo up && cd /tmp/rmobike-tests && PYTHONPATH=/usr/lib/rmobike "
                     "python3 -m pytest -q -p no:cacheprovider tests/unit"],
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_unit_verify(installed_root: roots.Root) -> None:
    result = installed_root.run(["systemd-analyze", "verify", UNIT])
    assert result.returncode == 0, result.stdout + result.stderr
    assert UNIT not in result.stdout + result.stderr


def test_unit_exposure(installed_root: roots.Root) -> None:
    result = installed_root.run(["systemd-analyze", "security", "--offline=yes", UNIT])
    match = re.search(rf"Overall exposure level for {UNIT}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_udev_rules_parse(installed_root: roots.Root) -> None:
    # With merged /usr, /lib is a link to usr/lib and both paths name one file.
    candidates = [installed_root.path / "lib/udev/rules.d/90-rmobike.rules",
                  installed_root.path / "usr/lib/udev/rules.d/90-rmobike.rules"]
    rules = {path.resolve() for path in candidates if path.exists()}
    assert len(rules) == 1
    rule = "/" + str(rules.pop().relative_to(installed_root.path.resolve()))
    result = installed_root.run(["udevadm", "verify", rule])
    if "Unknown command verify" in result.stderr or "unknown command" in result.stderr.lower():
        pytest.skip(f"udevadm of {installed_root.suite} has no verify command")
    assert result.returncode == 0, result.stdout + result.stderr


# -- removal ------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", roots.SUITES)
def test_purge_removes_everything(
    suite: str, fresh_root: Callable[[str], roots.Root], deb: Path
) -> None:
    root = fresh_root(suite)
    root.check(["dpkg", "-i", root.copy_in(deb, f"/tmp/{deb.name}")])
    root.check(["dpkg", "--purge", "rmobike"])
    assert not (root.path / "etc/rmobike").exists()
    assert not (root.path / "usr/lib/rmobike").exists()
    assert not (root.path / "usr/sbin/rmobiked").exists()
