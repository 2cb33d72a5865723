"""rmobiked on the lab gateways: configuration files, start, control and stop.

Each daemon runs as ``.venv/bin/rmobiked --config FILE`` inside its gateway's namespace, with
its files (configuration, secret, control socket, state directory, log) in
/var/tmp/rmobiked-<namespace>, which is writable inside the lab VM. At the end of a test the
log is copied to $RMOBIKE_LAB_OUT when that is set, so a failure can be read on the host.

Example::

    gw1, gw2 = start_pair(topology)                  # gw1 initiates, gw2 responds
    gw1.wait_for_children()
    sas = gw1.list_sas()                             # the list-sas JSON
    gw1.stop(); gw2.stop()
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent.control import CommandFailed, ControlClient, ControlClientError
from tests.lab.netns import Namespace
from tests.lab.topology import Gateway, Topology

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[2]
RMOBIKED = CHECKOUT / ".venv" / "bin" / "rmobiked"
RMOBIKECTL = CHECKOUT / ".venv" / "bin" / "rmobikectl"
# Seconds until the control socket responds. Under QEMU without KVM, Python needs tens of seconds
# to import rmobiked's modules.
START_TIMEOUT = 180.0
UP_TIMEOUT = 90.0  # seconds until the CHILD_SAs are installed
CONTROL_TIMEOUT = 30.0  # seconds for one control request
STOP_TIMEOUT = 15.0  # rmobiked waits 3 s for the peer's responses, then cleans up
PSK = "lab-secret-of-at-least-twenty-octets"


class DaemonError(RuntimeError):
    """rmobiked failed to start, to respond or to stop; the message includes the end of its log."""


@dataclass(frozen=True)
class ChildSpec:
    """One [connections.site.children.NAME] table."""

    name: str = "lan"
    start_action: str = "none"
    mode: str = "tunnel"


def identity(gateway: Gateway) -> str:
    return f"{gateway.name}.example.net"


def site_config(topology: Topology, local: str, remote: str, workdir: Path, *,
                children: tuple[ChildSpec, ...] = (ChildSpec(),), log_level: str = "debug",
                extra: str = "") -> str:
    """Return the TOML of a gateway that tunnels its LAN to the other gateway's LAN.

    The connection lists every uplink address of both gateways (uplink 0 first), as an
    operator would for MOBIKE; the daemon picks the path.
    """
    me, peer = topology.gateway(local), topology.gateway(remote)
    local_addrs = [str(uplink.address.ip) for uplink in me.uplinks]
    remote_addrs = [str(uplink.public_address) for uplink in peer.uplinks]
    lines = [
        "[agent]",
        f'control_socket = "{workdir / "control.sock"}"',
        f'state_dir = "{workdir / "state"}"',
        f'log_level = "{log_level}"',
        "",
        "[connections.site]",
        f"local_addrs = {json.dumps(local_addrs)}",
        f"remote_addrs = {json.dumps(remote_addrs)}",
        'proposals = ["aes256gcm16-prfsha384-x25519"]',
        extra,
        "",
        "[connections.site.local]",
        'auth = "psk"',
        f'id = "{identity(me)}"',
        "",
        "[connections.site.remote]",
        'auth = "psk"',
        f'id = "{identity(peer)}"',
    ]
    for child in children:
        lines += [
            "",
            f"[connections.site.children.{child.name}]",
            f'local_ts = ["{me.lan_network}"]',
            f'remote_ts = ["{peer.lan_network}"]',
            'esp_proposals = ["aes256gcm16"]',
            f'start_action = "{child.start_action}"',
            f'mode = "{child.mode}"',
        ]
    lines += [
        "",
        "[secrets.site]",
        f'id = "{identity(peer)}"',
        f'secret_file = "{workdir / "site.psk"}"',
    ]
    return "\n".join(lines) + "\n"


class Rmobiked:
    """One rmobiked process in a lab namespace."""

    def __init__(self, namespace: Namespace, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self.workdir = Path("/var/tmp") / f"rmobiked-{namespace.name}"
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "rmobike.toml"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "rmobiked.log"

    def write_config(self, text: str) -> None:
        """Write the configuration and the PSK file, both readable by root only."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        psk = self.workdir / "site.psk"
        psk.write_text(PSK + "\n")
        psk.chmod(0o600)
        self.config_path.write_text(text)
        self.config_path.chmod(0o600)

    def start(self, config_text: str, timeout: float = START_TIMEOUT) -> None:
        """Start rmobiked with `config_text` and return once its control socket responds."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.write_config(config_text)
        with open(self.log_path, "wb") as log_file:
            self.process = self.namespace.popen([str(RMOBIKED), "--config", str(self.config_path)],
                                                stdout=log_file, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while time.monotonic() < started + timeout:
            if self.process.poll() is not None:
                raise DaemonError(f"rmobiked on {self.name} exited with status {self.process.returncode}:\n"
                                  f"{self.log_tail()}")
            if self.control_socket.exists() and self._responds():
                log.info("rmobiked started on %s in %.1f s", self.name, time.monotonic() - started)
                return
            time.sleep(0.2)
        raise DaemonError(f"rmobiked on {self.name} did not respond within {timeout:.0f} s:\n{self.log_tail()}")

    def _responds(self) -> bool:
        try:
            self.call("status")
        except (ControlClientError, CommandFailed):
            return False
        return True

    def call(self, command: str, **args) -> object:
        """Send one control request in this process (cheaper than starting rmobikectl)."""
        return ControlClient(self.control_socket, timeout=CONTROL_TIMEOUT).call(command, args)

    def ctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run rmobikectl against this daemon; raises DaemonError on failure when `check` is set."""
        argv = [str(RMOBIKECTL), "--socket", str(self.control_socket), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise DaemonError(f"rmobikectl {' '.join(args)} on {self.name} failed with status "
                              f"{result.returncode}: {result.stdout}{result.stderr}")
        return result

    def list_sas(self) -> dict:
        """Return the list-sas result."""
        return self.call("list-sas")

    def list_sas_cli(self) -> dict:
        """Return `rmobikectl list-sas --json` as a dict."""
        return json.loads(self.ctl("list-sas", "--json").stdout)

    def wait_for_children(self, count: int = 1, timeout: float = UP_TIMEOUT) -> dict:
        """Wait until an established IKE SA has `count` installed CHILD_SAs; return list-sas."""
        deadline = time.monotonic() + timeout
        sas: dict = {}
        while time.monotonic() < deadline:
            sas = self.list_sas()
            for ike_sa in sas["ike_sas"]:
                installed = [c for c in ike_sa["children"] if c["state"] == "INSTALLED"]
                if ike_sa["state"] == "ESTABLISHED" and len(installed) >= count:
                    return sas
            time.sleep(0.5)
        raise DaemonError(f"{self.name}: no IKE SA with {count} CHILD_SAs within {timeout:.0f} s; "
                          f"list-sas: {sas}\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Send SIGTERM and wait; return the exit status. A second call returns the same status."""
        if self.process is None:
            return self.returncode if self.returncode is not None else 0
        process, self.process = self.process, None
        if process.poll() is None:
            # `ip netns exec` has exec'ed into the daemon, so the pid is rmobiked's.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
                self.returncode = -signal.SIGKILL
                self.save_log()
                return self.returncode
        self.returncode = process.returncode
        self.save_log()
        log.info("rmobiked on %s stopped with status %d", self.name, self.returncode)
        return self.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def save_log(self) -> None:
        """Copy the log to $RMOBIKE_LAB_OUT (the host's lab-out/), if set."""
        out = os.environ.get("RMOBIKE_LAB_OUT")
        if not out or not self.log_path.exists():
            return
        try:
            shutil.copy(self.log_path, Path(out) / f"rmobiked-{self.name}.log")
        except OSError as error:
            log.warning("copying %s to %s failed: %s", self.log_path, out, error)


def start_daemon(topology: Topology, local: str, remote: str, *,
                 children: tuple[ChildSpec, ...] = (ChildSpec(),), extra: str = "") -> Rmobiked:
    """Start rmobiked on gateway `local`, configured for a tunnel to `remote`.

    The topology stops the daemon when it closes, if the test did not.
    """
    gateway = topology.gateway(local)
    daemon = Rmobiked(gateway.namespace, local)
    config = site_config(topology, local, remote, daemon.workdir, children=children, extra=extra)
    topology.add_cleanup(daemon.stop)
    daemon.start(config)
    return daemon


def start_pair(topology: Topology, *, initiator_action: str = "start",
               mode: str = "tunnel") -> tuple[Rmobiked, Rmobiked]:
    """Start the responder on gw2, then the initiator on gw1; return (gw1, gw2)."""
    responder = start_daemon(topology, "gw2", "gw1", children=(ChildSpec(mode=mode),))
    initiator = start_daemon(topology, "gw1", "gw2", children=(ChildSpec(start_action=initiator_action, mode=mode),))
    return initiator, responder


def kernel_state(namespace: Namespace) -> tuple[str, str]:
    """Return `ip xfrm state` and `ip xfrm policy` of a namespace."""
    states = namespace.run(["ip", "xfrm", "state"]).stdout
    policies = namespace.run(["ip", "xfrm", "policy"]).stdout
    return states, policies
