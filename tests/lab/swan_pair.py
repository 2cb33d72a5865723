"""strongSwan on both gateways: the reference tunnel that the roaming scenarios compare against.

CharonPair implements the TunnelPair protocol of tests/lab/scenarios.py with one charon per
gateway. Both get connection "site" with child "lan" as RmobikePair configures rmobiked: MOBIKE on
(strongSwan's default, stated anyway), every uplink address of both gateways in local_addrs and
remote_addrs, and the lab's proposals and PSK. Each gateway's local_addrs end with its own uplink
prefixes, so that a renumbered address is still a local address of the connection. Everything else keeps strongSwan's documented
defaults, no dead peer detection (dpd_delay 0) included, because those defaults are what rmobike
is compared against. charon's kernel-netlink interface also waits 100 ms before it acts on an
address or route change (ROAM_DELAY, a constant in strongSwan's source, not a setting).

Example::

    pair = CharonPair()
    pair.start(topology, initiator="gw1", responder="gw2")
    spis = pair.child_spis()                 # {"gw1": {"c1a2b3c4", ...}, "gw2": {...}}
    local, remote = pair.active_path()       # the initiator's view of the IKE SA's path
    pair.stop()
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from pathlib import Path

from tests.lab.gateways import PSK, identity
from tests.lab.interop import GCM, Suite, charon_child, kernel_spis
from tests.lab.strongswan import Charon
from tests.lab.topology import Topology

log = logging.getLogger(__name__)

UP_TIMEOUT = 90.0  # seconds for the CHILD_SA to be installed on both ends under QEMU TCG
POLL_INTERVAL = 0.3  # seconds between two looks at list-sas and the kernel

# charon's standard log (tests.lab.strongswan) stamps whole seconds without a date. The pair adds
# a second file log with the date and milliseconds, so that its lines can be placed on the same
# time axis as the probe traffic. strongswan.conf merges this section into the filelog section
# that tests.lab.strongswan writes.
TIMED_LOG_NAME = "charon-timed.log"
_TIMED_LOG_OPTIONS = """\
  filelog {{
    timed {{
      path = {path}
      time_format = %Y-%m-%d %H:%M:%S
      time_add_ms = yes
      ike_name = yes
      flush_line = yes
      default = 1
      ike = 2
      knl = 2
      mgr = 1
      net = 1
    }}
  }}
