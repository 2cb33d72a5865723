"""Run commands in the lab VM: Debian's own kernel under QEMU, booted by virtme-ng.

The host kernel on a development machine may lack ESP, so kernel tests run in
a VM that boots the newest kernel under /boot (virtme-ng loads modules only
for a kernel whose modules are under /lib/modules). The guest shares the
host's root filesystem:

- ``/`` and so the checkout are read-only in the guest;
- ``/tmp`` (an overlay) and ``/var/tmp`` (a tmpfs) are writable, but what the
  guest writes there never reaches the host;
- ``<checkout>/lab-out`` is shared read-write, so files written there (logs,
  captures, measurements) are on the host after the run.

QEMU runs under TCG (``--disable-kvm``) because KVM hangs on the machines this
lab was built on. There (2 cores, Debian kernel 6.1, virtme-ng 1.42) a boot to
the first guest command took 20-30 s.

Example::

    returncode, output = run_in_vm("modprobe esp4 && ip xfrm state", timeout=300)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]
LAB_OUT = CHECKOUT / "lab-out"
VENV_BIN = CHECKOUT / ".venv" / "bin"

GUEST_CPUS = 2
GUEST_MEMORY = "2G"

# Only one lab VM runs at a time on a machine: two TCG guests on a small host
# slow each other down enough to distort the traffic measurements.
LOCK_PATH = Path("/tmp/rmobike-lab-vm.lock")
LOCK_TIMEOUT = 3600.0  # seconds to wait for another lab VM to finish
QUEUE_DIR = Path("/tmp/rmobike-lab-vm.queue")
# A ticket this old belongs to a process that died and whose PID was reused.
TICKET_EXPIRY = 3 * 3600.0  # seconds

# Environment variables that choose the kernel and report where the lab runs.
ENV_KERNEL = "RMOBIKE_LAB_KERNEL"  # path of a vmlinuz to boot instead of the newest
ENV_LAB = "RMOBIKE_LAB"  # "1" inside the lab (VM or ESP-capable host)
ENV_LAB_OUT = "RMOBIKE_LAB_OUT"  # directory shared with the host for results


class LabError(RuntimeError):
    """The lab VM could not be started or did not finish in time."""


def _version_key(version: str) -> list[int | str]:
    # "6.1.0-57-amd64" sorts after "6.1.0-9-amd64": compare number runs as numbers.
    return [int(part) if part.isdigit() else part
            for part in re.split(r"(\d+)", version)]


def find_kernel() -> Path:
    """Return the vmlinuz to boot: $RMOBIKE_LAB_KERNEL, else the newest under /boot.

    Only a kernel with modules under /lib/modules/<version> counts, because
    virtme-ng loads the guest's modules from there.
    """
    override = os.environ.get(ENV_KERNEL)
    if override:
        return Path(override)

    candidates = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if Path("/lib/modules", version).is_dir():
            candidates.append((_version_key(version), image))
    if not candidates:
        raise LabError("no /boot/vmlinuz-* with modules under /lib/modules found: "
                       "install Debian's linux-image-amd64 package")
    return max(candidates)[1]


def vng_command(guest_command: str, kernel: Path | None = None,
                rwdirs: tuple[Path, ...] = (LAB_OUT,)) -> list[str]:
    """Return the virtme-ng command line that boots the lab kernel and runs ``guest_command``.

    ``guest_command`` is a shell command line. It runs as root with the
    current directory unchanged. Each directory in ``rwdirs`` is shared
    read-write with the host and must exist.
    """
    vng = shutil.which("vng", path=str(VENV_BIN)) or shutil.which("vng")
    if vng is None:
        raise LabError(f"vng (virtme-ng) not found in {VENV_BIN} or on PATH: "
                       "install requirements-dev.txt into the venv")

    argv = [vng, "--disable-kvm", "--run", str(kernel or find_kernel()),
            "--user", "root", "--cpus", str(GUEST_CPUS), "--memory", GUEST_MEMORY]
    for directory in rwdirs:
        argv += ["--rwdir", str(directory)]
    argv += ["--exec", guest_command]
    return argv


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tickets_ahead(ticket: Path) -> list[Path]:
    """Return the queue's tickets older than ``ticket``, removing those of dead processes."""
    ahead = []
    for other in sorted(QUEUE_DIR.iterdir()):
        if other.name >= ticket.name:
            break
        issued_ns, _, pid = other.name.partition("-")
        expired = time.time_ns() - int(issued_ns) > TICKET_EXPIRY * 1e9
        if expired or not _process_alive(int(pid)):
            other.unlink(missing_ok=True)
            continue
        ahead.append(other)
    return ahead


