"""Set-up of the package tests: when they run, the packages, the clean roots.

The tests build the .deb and the .rpm, make clean Debian roots with
mmdebstrap and boot the lab VM, so they need root and Debian's mirror and
take minutes. They run only when selected with the marker:

    .venv/bin/pytest -m packaging tests/packaging

and are skipped otherwise, so that a plain `pytest` stays fast and offline.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.packaging import roots

PACKAGING_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so that it is known without a change to pyproject.toml."""
    config.addinivalue_line(
        "markers", "packaging: builds and installs the packages; needs root and Debian's mirror"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the package tests unless `-m` selects them and this runs as root."""
    # This hook sees every collected item, not only those below this directory.
    ours = [item for item in items if PACKAGING_DIR in Path(str(item.path)).parents]
    if not ours:
        return
    if "packaging" not in (config.option.markexpr or ""):
        reason = "package tests run only with -m packaging (they need root and Debian's mirror)"
    elif os.geteuid() != 0:
        reason = "package tests need root (mmdebstrap, chroot)"
    else:
        return
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def upstream_version() -> str:
    """The version in pyproject.toml."""
    with open(roots.CHECKOUT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]


@pytest.fixture(scope="session")
def deb() -> Path:
    """The .deb built by packaging/build-deb.sh."""
    return roots.build("build-deb.sh", "rmobike_*_all.deb")


@pytest.fixture(scope="session")
def rpm() -> Path:
    """The binary .rpm built by packaging/build-rpm.sh."""
    roots.ensure_apt_packages("rpm")
    return roots.build("build-rpm.sh", "rmobike-*.noarch.rpm")


@pytest.fixture(scope="session")
def root_packages(deb: Path) -> list[str]:
    """Packages of a clean root: the .deb's dependencies and the test tools."""
    return roots.dependency_names(roots.deb_field(deb, "Depends")) + list(roots.TEST_TOOLS)


@pytest.fixture(scope="session")
def fresh_root(
    tmp_path_factory: pytest.TempPathFactory, root_packages: list[str]
) -> Iterator[Callable[[str], roots.Root]]:
    """A function that unpacks a clean root of a suite; every root is deleted at the end."""
    unpacked: list[roots.Root] = []

    def _fresh_root(suite: str) -> roots.Root:
        tarball = roots.base_tarball(suite, root_packages)
        root = roots.Root.unpack(tarball, tmp_path_factory.mktemp(suite) / "root", suite)
        unpacked.append(root)
        return root

    yield _fresh_root
    for root in unpacked:
        root.remove()


@pytest.fixture(scope="module", params=roots.SUITES)
def installed_root(
    request: pytest.FixtureRequest, fresh_root: Callable[[str], roots.Root], deb: Path
) -> roots.Root:
    """A clean root of each suite with the .deb installed by dpkg, and a test PSK file."""
    root = fresh_root(request.param)
    package = root.copy_in(deb, f"/tmp/{deb.name}")
    root.check(["dpkg", "-i", package])
    roots.write_test_psk(root)
    return root