"""

# "2026-12-05 01:04:04.123 09[IKE] <site|1> message"
_TIMED_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) (.*)$")


_SWANCTL_CONF = """\
connections {{
  site {{
    version = 2
    local_addrs = {local_addrs}
    remote_addrs = {remote_addrs}
    proposals = {ike}
    mobike = yes
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      lan {{
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = {esp}
        mode = tunnel
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-site {{
    id = {remote_id}
    secret = "{psk}"
  }}
}}
"""


def swanctl_conf(topology: Topology, local: str, remote: str, suite: Suite = GCM) -> str:
    """Return charon's swanctl.conf on gateway `local` for the tunnel to gateway `remote`."""
    me, peer = topology.gateway(local), topology.gateway(remote)
    local_addrs = [str(uplink.address.ip) for uplink in me.uplinks]
    local_addrs += [str(uplink.address.network) for uplink in me.uplinks]
    remote_addrs = [str(uplink.public_address) for uplink in peer.uplinks]
    return _SWANCTL_CONF.format(
        local_addrs=", ".join(local_addrs), remote_addrs=", ".join(remote_addrs),
        ike=suite.ike, esp=suite.esp, local_id=identity(me), remote_id=identity(peer),
        local_ts=me.lan_network, remote_ts=peer.lan_network, psk=PSK)


class CharonPairError(RuntimeError):
    """The strongSwan tunnel did not come up."""


def _timed_log_path(charon: Charon) -> Path:
    return charon.workdir / TIMED_LOG_NAME


def parse_timed_log(text: str, gateway: str) -> list[tuple[float, str, str]]:
    """Return the lines of a timed charon log as (epoch seconds, gateway, message).

    charon stamps local time, the same clock as time.time() in the lab. A line without a stamp
    (the rest of a message that spans several lines) gets the stamp of the line before it.
    """
    lines: list[tuple[float, str, str]] = []
    stamp: float | None = None
    for line in text.splitlines():
        match = _TIMED_LINE.match(line)
        if match is not None:
            seconds = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
            stamp = seconds + int(match[2]) / 1000
            lines.append((stamp, gateway, match[3]))
        elif stamp is not None and line.strip():
            lines.append((stamp, gateway, line.strip()))
    return lines


class CharonPair:
    """charon on the initiator and on the responder gateway, tunnelling LAN to LAN."""

    label = "strongSwan"

    def __init__(self, suite: Suite = GCM, charon_options: str = "",
                 up_timeout: float = UP_TIMEOUT) -> None:
        self.suite = suite
        self.charon_options = charon_options  # text inside strongswan.conf's charon { } section
        self.up_timeout = up_timeout
        self.topology: Topology | None = None
        self.initiator = ""
        self.responder = ""
        self.charons: dict[str, Charon] = {}

    # -- TunnelPair ----------------------------------------------------------------------

    def start(self, topology: Topology, initiator: str, responder: str) -> None:
        """Start charon on both gateways, initiate from `initiator` and wait for the CHILD_SA."""
        self.topology, self.initiator, self.responder = topology, initiator, responder
        try:
            for local, remote in ((responder, initiator), (initiator, responder)):
                self._start_charon(local, remote)
            self.charons[initiator].initiate("lan", ike="site", timeout=self.up_timeout)
            self._wait_until_up()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        log.info("strongSwan tunnel up: %s -> %s over %s", initiator, responder, self.active_path())

    def child_spis(self) -> dict[str, set[str]]:
        """Return each gateway's ESP SPIs from its kernel, as 8 lowercase hex digits."""
        return {gateway: kernel_spis(self._namespace(gateway)) for gateway in self.charons}

    def active_path(self) -> tuple[str, str]:
        """Return (initiator address, responder address) of the IKE SA from the initiator's list-sas.

        Behind a NAT the initiator's address is its private one.
        """
        ike_sa = self._ike_sa(self.initiator)
        if ike_sa is None:
            raise CharonPairError(f"charon on {self.initiator} has no IKE SA \"site\"")
        return ike_sa["local-host"], ike_sa["remote-host"]

    def switch(self, gateway: str, address: str) -> bool:
        """Return False: strongSwan has no command that moves an established IKE SA."""
        log.info("strongSwan cannot move the IKE SA of %s to %s on request", gateway, address)
        return False

    def log_lines(self) -> list[tuple[float, str, str]]:
        """Return both charons' timed log lines as (epoch seconds, gateway, line), by time."""
        lines: list[tuple[float, str, str]] = []
        for gateway, charon in self.charons.items():
            with contextlib.suppress(FileNotFoundError):
                lines += parse_timed_log(_timed_log_path(charon).read_text(errors="replace"),
                                         gateway)
        return sorted(lines, key=lambda line: line[0])

    def stop(self) -> None:
        """Stop both charons, save their logs and clear both kernels' XFRM state; idempotent."""
        charons, self.charons = self.charons, {}
        for gateway, charon in charons.items():
            charon.stop()
            self._save_log(gateway, charon)
        if self.topology is not None and not self.topology.closed:
            # charon removes its SAs when it stops, but one killed after a timeout leaves them.
            for gateway in charons:
                namespace = self._namespace(gateway)
                namespace.run(["ip", "xfrm", "state", "flush"])
                namespace.run(["ip", "xfrm", "policy", "flush"])

    # -- the steps ---------------------------------------------------------------------------

    def _namespace(self, gateway: str):
        assert self.topology is not None
        return self.topology.gateway(gateway).namespace

    def _start_charon(self, local: str, remote: str) -> None:
        charon = Charon(self._namespace(local), "swanpair")
        charon.charon_options = self.charon_options + _TIMED_LOG_OPTIONS.format(
            path=_timed_log_path(charon))
        self.charons[local] = charon
        charon.start(swanctl_conf(self.topology, local, remote, self.suite))

    def _ike_sa(self, gateway: str) -> dict | None:
        sas = [ike_sa for name, ike_sa in self.charons[gateway].list_ike_sas() if name == "site"]
        return sas[-1] if sas else None

    def _is_up(self) -> bool:
        for gateway in (self.initiator, self.responder):
            ike_sa = self._ike_sa(gateway)
            if ike_sa is None or ike_sa.get("state") != "ESTABLISHED" or charon_child(ike_sa) is None:
                return False
            if len(kernel_spis(self._namespace(gateway))) < 2:
                return False
        return True

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.up_timeout
        while not self._is_up():
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- charon on {gateway} ---\n" +
                                  "\n".join(charon.log_text().splitlines()[-30:])
                                  for gateway, charon in self.charons.items())
                raise CharonPairError(f"the strongSwan tunnel {self.initiator} -> {self.responder} "
                                      f"was not up within {self.up_timeout:.0f} s\n{tails}")
            time.sleep(POLL_INTERVAL)

    def _save_log(self, gateway: str, charon: Charon) -> None:
        out = os.environ.get("RMOBIKE_LAB_OUT")
        if not out:
            return
        directory = Path(out) / "swan_pair"
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copy(_timed_log_path(charon), directory / f"charon-{gateway}.log")
