"""rmobiked: the gateway daemon. Runs in the foreground around one asyncio loop.

    rmobiked --config /etc/rmobike/rmobike.toml     # run
    rmobiked --check --config FILE                  # validate the file and exit
    rmobiked --version

The loop carries the IKE sockets (agent.sockets), the kernel's XFRM events, the netlink
watcher, the control socket and one timer; the `Manager` (agent.manager) decides. Signals:
SIGHUP reloads the configuration. SIGTERM and SIGINT delete every IKE SA, informing the peers,
wait at most SHUTDOWN_TIMEOUT for their responses, remove the kernel state and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from agent.cli import version
from agent.config import DEFAULT_CONFIG_PATH, Config, ConfigError, check_config, load_config
from agent.control import CommandError, ControlServer, ControlSocketError, list_sas_result
from agent.kernel import Kernel, KernelError
from agent.logs import get_level, set_level, setup_logging
from agent.manager import Manager
from agent.netwatch import NetWatcher
from agent.paths import KernelPaths
from agent.sdnotify import Notifier
from agent.sockets import IkeSockets, SocketError
from agent.uplinks import RouteResolver
from xfrm import XfrmClient, XfrmError

logger = logging.getLogger(__name__)

# Seconds to wait, at shutdown, for the peers' responses to the IKE SA deletes. The kernel
# state is removed afterwards in any case.
SHUTDOWN_TIMEOUT = 3.0
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# [agent] keys that a reload applies; the others need a restart.
RELOADABLE_AGENT_KEYS = frozenset({"log_level", "keep_alive"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmobiked", description="IKEv2 and MOBIKE daemon for multihomed IPsec gateways (runs in the foreground).")
    parser.add_argument("--config", metavar="PATH", default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--check", action="store_true", help="validate the configuration, print every problem and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run rmobiked and return its exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        options = build_parser().parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)

    if options.check:
        return run_check(options.config, stdout, stderr)
    try:
        config = load_config(options.config)
    except ConfigError as error:
        for line in error.errors:
            print(line, file=stderr)
        print(f"rmobiked: {len(error.errors)} configuration errors, not starting", file=stderr)
        return EXIT_FAILURE

    setup_logging(config.agent.log_level)
    return asyncio.run(Daemon(Path(options.config), config).run())


def run_check(path: str, stdout: TextIO, stderr: TextIO) -> int:
    """Validate the configuration file (rmobiked --check)."""
    errors = check_config(path)
    for line in errors:
        print(line, file=stderr)
    if errors:
        print(f"rmobiked: {path}: {len(errors)} error{'s' if len(errors) != 1 else ''}", file=stderr)
        return EXIT_FAILURE
    print(f"{path}: configuration valid", file=stdout)
    return EXIT_OK


class Daemon:
    """The running daemon: owns the loop's sockets, timer and signal handlers."""

    def __init__(self, config_path: Path, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = Notifier()
        self.started_at = time.monotonic()
        self.manager: Manager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._closers: list = []  # called in reverse order at exit
        self._control: ControlServer | None = None
        self._xfrm_events = None
        self._last_status = ""

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except (SocketError, ControlSocketError, XfrmError, KernelError, OSError, TimeoutError) as error:
            logger.error("start-up failed: %s", error)
            await self._close_all()
            return EXIT_FAILURE

        self._install_signal_handlers()
        watchdog = asyncio.create_task(self.notifier.run_watchdog(self._stop))
        logger.info("rmobiked %s started, pid %d, %d connections", version(), os.getpid(), len(self.config.connections))
        self.notifier.ready(self._status_line())
        await self._stop.wait()

        await self._shut_down()
        await watchdog
        await self._close_all()
        logger.info("rmobiked stopped")
        return EXIT_OK

    async def _open(self) -> None:
        """Open everything in dependency order; each part registers how to close it."""
        agent = self.config.agent
        api = XfrmClient()
        self._closers.append(api.close)
        kernel = Kernel(api, state_dir=agent.state_dir)

        sockets = IkeSockets(agent.port, agent.port_nat_t)
        sockets.open()
        self._closers.append(sockets.close)

        watcher = NetWatcher(self._on_net_events)
        await watcher.start()
        self._closers.append(watcher.stop)
        resolver = RouteResolver()
        self._closers.append(resolver.close)

        self.manager = Manager(self.config, kernel=kernel, transport=sockets,
                               paths=KernelPaths(lambda: watcher.state, resolver), clock=self._loop.time)
        self._xfrm_events = kernel.open_events()
        self._closers.append(self._xfrm_events.close)
        self._loop.add_reader(self._xfrm_events.fileno(), self._on_xfrm_readable)
        self._closers.append(lambda: self._loop.remove_reader(self._xfrm_events.fileno()))

        self._control = ControlServer(agent.control_socket, self._handlers())
        await self._control.start()

        self._run(self.manager.start)
        sockets.start(self._loop, self._on_datagram)

    async def _close_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._control is not None:
            await self._control.close()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:
                logger.exception("closing %r failed", closer)
        self._closers.clear()

    async def _shut_down(self) -> None:
        logger.info("shutting down: deleting %d IKE SAs", self.manager.counts().ike_sas)
        self.notifier.stopping("deleting IKE SAs")
        self._run(self.manager.shutdown)
        try:
            await asyncio.wait_for(self._idle.wait(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            logger.warning("%d IKE SAs still open after %g s; removing their kernel state anyway",
                           self.manager.counts().ike_sas, SHUTDOWN_TIMEOUT)
        self.manager.close()

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._on_stop_signal, signum)
        self._loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        self._closers.append(self._remove_signal_handlers)

    def _remove_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._loop.remove_signal_handler(signum)

    def _on_stop_signal(self, signum: int) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        self._stop.set()

    def _on_reload_signal(self) -> None:
        logger.info("received SIGHUP, reloading %s", self.config_path)
        try:
            self.reload({})
        except CommandError as error:
            logger.error("%s", error)

    # --- inputs --------------------------------------------------------------------------------

    def _run(self, function, *args) -> Any:
        """Call the manager, then re-arm the timer and update the status: after every input."""
        try:
            return function(*args)
        finally:
            self._after_manager_call()

    def _after_manager_call(self) -> None:
        manager = self.manager
        if manager is None:
            return
        if manager.stopping and manager.idle:
            self._idle.set()
        self._arm_timer()
        status = self._status_line()
        if status != self._last_status:
            self._last_status = status
            self.notifier.status(status)

    def _arm_timer(self) -> None:
        deadline = self.manager.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._guarded(self.manager.handle_timer)

    def _on_datagram(self, data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self._guarded(self.manager.receive_datagram, data, local, remote)

    def _on_net_events(self, events) -> None:
        if self.manager is not None:
            self._guarded(self.manager.on_net_events, events)

    def _on_xfrm_readable(self) -> None:
        try:
            events = self._xfrm_events.read()
        except OSError as error:
            logger.error("reading XFRM events failed: %s", error)
            return
        if events:
            self._guarded(self.manager.on_xfrm_events, events)

    def _guarded(self, function, *args) -> None:
        try:
            self._run(function, *args)
        except Exception:
            logger.exception("%s failed", getattr(function, "__name__", function))

    # --- control commands ----------------------------------------------------------------------

    def _handlers(self) -> dict:
        return {
            "status": self.status,
            "list-sas": lambda args: list_sas_result(self.manager.list_sas(args.get("name"))),
            "initiate": lambda args: self._run(self.manager.initiate, args["name"]),
            "terminate": lambda args: self._run(self.manager.terminate, args["name"]),
            "switch": lambda args: self._run(self.manager.switch, args["name"], args["to"]),
            "reload": self.reload,
            "log-level": self.log_level,
        }

    def status(self, args: dict) -> dict:
        counts = self.manager.counts()
        return {
            "version": version(),
            "pid": os.getpid(),
            "config": str(self.config_path),
            "uptime": round(time.monotonic() - self.started_at, 1),
            "log_level": get_level(),
            "connections": counts.connections,
            "ike_sas": counts.ike_sas,
            "child_sas": counts.child_sas,
        }

    def reload(self, args: dict) -> dict:
        """Reload the configuration file; an invalid one leaves the running one in place."""
        self.notifier.reloading()
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as error:
                raise CommandError(f"reload failed, the running configuration stays: {len(error.errors)} error{'s' if len(error.errors) != 1 else ''}\n"
                                   + "\n".join(error.errors)) from None
            diff = self._run(self.manager.reload, new)
        finally:
            self.notifier.ready(self._status_line())
        self._apply_agent_changes(new, diff.agent_changed)
        self.config = new
        return diff.to_json()

    def _apply_agent_changes(self, new: Config, changed: Sequence[str]) -> None:
        if "log_level" in changed:
            set_level(new.agent.log_level)
        for key in changed:
            if key not in RELOADABLE_AGENT_KEYS:
                logger.warning("[agent] %s changed; it takes effect when rmobiked restarts", key)

    def log_level(self, args: dict) -> str:
        set_level(args["level"])
        logger.info("log level set to %s", args["level"])
        return f"log level {args['level']}"

    def _status_line(self) -> str:
        if self.manager is None:
            return "starting"
        counts = self.manager.counts()
        return f"{counts.ike_sas} IKE SAs, {counts.child_sas} CHILD SAs, {counts.connections} connections"


if __name__ == "__main__":
    sys.exit(main())
