"""Service notifications to systemd (sd_notify(3)) for a Type=notify unit.

When systemd starts the daemon it sets $NOTIFY_SOCKET. The daemon sends READY=1 once it
serves, STATUS=... lines for `systemctl status`, RELOADING=1 and READY=1 around a reload,
STOPPING=1 on shutdown, and WATCHDOG=1 pings if the unit sets WatchdogSec=. Without
$NOTIFY_SOCKET every call does nothing.

systemd-python's `systemd.daemon.notify` sends the messages when it is installed.
Otherwise this module writes the datagram to $NOTIFY_SOCKET itself. A name starting with
"@" is in the abstract namespace.
"""

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)


def _systemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return daemon.notify


def _status_line(status: str | None) -> str | None:
    # A STATUS value is one line: sd_notify(3) separates assignments by newlines.
    return None if status is None else "STATUS=" + status.replace("\n", " ")


class Notifier:
    """Sender of sd_notify messages.

    `environ` defaults to os.environ. `use_systemd_python=False` forces the built-in
    sender, so that tests do not depend on what is installed.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        use_systemd_python: bool = True,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.socket_name = self.environ.get("NOTIFY_SOCKET") or None
        self._systemd_notify = _systemd_notify() if use_systemd_python else None
        self._failure_logged = False

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications ($NOTIFY_SOCKET is set)."""
        return self.socket_name is not None

    def ready(self, status: str | None = None) -> bool:
        """Report that start-up (or a reload) has finished."""
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        """Set the one-line status shown by `systemctl status`."""
        return self.notify(_status_line(text))

    def reloading(self) -> bool:
        """Report that a reload started. Send `ready()` when it ends.

        MONOTONIC_USEC is the time of the request on CLOCK_MONOTONIC, which
        Type=notify-reload units require (systemd 253 and later).
        """
        microseconds = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={microseconds}")

    def stopping(self, status: str | None = None) -> bool:
        """Report that shutdown started."""
        return self.notify("STOPPING=1", _status_line(status))

    def watchdog(self) -> bool:
        """Send a watchdog keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Return the watchdog timeout in seconds, or None when the watchdog is off.

        systemd sets $WATCHDOG_USEC from WatchdogSec=, and $WATCHDOG_PID to the process
        that must ping. The value is ignored when $WATCHDOG_PID names another process.
        """
        pid = self.environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None

        try:
            microseconds = int(self.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return microseconds / 1e6 if microseconds > 0 else None

    async def run_watchdog(self, stop: asyncio.Event) -> None:
        """Ping the watchdog at half its timeout until `stop` is set.

        Returns at once when the watchdog is off. Because the pings come from the event
        loop, a blocked loop stops them, and systemd then restarts the daemon.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return

        while not stop.is_set():
            self.watchdog()
            try:
                await asyncio.wait_for(stop.wait(), interval / 2)
            except TimeoutError:
                pass

    def notify(self, *assignments: str | None) -> bool:
        """Send "KEY=value" lines in one datagram. None entries are skipped.

        Returns whether the message was sent. A failure is logged once and not raised,
        because a lost notification must not stop the daemon.
        """
        if self.socket_name is None:
            return False

        message = "\n".join(line for line in assignments if line)
        try:
            if self._systemd_notify is not None:
                return bool(self._systemd_notify(message))
            self._send(message.encode())
        except OSError as error:
            if not self._failure_logged:
                logger.warning("sd_notify to %s failed: %s", self.socket_name, error)
                self._failure_logged = True
            return False
        return True

    def _send(self, data: bytes) -> None:
        assert self.socket_name is not None
        address = self.socket_name
        if address.startswith("@"):
            address = "\0" + address[1:]

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(data)
