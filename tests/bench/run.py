"""Run every benchmark and write docs/benchmarks.md.

    python -m tests.bench.run [--only NAME ...]

Each benchmark is a module `tests.bench.<name>` run as `python -m tests.bench.<name> --out FILE`;
it writes one Markdown section to FILE. Benchmarks that need a kernel with ESP run together in one
lab boot (or on the host when its kernel has ESP); the others run on the host. The sections are
then joined, under a header that records the machine, into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from tests.lab import run as lab_run
from tests.lab import vm

log = logging.getLogger(__name__)

# (module name, needs the lab kernel), in the order of the sections in the page.
BENCHMARKS = (
    ("bench_ike", False),
    ("bench_xfrm", True),
    ("bench_roaming", True),
    ("bench_reaction", False),
)
DOC = vm.CHECKOUT / "docs" / "benchmarks.md"
RESULTS = vm.LAB_OUT / "bench"
TIMEOUT = 5400.0  # seconds for all lab benchmarks together, boot included


def _command(python: str, name: str) -> list[str]:
    return [python, "-m", f"tests.bench.{name}", "--out", str(RESULTS / f"{name}.md")]


def run_on_host(names: list[str]) -> list[str]:
    """Run benchmarks on the host; return the names of those that failed."""
    failed = []
    for name in names:
        log.info("running %s on the host", name)
        result = subprocess.run(_command(sys.executable, name), cwd=vm.CHECKOUT,
                                env=dict(os.environ, **lab_run.lab_environment()))
        if result.returncode != 0:
            failed.append(name)
    return failed


def run_in_lab(names: list[str]) -> list[str]:
    """Run lab benchmarks in one lab boot; return the names of those that failed."""
    if not names:
        return []
    if vm.host_has_esp():
        return run_on_host(names)

    python = str(vm.VENV_BIN / "python")
    exports = " ".join(f"{key}={shlex.quote(value)}"
                       for key, value in lab_run.lab_environment().items())
    lines = [
        f"for module in {' '.join(lab_run.MODULES)}; do modprobe $module; done",
        f"cd {shlex.quote(str(vm.CHECKOUT))} || exit 1",
        f"export {exports} TMPDIR=/var/tmp",
    ]
    for name in names:
        lines.append(f"{shlex.join(_command(python, name))} || echo 'rmobike-bench: FAILED {name}'")
    try:
        _, output = vm.run_in_vm("\n".join(lines), timeout=TIMEOUT)
    except vm.LabError as error:
        log.error("%s", error)
        return names
    return [name for name in names if f"rmobike-bench: FAILED {name}" in output
            or not (RESULTS / f"{name}.md").exists()]


def machine_description() -> str:
    """Return a Markdown paragraph naming the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = "the host" if vm.host_has_esp() else f"a lab VM ({vm.find_kernel().name}, QEMU TCG, " \
        f"{vm.GUEST_CPUS} vCPUs, {vm.GUEST_MEMORY})"
    return (f"Measured on {datetime.date.today().isoformat()}: {os.cpu_count()} cores of {cpu}, "
            f"Python {platform.python_version()}, host kernel {platform.release()}. "
            f"Benchmarks that need ESP ran in {where}.")


def write_page(names: list[str]) -> None:
    """Join the sections that exist into docs/benchmarks.md."""
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m tests.bench.run`); do not edit by hand.",
        "",
        machine_description(),
        "",
    ]
    for name in names:
        section = RESULTS / f"{name}.md"
        if section.exists():
            parts += [section.read_text().rstrip(), ""]
            measured = datetime.date.fromtimestamp(section.stat().st_mtime)
            if measured != datetime.date.today():
                # --only reruns some benchmarks; the others keep the figures of an earlier run.
                parts += [f"_This section is from an earlier run, on {measured.isoformat()}._", ""]
        else:
            parts += [f"## {name}", "", "Not measured: the benchmark failed in this run.", ""]
    DOC.write_text("\n".join(parts))
    log.info("wrote %s", DOC)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, write the page and return 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark module (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    selected = [(name, lab) for name, lab in BENCHMARKS if not args.only or name in args.only]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, _ in selected:
        (RESULTS / f"{name}.md").unlink(missing_ok=True)

    failed = run_on_host([name for name, lab in selected if not lab])
    failed += run_in_lab([name for name, lab in selected if lab])
    write_page([name for name, _ in BENCHMARKS])
    if failed:
        log.error("benchmarks failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
