"""Start the installed rmobiked in a Debian root, as its systemd unit would, inside the lab VM.

    python3 guest_start.py ROOT

ROOT is a Debian root with the rmobike .deb installed and a test PSK file.
The lab VM has no systemd as PID 1, so this script plays systemd's part for
the settings of rmobiked.service that it can: it reads ExecStart=, User=,
Group=, UMask=, CapabilityBoundingSet=, AmbientCapabilities=,
NoNewPrivileges=, RuntimeDirectory=, StateDirectory= and WatchdogSec= from
the installed unit, and runs the daemon under chroot and setpriv(1) with
those, in a network namespace of its own, with $NOTIFY_SOCKET and
$WATCHDOG_USEC set. The file system sandbox (ProtectSystem= and the rest)
and the system call filter are not applied.

Then it waits for READY=1, runs `rmobikectl status` in the root, waits for
one WATCHDOG=1, sends SIGTERM and waits for the exit. It prints one line,
RESULT_MARKER followed by a JSON object, for tests/packaging/test_lab.py.

Only the standard library: this runs with the guest's /usr/bin/python3.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULT_MARKER = "RMOBIKE-PACKAGING-RESULT "

READY_TIMEOUT = 180.0  # seconds from start to READY=1; the lab VM runs under TCG
COMMAND_TIMEOUT = 60.0  # seconds for rmobikectl status
STOP_TIMEOUT = 60.0  # seconds from SIGTERM to the exit
NOTIFY_SOCKET = "/run/rmobike-test-notify.sock"  # path inside the root


def read_unit(root: Path) -> dict[str, list[str]]:
    """Return the [Service] settings of the installed rmobiked.service, each as a list."""
    for directory in ("usr/lib/systemd/system", "lib/systemd/system"):
        path = root / directory / "rmobiked.service"
        if path.exists():
            break
    else:
        raise FileNotFoundError(f"rmobiked.service not found under {root}")

    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """Convert a systemd time span of one unit ("30s", "2min", "1h") to seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number):] or "s"
    return float(number) * units[unit]


def capabilities(settings: dict[str, list[str]], key: str) -> str:
    """Return a setpriv capability list such as "-all,+net_admin" for a unit setting."""
    names = " ".join(settings.get(key, [])).split()
    return ",".join(["-all"] + [f"+{name.lower().removeprefix('cap_')}" for name in names])


def daemon_command(settings: dict[str, list[str]]) -> str:
    """Return the shell command, run in the root, that starts the daemon like the unit."""
    user = settings["User"][-1]
    group = settings.get("Group", [user])[-1]
    setpriv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups",
               f"--bounding-set={capabilities(settings, 'CapabilityBoundingSet')}",
               f"--inh-caps={capabilities(settings, 'AmbientCapabilities')}",
               f"--ambient-caps={capabilities(settings, 'AmbientCapabilities')}"]
    if settings.get("NoNewPrivileges", ["no"])[-1] in ("yes", "true", "1"):
        setpriv.append("--no-new-privs")
    umask = settings.get("UMask", ["0022"])[-1]
    exec_start = settings["ExecStart"][-1]
    return f"ip link set lo up && umask {umask} && exec {shlex.join(setpriv)} -- {exec_start}"


def mount_all(root: Path) -> list[Path]:
    """Mount what a booted system has: /proc, /dev, and tmpfs on /run and /tmp."""
    mounts = []
    for argv, target in (
        (["mount", "-t", "proc", "proc"], root / "proc"),
        (["mount", "--bind", "/dev"], root / "dev"),
        (["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs"], root / "run"),
        (["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs"], root / "tmp"),
    ):
        subprocess.run([*argv, str(target)], check=True, timeout=30)
        mounts.append(target)
    return mounts


def make_directories(root: Path, settings: dict[str, list[str]]) -> None:
    """Create RuntimeDirectory= and StateDirectory= owned by the unit's user, as systemd does."""
    user = settings["User"][-1]
    for key, base in (("RuntimeDirectory", "run"), ("StateDirectory", "var/lib")):
        mode = settings.get(f"{key}Mode", ["0755"])[-1]
        for name in " ".join(settings.get(key, [])).split():
            subprocess.run(["chroot", str(root), "install", "-d", "-m", mode, "-o", user,
                            "-g", user, f"/{base}/{name}"], check=True, timeout=30)


def receive(notify: socket.socket, messages: list[str], expected: str, timeout: float) -> bool:
    """Collect notify messages until one line equals ``expected``; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        notify.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            datagram = notify.recv(4096).decode(errors="replace")
        except TimeoutError:
            break
        messages.extend(datagram.splitlines())
        if expected in datagram.splitlines():
            return True
    return False


def run_daemon(root: Path, settings: dict[str, list[str]], result: dict) -> None:
    """Start the daemon, check it, stop it; record every step in ``result``."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = root / NOTIFY_SOCKET.lstrip("/")
    notify.bind(str(notify_path))
    os.chmod(notify_path, 0o666)  # the daemon runs as the unit's user

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "NOTIFY_SOCKET": NOTIFY_SOCKET}
    watchdog = settings.get("WatchdogSec")
    if watchdog:
        env["WATCHDOG_USEC"] = str(int(seconds(watchdog[-1]) * 1_000_000))
    command = daemon_command(settings)
    result["command"] = command

    log_path = Path("/tmp/rmobiked-packaging.log")
    with open(log_path, "w") as log:
        # unshare and chroot exec, so the daemon keeps this process id.
        daemon = subprocess.Popen(["unshare", "--net", "--", "chroot", str(root),
                                   "/bin/sh", "-c", command],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    messages: list[str] = []
    result["pid"] = daemon.pid
    try:
        result["ready"] = receive(notify, messages, "READY=1", READY_TIMEOUT)
        if result["ready"]:
            status = subprocess.run(["chroot", str(root), "rmobikectl", "status"],
                                    capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                    env={"PATH": env["PATH"], "LANG": "C.UTF-8"})
            result["status_exit"] = status.returncode
            result["status_output"] = status.stdout + status.stderr
        if watchdog:
            result["watchdog"] = receive(notify, messages, "WATCHDOG=1",
                                         seconds(watchdog[-1]) * 1.5)
    finally:
        result["running_before_stop"] = daemon.poll() is None
        daemon.send_signal(signal.SIGTERM)
        try:
            result["exit"] = daemon.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            result["exit"] = f"still running {STOP_TIMEOUT:.0f} s after SIGTERM, killed"
            daemon.wait(timeout=30)
        receive(notify, messages, "STOPPING=1", 1.0)
        notify.close()
        result["notify"] = messages
        result["log_tail"] = log_path.read_text(errors="replace").splitlines()[-60:]


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve()
    result: dict = {"root": str(root)}
    mounts: list[Path] = []
    try:
        settings = read_unit(root)
        mounts = mount_all(root)
        make_directories(root, settings)
        run_daemon(root, settings, result)
    except Exception as error:  # noqa: BLE001 - reported to the host test as a result
        result["error"] = repr(error)
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "--lazy", str(target)], check=False, timeout=30)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