@contextlib.contextmanager
def _vm_lock(timeout: float) -> Iterator[None]:
    # flock is released by the kernel when the process dies, so a crashed run
    # never leaves a stale lock. flock alone lets any waiter win the race when
    # it is released, so waiters also queue: each takes a ticket named by the
    # time it started waiting, and only the oldest live ticket tries the lock.
    QUEUE_DIR.mkdir(exist_ok=True)
    ticket = QUEUE_DIR / f"{time.time_ns():020d}-{os.getpid()}"
    ticket.touch()
    try:
        with open(LOCK_PATH, "a") as lock_file:
            _acquire(lock_file, ticket, timeout)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    finally:
        ticket.unlink(missing_ok=True)


def _acquire(lock_file: TextIO, ticket: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting_logged = False
    while True:
        if not _tickets_ahead(ticket):
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for "
                           f"another lab VM to finish (lock {LOCK_PATH})")
        if not waiting_logged:
            log.warning("waiting for another lab VM to finish (lock %s)", LOCK_PATH)
            waiting_logged = True
        time.sleep(1.0)


def _copy_lines(source: TextIO, lines: list[str], echo: TextIO | None) -> None:
    for line in source:
        lines.append(line)
        if echo is not None:
            echo.write(line)
            echo.flush()


def run_in_vm(guest_command: str, timeout: float, echo: TextIO | None = sys.stdout,
              lock_timeout: float = LOCK_TIMEOUT) -> tuple[int, str]:
    """Boot the lab VM, run ``guest_command`` in it as root and return (exit status, output).

    The output is stdout and stderr of the guest command and of virtme-ng,
    merged, and is copied line by line to ``echo`` while it arrives (pass
    None to keep it quiet). ``timeout`` bounds the whole run in seconds,
    boot included: when it expires the VM's process group is killed and
    LabError is raised. Only one lab VM runs at a time on the machine, so
    this first waits up to ``lock_timeout`` seconds for another one.
    """
    LAB_OUT.mkdir(exist_ok=True)
    argv = vng_command(guest_command)
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")

    with _vm_lock(lock_timeout):
        log.info("booting lab VM: %s", " ".join(argv))
        started = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace",
                                   env=env, cwd=CHECKOUT, start_new_session=True)

        # A thread reads the output so that the time limit applies even when
        # the guest prints nothing.
        lines: list[str] = []
        reader = threading.Thread(target=_copy_lines, args=(process.stdout, lines, echo),
                                  daemon=True)
        reader.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            reader.join(timeout=10)
            raise LabError(f"lab VM timed out after {timeout:.0f} s and was killed; "
                           f"last output:\n{''.join(lines[-20:])}") from None
        finally:
            # vng may leave QEMU behind in its process group if it dies first.
            _kill_group(process)
        reader.join(timeout=10)

    log.info("lab VM exited with status %d after %.1f s", returncode, time.monotonic() - started)
    return returncode, "".join(lines)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


# A throwaway SA for the ESP probe: documentation addresses, a made-up SPI and
# a key that protects nothing.
_PROBE_SA = ("ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x00000100 "
             "mode tunnel aead rfc4106(gcm(aes)) 0x" + "00" * 20 + " 128")


@functools.cache
def host_has_esp() -> bool:
    """Return True if this kernel can install an ESP state (tried once per process).

    The probe installs an AES-GCM tunnel-mode SA in a throwaway network
    namespace. Without root, or without the esp4 module, the answer is False.
    """
    from tests.lab.netns import CommandError, Namespace

    try:
        with Namespace("espprobe") as namespace:
            namespace.run(_PROBE_SA, timeout=30)
    except (CommandError, OSError, subprocess.SubprocessError) as error:
        log.info("this kernel cannot install an ESP state, kernel tests need the lab VM: %s",
                 error)
        return False
    return True
