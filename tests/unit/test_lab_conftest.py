"""Tests for the lab skip rules in tests/conftest.py, each in a separate pytest run."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.lab import vm

CHECKOUT = Path(__file__).resolve().parents[2]


def _run_pytest(tmp_path: Path, source: str, lab: bool) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_sample.py"
    test_file.write_text(textwrap.dedent(source))
    env = {key: value for key, value in os.environ.items() if key != vm.ENV_LAB}
    if lab:
        env[vm.ENV_LAB] = "1"
    env["PYTHONPATH"] = str(CHECKOUT)
    # -c /dev/null keeps the project's ini out; -p loads the conftest under test as a plugin.
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(tmp_path),
               "-p", "tests.conftest", "-p", "no:cacheprovider", "-o", "markers=lab: lab",
               "-rA", str(test_file)]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)


PASSING_LAB_TEST = """
    import pytest

    @pytest.mark.lab
    def test_lab():
        pass
"""


def test_lab_test_skipped_outside_lab(tmp_path: Path) -> None:
    if vm.host_has_esp():
        pytest.skip("this host's kernel has ESP, so lab tests run here")

    result = _run_pytest(tmp_path, PASSING_LAB_TEST, lab=False)

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "needs the lab" in result.stdout


def test_lab_test_runs_inside_lab(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, PASSING_LAB_TEST, lab=True)

    assert result.returncode == 0, result.stdout
    assert "1 passed" in result.stdout


def test_skip_inside_lab_fails(tmp_path: Path) -> None:
    source = """
        import pytest

        @pytest.mark.lab
        def test_lab():
            pytest.skip("no tcpdump")
    """

    result = _run_pytest(tmp_path, source, lab=True)

    assert result.returncode == 1, result.stdout
    assert "skipped inside the lab" in result.stdout
    assert "no tcpdump" in result.stdout


def test_skip_mark_inside_lab_fails(tmp_path: Path) -> None:
    source = """
        import pytest

        @pytest.mark.lab
        @pytest.mark.skip(reason="not yet")
        def test_lab():
            pass
    """

    result = _run_pytest(tmp_path, source, lab=True)

    assert result.returncode == 1, result.stdout
    assert "not yet" in result.stdout


def test_module_skip_inside_lab_fails(tmp_path: Path) -> None:
    source = """
        import pytest

        pytest.importorskip("no_such_module_for_the_lab")

        @pytest.mark.lab
        def test_lab():
            pass
    """

    result = _run_pytest(tmp_path, source, lab=True)

    assert result.returncode != 0, result.stdout
    assert "skipped at collection inside the lab" in result.stdout


def test_non_lab_skip_inside_lab_stays_skip(tmp_path: Path) -> None:
    source = """
        import pytest

        def test_plain():
            pytest.skip("not relevant")
    """

    result = _run_pytest(tmp_path, source, lab=True)

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


def test_xfail_inside_lab_stays_xfail(tmp_path: Path) -> None:
    source = """
        import pytest

        @pytest.mark.lab
        @pytest.mark.xfail(reason="known kernel gap", strict=True)
        def test_lab():
            assert False
    """

    result = _run_pytest(tmp_path, source, lab=True)

    assert result.returncode == 0, result.stdout
    assert "1 xfailed" in result.stdout
