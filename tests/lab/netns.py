"""Network namespaces and veth pairs for the lab.

Every namespace that the lab creates is named ``rmb-<role>-<pid>-<n>``, so a
leftover one is easy to spot (``ip netns list``) and to trace to the process
that made it. Commands run through ``ip netns exec``.

Example::

    with Namespace("gw1") as gw, Namespace("rtr") as rtr:
        veth(gw, "up0", rtr, "gw1up0", local_mac(1), local_mac(2))
        gw.run("ip addr add 192.0.2.1/24 dev up0")
        rtr.run(["ip", "addr", "add", "192.0.2.254/24", "dev", "gw1up0"])
        print(gw.run("ip -br addr").stdout)
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import shlex
import subprocess
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

PREFIX = "rmb-"
DEFAULT_TIMEOUT = 30.0  # seconds; one `ip` command took 0.1-1.3 s in the lab VM
_CLONE_NEWNET = 0x40000000  # from linux/sched.h

_counter = itertools.count()

Command = Sequence[str] | str


class CommandError(subprocess.CalledProcessError):
    """A command in a namespace exited with a non-zero status.

    Unlike its base class, ``str()`` includes the namespace and stderr, so a
    failed ``ip`` command explains itself in a test report.
    """

    def __init__(self, namespace: str, returncode: int, cmd: list[str],
                 output: str, stderr: str) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.namespace = namespace

    def __str__(self) -> str:
        return (f"command {shlex.join(self.cmd)!r} in namespace {self.namespace} "
                f"failed with exit status {self.returncode}: {self.stderr.strip()}")


def _argv(cmd: Command) -> list[str]:
    # A string is split like a shell would split it, but no shell runs it:
    # pass ["sh", "-c", "..."] for pipes or redirections.
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return list(cmd)


def local_mac(n: int) -> str:
    """Return a locally administered unicast MAC address numbered ``n``.

    veth pairs created in the lab VM can get identical random MAC addresses,
    so every lab interface gets an explicit one from this function.
    """
    if not 0 <= n < 1 << 32:
        raise ValueError(f"MAC number {n} out of range 0..2**32-1")
    octets = [0x02, 0x00] + list(n.to_bytes(4, "big"))
    return ":".join(f"{octet:02x}" for octet in octets)


class Namespace:
    """A named network namespace that this process created and owns.

    The loopback interface is up. ``delete()`` (or leaving the ``with``
    block) removes the namespace and with it every interface inside it.
    """

    def __init__(self, role: str = "ns") -> None:
        self.name = f"{PREFIX}{role}-{os.getpid()}-{next(_counter)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True,
                       capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
        self.deleted = False
        log.debug("created namespace %s", self.name)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True,
                           capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
        except BaseException:
            self.delete()
            raise

    @property
    def path(self) -> str:
        """The namespace's bind mount, usable with setns(2) or pyroute2's ``netns=``."""
        return f"/run/netns/{self.name}"

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def argv(self, cmd: Command) -> list[str]:
        """Return the argument vector that runs ``cmd`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *_argv(cmd)]

    def run(self, cmd: Command, check: bool = True,
            timeout: float = DEFAULT_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this namespace and return its result with text output.

        Raises CommandError if ``check`` is set and the exit status is not 0,
        and subprocess.TimeoutExpired (after killing the command) when it
        runs longer than ``timeout`` seconds.
        """
        argv = self.argv(cmd)
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise CommandError(self.name, result.returncode, argv[4:],
                               result.stdout, result.stderr)
        return result

    def batch(self, commands: Sequence[str], options: Sequence[str] = (),
              timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run ``ip`` commands (without the leading ``ip``) in this namespace in one process.

        One ``ip -batch`` costs one process start instead of one per command,
        which matters under QEMU TCG. ``options`` such as ``("-6",)`` apply to
        every command, because a batch line cannot carry options. The batch
        stops at the first failing command and raises CommandError naming it.
        """
        if not commands:
            return
        argv = ["ip", *options, "-n", self.name, "-batch", "-"]
        script = "".join(f"{command}\n" for command in commands)
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=timeout, input=script)
        if result.returncode != 0:
            raise CommandError(self.name, result.returncode, argv,
                               result.stdout, result.stderr)

    def sysctl(self, settings: dict[str, str | int]) -> None:
        """Write sysctls under /proc/sys/net in this namespace, e.g. {"ipv4.ip_forward": 1}.

        Keys are relative to net/ and use dots. The writes happen in this
        process, with the calling thread moved into the namespace.
        """
        with self.entered():
            for key, value in settings.items():
                path = "/proc/sys/net/" + key.replace(".", "/")
                try:
                    with open(path, "w") as sysctl_file:
                        sysctl_file.write(f"{value}\n")
                except OSError as error:
                    raise OSError(error.errno, f"setting sysctl net.{key}={value} "
                                  f"in namespace {self.name} failed: {error.strerror}") from error

    def popen(self, cmd: Command, **kwargs: object) -> subprocess.Popen:
        """Start ``cmd`` in this namespace and return the Popen object.

        Keyword arguments go to subprocess.Popen unchanged. The caller must
        stop the process (and wait for it) before deleting the namespace.
        """
        return subprocess.Popen(self.argv(cmd), **kwargs)  # type: ignore[call-overload]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this namespace for the ``with`` block.

        Sockets opened inside the block (for example netlink sockets) stay
        bound to this namespace after the block ends. Only the calling thread
        moves, so other threads keep their namespace.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net", "rb") as home, \
                open(self.path, "rb") as target:
            _setns(libc, target.fileno())
            try:
                yield
            finally:
                _setns(libc, home.fileno())

    def delete(self) -> None:
        """Delete the namespace; a second call does nothing."""
        if self.deleted:
            return
        self.deleted = True
        subprocess.run(["ip", "netns", "delete", self.name], check=True,
                       capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
        log.debug("deleted namespace %s", self.name)


def _setns(libc: ctypes.CDLL, fd: int) -> None:
    # os.setns only exists from Python 3.12 on.
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns failed: {os.strerror(errno)}")


def veth(ns_a: Namespace, if_a: str, ns_b: Namespace, if_b: str,
         mac_a: str, mac_b: str, up: bool = True) -> None:
    """Create a veth pair with end ``if_a`` in ``ns_a`` and end ``if_b`` in ``ns_b``.

    Both ends get the given MAC addresses and, if ``up`` is set, are brought
    up. Interface names are at most 15 characters (IFNAMSIZ - 1).
    """
    for name in (if_a, if_b):
        if not 0 < len(name) <= 15:
            raise ValueError(f"invalid interface name {name!r}: 1 to 15 characters")
    ns_a.run(["ip", "link", "add", if_a, "address", mac_a, "type", "veth",
              "peer", "name", if_b, "address", mac_b, "netns", ns_b.name])
    if up:
        ns_a.run(["ip", "link", "set", if_a, "up"])
        ns_b.run(["ip", "link", "set", if_b, "up"])
