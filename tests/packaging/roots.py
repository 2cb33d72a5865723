"""Build the packages and clean Debian roots to install them in.

A clean root is made by mmdebstrap from Debian's packages: the minbase
variant plus the .deb's dependencies and the tools the tests use. The root
is cached as a tarball under /var/cache/rmobike-test-root/, named by the
suite and a hash of the package list, so a second run only unpacks it. Each
test unpacks its own copy, so no test sees another's changes.

Everything here needs root: mmdebstrap, chroot and the device nodes in the
tarball.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]
DIST = CHECKOUT / "dist"
CACHE_DIR = Path(os.environ.get("RMOBIKE_TEST_ROOT_CACHE", "/var/cache/rmobike-test-root"))

# Debian's own tools first: a venv or pyenv python on PATH must not build
# the packages or run dpkg's helpers.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

APT_TIMEOUT = 900  # seconds for apt-get update + install
BUILD_TIMEOUT = 1800  # seconds for build-deb.sh or build-rpm.sh, lintian included
MMDEBSTRAP_TIMEOUT = 1200  # seconds to make one root
CHROOT_TIMEOUT = 300  # seconds for one command in a root, unless a test says otherwise

# Tools the tests run inside the root, on top of the .deb's dependencies:
# man-db so that `systemd-analyze verify` finds the man pages of
# Documentation=, udev for `udevadm verify`, pytest and hypothesis for the
# unit tests.
TEST_TOOLS = ("man-db", "udev", "python3-pytest", "python3-hypothesis")

# Debian 12 and 13.
SUITES = ("bookworm", "trixie")


class PackagingError(RuntimeError):
    """A build, a root or a command inside a root failed."""


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a host command with Debian's PATH; return it whatever its exit status."""
    env = dict(os.environ, PATH=SYSTEM_PATH, LC_ALL="C.UTF-8")
    env.update(kwargs.pop("env", {}))
    log.info("running: %s", " ".join(argv))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Raise PackagingError with the output if the command failed."""
    if result.returncode != 0:
        raise PackagingError(f"{' '.join(result.args)} exited with {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ensure_apt_packages(*packages: str) -> None:
    """Install the Debian packages that are missing on the host."""
    missing = []
    for package in packages:
        status = run(["dpkg-query", "-W", "-f=${Status}", package], timeout=60)
        if status.stdout.strip() != "install ok installed":
            missing.append(package)
    if not missing:
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    check(run(["apt-get", "update", "-q"], timeout=APT_TIMEOUT, env=env))
    check(run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
              timeout=APT_TIMEOUT, env=env))


# -- packages -----------------------------------------------------------------------------


def build(script: str, pattern: str) -> Path:
    """Run packaging/<script> and return the one file in dist/ that matches ``pattern``.

    RMOBIKE_PACKAGING_PREBUILT=1 skips the build and takes what dist/ has,
    for a second run of the tests on the same packages.
    """
    if os.environ.get("RMOBIKE_PACKAGING_PREBUILT") != "1":
        check(run([str(CHECKOUT / "packaging" / script)], timeout=BUILD_TIMEOUT, cwd=CHECKOUT))
    found = sorted(DIST.glob(pattern))
    if len(found) != 1:
        raise PackagingError(f"expected one {pattern} in {DIST}, found {found}")
    return found[0]


def deb_field(deb: Path, field: str) -> str:
    """Return a field of the .deb's control file, such as Depends."""
    return check(run(["dpkg-deb", "-f", str(deb), field], timeout=60)).stdout.strip()


def dependency_names(depends: str) -> list[str]:
    """Return the package names of a Depends field, the first of each alternative.

    Versions and architecture qualifiers are dropped: "python3 (>= 3.11),
    systemd | systemd-sysusers, python3:any" gives python3, systemd, python3.
    """
    names = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        if name and name not in names:
            names.append(name)
    return names


# -- clean roots --------------------------------------------------------------------------


def base_tarball(suite: str, packages: list[str]) -> Path:
    """Return a cached tarball of a clean ``suite`` root with ``packages``, making it if needed.

    RMOBIKE_TEST_MIRROR sets the mirror; without it mmdebstrap uses its
    default, Debian's own.
    """
    packages = sorted(set(packages))
    digest = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"{suite}-minbase-{digest}.tar.zst"
    if tarball.exists():
        return tarball

    ensure_apt_packages("mmdebstrap", "zstd", "debian-archive-keyring")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(tarball.name + ".partial.tar.zst")
    argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(packages),
            suite, str(partial)]
    mirror = os.environ.get("RMOBIKE_TEST_MIRROR")
    if mirror:
        argv.append(mirror)
    try:
        check(run(argv, timeout=MMDEBSTRAP_TIMEOUT))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(tarball)  # only a finished tarball gets the cached name
    return tarball


@dataclass
class Root:
    """An unpacked Debian root at ``path``; commands run in it with chroot."""

    path: Path
    suite: str

    @classmethod
    def unpack(cls, tarball: Path, path: Path, suite: str) -> "Root":
        """Unpack ``tarball`` into the new directory ``path``."""
        path.mkdir(parents=True)
        check(run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(path)],
                  timeout=CHROOT_TIMEOUT))
        return cls(path, suite)

    def run(self, argv: list[str], timeout: float = CHROOT_TIMEOUT,
            **kwargs) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the root, as root, with a clean environment.

        The command gets its own mount and network namespaces, which end with
        it: a maintainer script or test that mounts something or creates a
        network namespace (`ip netns add` does both) leaves nothing behind on
        the host, and nothing in the root reaches the host's network.
        """
        env = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root",
               "DEBIAN_FRONTEND": "noninteractive"}
        log.info("chroot %s: %s", self.path, " ".join(argv))
        isolate = ["unshare", "--mount", "--net", "--propagation", "private", "--"]
        return subprocess.run([*isolate, "chroot", str(self.path), *argv], capture_output=True,
                              text=True, timeout=timeout, env=env, **kwargs)

    def check(self, argv: list[str], timeout: float = CHROOT_TIMEOUT) -> str:
        """Run ``argv`` inside the root and return its output; raise if it fails."""
        return check(self.run(argv, timeout=timeout)).stdout

    def copy_in(self, source: Path, target: str) -> str:
        """Copy a host file into the root at ``target`` (absolute) and return ``target``."""
        destination = self.path / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        return target

    def remove(self) -> None:
        """Delete the root's directory tree."""
        # Commands ran in mount namespaces of their own (see run), so nothing
        # is mounted below the root on the host and a plain delete is safe.
        shutil.rmtree(self.path, ignore_errors=True)


def write_test_psk(root: Root, path: str = "/etc/rmobike/site.psk") -> None:
    """Write a pre-shared key file that only root and the group rmobike can read."""
    # A fixed test key: it protects no tunnel, the lab runs in its own namespace.
    (root.path / path.lstrip("/")).write_text("0x" + "42" * 32 + "\n")
    root.check(["chown", "root:rmobike", path])
    root.check(["chmod", "0640", path])
