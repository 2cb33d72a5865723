"""Roaming scenarios: one uplink failure each, measured from LAN-to-LAN probe traffic.

A scenario builds its lab and starts a tunnel pair (rmobiked or strongSwan on both gateways).
It streams probe traffic in both directions while a capture watches every uplink for
cleartext, makes one failure happen, and reports what the traffic and the daemons' logs show::

    outcome = run_scenario(SCENARIOS[0], RmobikePair())
    print(outcome.outage_ms, outcome.spis_unchanged, outcome.cleartext_packets)
    for at_ms, text in outcome.timeline:
        print(f"{at_ms:+8.1f} ms  {text}")

The outage is the longest stretch without a probe arrival in either direction, from the last
arrival before the failure until traffic flows again. It is never taken from the time a command
took, because one ``ip`` command takes 100-400 ms under QEMU TCG.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tests.lab.capture import CleartextCapture
from tests.lab.gateways import Rmobiked, identity
from tests.lab.netns import Namespace
from tests.lab.topology import STANDARD, GatewaySpec, LabSpec, Topology, Uplink, build
from tests.lab.traffic import Probe, ProbeReport, lan_probe

log = logging.getLogger(__name__)

LEAD = 1.5  # seconds of probe traffic before the failure
RESUME_MARGIN_MS = 500.0  # a direction has recovered if it still receives this close to the end
PROBE_SLACK = 60.0  # seconds the probe senders may run past the window; stop() ends them first
TIMELINE_AFTER = 0.5  # seconds of log after the end of the outage that the timeline shows
TIMELINE_MAX_LINES = 60
TIMELINE_TEXT_MAX = 120  # characters of one timeline entry
# A shorter gap is scheduling jitter under QEMU TCG, and the timeline does not point it out.
NOTICEABLE_GAP_MS = 50.0

NAT_INITIATOR = LabSpec(gateways=(GatewaySpec(nat=True, uplinks=1), GatewaySpec()))
"""gw1 with one uplink behind a NAT box (nftables masquerade), gw2 with two public uplinks."""


# -- tunnel pairs ---------------------------------------------------------------------------


class TunnelPair(Protocol):
    """A tunnel between two lab gateways, run by one implementation on both ends."""

    label: str  # "rmobike" or "strongSwan"

    def start(self, topology: Topology, initiator: str, responder: str) -> None:
        """Start both ends, initiate from `initiator` and return once the CHILD_SAs are up."""

    def child_spis(self) -> dict[str, set[str]]:
        """Return each gateway's ESP SPIs from its kernel, as 8 lowercase hex digits."""

    def active_path(self) -> tuple[str, str]:
        """Return (initiator address, responder address) of the IKE SA in use."""

    def switch(self, gateway: str, address: str) -> bool:
        """Ask `gateway` to move the IKE SA to its local `address`; False when unsupported."""

    def log_lines(self) -> list[tuple[float, str, str]]:
        """Return both daemons' log lines as (epoch seconds, gateway, line), by time."""

    def stop(self) -> None:
        """Stop both ends; safe to call twice."""


_ESP_SPI = re.compile(r"proto esp spi 0x([0-9a-f]+)")


def kernel_esp_spis(namespace: Namespace) -> set[str]:
    """Return the SPIs of the ESP states in `namespace`'s kernel, as 8 lowercase hex digits."""
    states = namespace.run(["ip", "xfrm", "state"]).stdout
    return {f"{int(spi, 16):08x}" for spi in _ESP_SPI.findall(states)}


@dataclass(frozen=True)
class Child:
    """One CHILD_SA of the rmobiked configuration.

    The selectors are formats with ``{g}``, the gateway's number: "10.{g}.0.0/24" is the
    IPv4 LAN of the gateway whose side the selector describes.
    """

    name: str = "lan"
    selectors: tuple[str, ...] = ("10.{g}.0.0/24",)


LAN4 = (Child(),)
LAN6 = (Child("lan6", ("2001:db8:{g}::/64",)),)

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (.*)$")


def parse_daemon_log(text: str, gateway: str) -> list[tuple[float, str, str]]:
    """Return rmobiked's log lines as (epoch seconds, gateway, "LEVEL logger: text").

    rmobiked writes local wall-clock time to the millisecond; lines without a time stamp (a
    traceback's continuation lines) are skipped.
    """
    lines = []
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        stamp = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S")
        lines.append((stamp.timestamp() + int(match[2]) / 1000, gateway, match[3]))
    return lines


class RmobikePair:
    """rmobiked on both gateways, with MOBIKE and SWITCH_TO_IP_ADDRESS, logging at debug level.

    Each side lists every uplink address of both gateways (uplink 0 first), so MOBIKE has
    alternatives, followed by each of its own uplinks' prefixes, so that a renumbered address
    on the same uplink is still a usable local address.
    """

    label = "rmobike"

    def __init__(self, *, ipv6: bool = False, children: tuple[Child, ...] | None = None,
                 extra: str = "") -> None:
        self.ipv6 = ipv6
        if children is None:
            children = LAN6 if ipv6 else LAN4
        self.children = children
        self.extra = extra
        self.topology: Topology | None = None
        self.initiator = ""
        self.responder = ""
        self.daemons: dict[str, Rmobiked] = {}

    # -- TunnelPair ----------------------------------------------------------------------

    def start(self, topology: Topology, initiator: str, responder: str) -> None:
        """Start the responder, then the initiator; wait until both have all CHILD_SAs."""
        self.topology, self.initiator, self.responder = topology, initiator, responder
        for local, remote, action in ((responder, initiator, "none"),
                                      (initiator, responder, "start")):
            daemon = Rmobiked(topology.gateway(local).namespace, local)
            topology.add_cleanup(daemon.stop)
            self.daemons[local] = daemon
            daemon.start(self.config(local, remote, daemon, action))
        for daemon in self.daemons.values():
            daemon.wait_for_children(count=len(self.children))
        log.info("rmobike tunnel up: %s -> %s over %s", initiator, responder, self.active_path())

    def child_spis(self) -> dict[str, set[str]]:
        assert self.topology is not None
        return {name: kernel_esp_spis(self.topology.gateway(name).namespace)
                for name in self.daemons}

    def active_path(self) -> tuple[str, str]:
        ike_sas = self.daemons[self.initiator].list_sas()["ike_sas"]
        established = [sa for sa in ike_sas if sa["state"] == "ESTABLISHED"] or ike_sas
        if not established:
            raise RuntimeError(f"rmobiked on {self.initiator} has no IKE SA")
        return established[0]["local_address"], established[0]["remote_address"]

    def switch(self, gateway: str, address: str) -> bool:
        # The control request that `rmobikectl switch` sends, without the seconds that
        # starting rmobikectl's Python takes under TCG.
        self.daemons[gateway].call("switch", name="site", to=address)
        return True

    def log_lines(self) -> list[tuple[float, str, str]]:
        lines = []
        for name, daemon in self.daemons.items():
            lines += parse_daemon_log(daemon.log_text(), name)
        return sorted(lines, key=lambda line: line[0])

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()

    # -- configuration -------------------------------------------------------------------

    def config(self, local: str, remote: str, daemon: Rmobiked, start_action: str) -> str:
        """Return the TOML for the daemon on `local`, tunnelling to `remote`."""
        assert self.topology is not None
        me, peer = self.topology.gateway(local), self.topology.gateway(remote)
        local_addrs = [_own_address(uplink, self.ipv6) for uplink in me.uplinks]
        local_addrs += [_own_prefix(uplink, self.ipv6) for uplink in me.uplinks]
        remote_addrs = [_public_address(uplink, self.ipv6) for uplink in peer.uplinks]
        workdir = daemon.workdir
        lines = [
            "[agent]",
            f'control_socket = "{workdir / "control.sock"}"',
            f'state_dir = "{workdir / "state"}"',
            'log_level = "debug"',
            "",
            "[connections.site]",
            f"local_addrs = {json.dumps(local_addrs)}",
            f"remote_addrs = {json.dumps(remote_addrs)}",
            'proposals = ["aes256gcm16-prfsha384-x25519"]',
            "mobike = true",
            "switch = true",
            self.extra,
            "",
            "[connections.site.local]",
            'auth = "psk"',
            f'id = "{identity(me)}"',
            "",
            "[connections.site.remote]",
            'auth = "psk"',
            f'id = "{identity(peer)}"',
        ]
        for child in self.children:
            lines += [
                "",
                f"[connections.site.children.{child.name}]",
                f"local_ts = {json.dumps([s.format(g=me.number) for s in child.selectors])}",
                f"remote_ts = {json.dumps([s.format(g=peer.number) for s in child.selectors])}",
                'esp_proposals = ["aes256gcm16"]',
                f'start_action = "{start_action}"',
            ]
        lines += [
            "",
            "[secrets.site]",
            f'id = "{identity(peer)}"',
            f'secret_file = "{workdir / "site.psk"}"',
        ]
        return "\n".join(lines) + "\n"


def _own_address(uplink: Uplink, ipv6: bool) -> str:
    if ipv6:
        if uplink.address6 is None:
            raise ValueError(f"{uplink.name} has no IPv6 address in this lab")
        return str(uplink.address6.ip)
    return str(uplink.address.ip)


def _own_prefix(uplink: Uplink, ipv6: bool) -> str:
    interface = uplink.address6 if ipv6 else uplink.address
    assert interface is not None
    return str(interface.network)


def _public_address(uplink: Uplink, ipv6: bool) -> str:
    return _own_address(uplink, True) if ipv6 else str(uplink.public_address)


# -- the scenarios ----------------------------------------------------------------------------


class NotSupported(Exception):
    """The implementation under test cannot perform the scenario's action at all."""


@dataclass(frozen=True)
class Scenario:
    """One failure to make happen on an established tunnel."""

    name: str
    description: str
    lab: LabSpec
    action: Callable[[Topology, TunnelPair, Scenario], str]  # returns what it did
    initiator: str = "gw1"
    responder: str = "gw2"
    demo: bool = True  # part of `make demo`
    ipv6: bool = False  # IKE and the probe traffic over IPv6

    def address(self, uplink: Uplink) -> str:
        """Return the address of `uplink` in this scenario's address family."""
        return _own_address(uplink, self.ipv6)


def active_uplink(topology: Topology, pair: TunnelPair, gateway: str, scenario: Scenario) -> Uplink:
    """Return the uplink of `gateway` that the IKE SA uses now."""
    initiator_address, responder_address = pair.active_path()
    address = initiator_address if gateway == scenario.initiator else responder_address
    for uplink in topology.gateway(gateway).uplinks:
        known = {str(uplink.address.ip), str(uplink.public_address)}
        if uplink.address6 is not None:
            known.add(str(uplink.address6.ip))
        if address in known:
            return uplink
    raise RuntimeError(f"the IKE SA's address {address} is on no uplink of {gateway}")


def fail_responder_link(topology: Topology, pair: TunnelPair, scenario: Scenario) -> str:
    uplink = active_uplink(topology, pair, scenario.responder, scenario)
    topology.link_down(uplink)
    return f"ip link set {uplink.interface} down on {uplink.name} (responder)"


def fail_initiator_link(topology: Topology, pair: TunnelPair, scenario: Scenario) -> str:
    uplink = active_uplink(topology, pair, scenario.initiator, scenario)
    topology.link_down(uplink)
    return f"ip link set {uplink.interface} down on {uplink.name} (initiator)"


def blackhole_path(topology: Topology, pair: TunnelPair, scenario: Scenario) -> str:
    initiator_uplink = active_uplink(topology, pair, scenario.initiator, scenario)
    responder_uplink = active_uplink(topology, pair, scenario.responder, scenario)
    hole = topology.blackhole(initiator_uplink, responder_uplink)
    return f"router drops {hole.description} silently (no link or route event)"


def switch_responder(topology: Topology, pair: TunnelPair, scenario: Scenario) -> str:
    current = active_uplink(topology, pair, scenario.responder, scenario)
    target = next(uplink for uplink in topology.gateway(scenario.responder).uplinks
                  if uplink is not current)
    address = scenario.address(target)
    if not pair.switch(scenario.responder, address):
        raise NotSupported(f"{pair.label} cannot move an established IKE SA on request")
    return f"switch site --to {address} on {scenario.responder} (responder), as rmobikectl sends it"


def renumber_responder(topology: Topology, pair: TunnelPair, scenario: Scenario) -> str:
    """Replace the responder's active address by the next one in its prefix, as DHCP would."""
    uplink = active_uplink(topology, pair, scenario.responder, scenario)
    old = uplink.address6 if scenario.ipv6 else uplink.address
    assert old is not None
    new = f"{old.ip + 1}/{old.network.prefixlen}"
    family = "-6" if scenario.ipv6 else "-4"
    # Removing the uplink's only address also removes its routes, so they are added again
    # with the new address, together with its source-routing rule.
    topology.remove_address(uplink, str(old))
    topology.add_address(uplink, new)
    uplink.namespace.batch(uplink.route_commands())
    uplink.namespace.run(["ip", family, "rule", "add", "from", str(old.ip + 1),
                          "table", str(uplink.table)])
    return f"{old} replaced by {new} on {uplink.name} (responder)"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("responder_link_down", "the responder's active uplink goes down",
             STANDARD, fail_responder_link),
    Scenario("initiator_link_down", "the initiator's active uplink goes down",
             STANDARD, fail_initiator_link),
    Scenario("silent_blackhole", "the router drops the active path silently",
             STANDARD, blackhole_path),
    Scenario("admin_switch", "the operator moves the SA to the responder's other uplink",
             STANDARD, switch_responder),
    Scenario("nat_responder_link_down",
             "the responder's active uplink goes down, the initiator is behind a NAT",
             NAT_INITIATOR, fail_responder_link),
    Scenario("responder_renumber",
             "the responder's active address is replaced by another on the same uplink",
             STANDARD, renumber_responder, demo=False),
)

DEMO_SCENARIOS = tuple(scenario for scenario in SCENARIOS if scenario.demo)


def scenario(name: str) -> Scenario:
    """Return the scenario called `name`."""
    for candidate in SCENARIOS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no scenario {name!r}: {', '.join(s.name for s in SCENARIOS)}")


# -- the outcome --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario run showed. Times in ms are relative to `event_at`."""

    scenario: str
    implementation: str
    outage_ms: float | None  # maximum gap in probe arrivals around the failure, None if not back
    recovered: bool
    spis_unchanged: bool
    cleartext_packets: int
    event_at: float  # epoch seconds when the failure command was issued
    timeline: list[tuple[float, str]] = field(default_factory=list)
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # direction -> ms
    action: str = ""  # what the failure command did, or why it was not supported
    window_ms: float = 0.0  # how long after the failure the probes ran
    spis_before: dict[str, set[str]] = field(default_factory=dict)
    spis_after: dict[str, set[str]] = field(default_factory=dict)
    path_before: tuple[str, str] = ("", "")
    path_after: tuple[str, str] = ("", "")
    states_after: dict[str, str] = field(default_factory=dict)  # gateway -> `ip xfrm state`

    def summary(self) -> str:
        """Return one line for logs and assertion messages."""
        outage = "never recovered" if self.outage_ms is None else f"outage {self.outage_ms:.0f} ms"
        return (f"{self.scenario} ({self.implementation}): {outage}, SPIs "
                f"{'unchanged' if self.spis_unchanged else 'changed'}, "
                f"{self.cleartext_packets} cleartext packets, path {self.path_before[0]} -> "
                f"{self.path_before[1]} became {self.path_after[0]} -> {self.path_after[1]}")


def direction_gap(arrivals: list[float], end_ms: float) -> tuple[float, float] | None:
    """Return (start, end) in ms of the longest gap in one direction's arrivals around 0.

    The gap search starts at the last arrival before the failure (0 ms). None means that the
    direction did not recover: nothing arrived after the failure, or arrivals stopped more
    than RESUME_MARGIN_MS before `end_ms`, when the probe was stopped.
    """
    before = [at for at in arrivals if at < 0]
    after = sorted(at for at in arrivals if 0 <= at <= end_ms)
    if not after or after[-1] < end_ms - RESUME_MARGIN_MS:
        return None
    points = [before[-1] if before else 0.0, *after]
    return max(itertools.pairwise(points), key=lambda pair: pair[1] - pair[0],
               default=(points[0], points[0]))


def outage(arrivals: dict[str, list[float]], end_ms: float) -> float | None:
    """Return the longest gap over all directions, or None when any direction did not recover."""
    gaps = [direction_gap(times, end_ms) for times in arrivals.values()]
    if not gaps or None in gaps:
        return None
    return max(end - start for start, end in gaps)  # type: ignore[misc]


_NETLINK_FIELDS = re.compile(r"\b(name|address|dst|table)=(?:IPv[46](?:Address|Network)\('|')?"
                             r"([^,')(]+)(?=[,')])")


def netlink_summary(kind: str, fields: str) -> str:
    """Return a netlink event's type with its interface, address, prefix and table, if any."""
    values = dict(_NETLINK_FIELDS.findall(fields))
    parts = [values[key] for key in ("name", "address", "dst") if key in values]
    if "table" in values:
        parts.append(f"table {values['table']}")
    return " ".join([f"netlink {kind}", *parts])


# The timeline's entries, as (pattern over "logger: message" with the SA tags removed, format).
# Named groups of the pattern fill the format; "netlink" formats the network event's fields.
TIMELINE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), text) for pattern, text in (
        (r"^agent\.manager: network: (?P<kind>\w+)\((?P<fields>.*)\)$", "netlink"),
        (r"^agent\.manager: (?P<m>ESP out, nothing from the peer.+)$", "{m}"),
        (r"^agent\.roaming: (?P<m>.+)$", "{m}"),
        (r"^agent\.manager: (?P<m>path \S+ -> \S+ .+moving to .+)$", "{m}"),
        (r"^agent\.ike\.mobike: (?P<m>(no response on path|probing|path .* answered|moving from|"
         r"CHILD_SAs move from|update to|peer rejected|announcing).*)$", "{m}"),
        (r"^agent\.ike\.switch: (?P<m>.+)$", "{m}"),
        (r"^agent\.ike\.redirect: (?P<m>.+)$", "{m}"),
        (r"^agent\.ike\.sa: (?P<dir>sending|received) (?P<m>(INFORMATIONAL|CREATE_CHILD_SA) "
         r"(request|response) \d+ .*)$", "{dir} {m}"),
        (r"^agent\.ike\.sa: (?P<m>sending .* again on the new path)$", "{m}"),
        (r"^agent\.manager: (?P<m>(asking the peer to move|IKE SA moved from|switch to|update to|"
         r"peer redirected|IKE SA failed|IKE SA deleted).*)$", "{m}"),
        (r"^agent\.kernel: (?P<m>.*\b(moved|inbound|prepared|encapsulation)\b.*)$", "kernel: {m}"),
        (r"^xfrm\.move: (?P<m>moved .*)$", "kernel: {m}"),
        # charon (strongSwan): the lines that show a roam
        (r"^(?P<m>.*(old path is not available|requesting address change|"
         r"sending address list update|checking path|updating IKE_SA|"
         r"IKE_SA .* established|giving up|destroying IKE_SA|"
         r"sending packet:|received packet:).*)$", "{m}"),
    )
)

_SA_TAGS = (
    re.compile(r"^\[[^\]]*\] "),  # [ike_sa=site child_sa=lan ...]
    re.compile(r"^\S+\[\d+\] [0-9a-f]+_i [0-9a-f]+_r \S+: "),  # site[1] spi_i spi_r peer:
)
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def timeline_text(line: str) -> str | None:
    """Return the timeline entry for one log line, or None when the line is not a step."""
    text = _LEVEL.sub("", line, count=1)
    logger, separator, message = text.partition(": ")
    if separator:
        for tags in _SA_TAGS:
            message = tags.sub("", message, count=1)
        text = f"{logger}: {message}"
    for pattern, form in TIMELINE_PATTERNS:
        match = pattern.match(text)
        if match is None:
            continue
        if form == "netlink":
            entry = netlink_summary(match["kind"], match["fields"])
            if "fe80:" in entry:
                return None  # link-local addresses and routes never carry the tunnel
        else:
            entry = form.format(**match.groupdict(default=""))
        return entry if len(entry) <= TIMELINE_TEXT_MAX else entry[:TIMELINE_TEXT_MAX - 1] + "…"
    return None


def build_timeline(log_lines: list[tuple[float, str, str]], event_at: float, until: float,
                   action: str, arrivals: dict[str, list[float]],
                   end_ms: float) -> list[tuple[float, str]]:
    """Merge the failure, the daemons' steps and the first probe after each gap, by time."""
    entries: list[tuple[float, str]] = [(0.0, f"failure: {action}")]
    seen: set[tuple[int, str]] = set()
    for at, gateway, line in log_lines:
        if not event_at - 0.05 <= at <= until:
            continue
        text = timeline_text(line)
        if text is None or (round(at * 1000), text) in seen:
            continue
        seen.add((round(at * 1000), text))
        entries.append(((at - event_at) * 1000, f"{gateway}: {text}"))

    for direction, times in arrivals.items():
        gap = direction_gap(times, end_ms)
        if gap is not None and gap[1] - gap[0] >= NOTICEABLE_GAP_MS:
            entries.append((gap[1], f"first probe {direction} after a {gap[1] - gap[0]:.0f} ms gap"))
        elif gap is not None:
            entries.append((end_ms, f"probe {direction}: no gap over {NOTICEABLE_GAP_MS:.0f} ms"))
        else:
            entries.append((end_ms, f"probe {direction}: traffic did not come back"))

    entries.sort(key=lambda entry: entry[0])
    if len(entries) > TIMELINE_MAX_LINES:
        dropped = len(entries) - TIMELINE_MAX_LINES
        entries = entries[:TIMELINE_MAX_LINES] + [(entries[-1][0], f"({dropped} more entries)")]
    return entries


# -- running a scenario ------------------------------------------------------------------------


ProbeFactory = Callable[[Topology, Scenario, float], dict[str, Probe]]


def lan_probes(topology: Topology, scenario: Scenario, duration: float) -> dict[str, Probe]:
    """Return probes between the two LAN hosts in both directions, in the scenario's family."""
    first, second = scenario.initiator, scenario.responder
    return {
        f"{first}->{second}": lan_probe(topology, first, second, duration, ipv6=scenario.ipv6),
        f"{second}->{first}": lan_probe(topology, second, first, duration, ipv6=scenario.ipv6),
    }


def run_scenario(scenario: Scenario, pair: TunnelPair, *, window: float = 10.0, rate: float = 200,
                 probes: ProbeFactory | None = None) -> Outcome:
    """Build the scenario's lab, start `pair`, make the failure happen and measure it.

    `window` is how many seconds after the failure the probes keep running; traffic that is
    not back by then counts as not recovered. `probes` replaces the two LAN probes.
    """
    with build(scenario.lab) as topology:
        pair.start(topology, scenario.initiator, scenario.responder)
        try:
            return _measure(topology, scenario, pair, window, rate, probes or lan_probes)
        finally:
            pair.stop()


def _measure(topology: Topology, scenario: Scenario, pair: TunnelPair, window: float, rate: float,
             probes_for: ProbeFactory) -> Outcome:
    spis_before = pair.child_spis()
    path_before = pair.active_path()
    capture = CleartextCapture.on_uplinks(topology)
    capture.start()

    # Both probes run until stopped; the slack covers their start-up under TCG.
    probes = probes_for(topology, scenario, LEAD + window + PROBE_SLACK)
    for probe in probes.values():
        probe.rate = rate
        probe.start()
    time.sleep(LEAD)

    event_at = time.time()
    try:
        action = scenario.action(topology, pair, scenario)
    except NotSupported as error:
        action = str(error)
        supported = False
    else:
        supported = True
    log.info("%s: %s", scenario.name, action)
    if supported:
        time.sleep(max(0.0, event_at + window - time.time()))
    end_ms = (time.time() - event_at) * 1000

    reports = {direction: probe.stop() for direction, probe in probes.items()}
    leaks = capture.stop()
    # The probes stop one after the other, so arrivals after the first stop are cut off.
    arrivals = {direction: [at for at in _arrivals(report, event_at) if at <= end_ms]
                for direction, report in reports.items()}
    log_lines = pair.log_lines()
    spis_after = pair.child_spis()
    path_after = _path_or_nothing(pair)
    states_after = {gateway.name: gateway.namespace.run(["ip", "xfrm", "state"]).stdout
                    for gateway in topology.gateways}

    outage_ms = outage(arrivals, end_ms) if supported else None
    gap_ends = [gap[1] for times in arrivals.values()
                if (gap := direction_gap(times, end_ms)) is not None]
    recovered_at = event_at + (max(gap_ends) if outage_ms is not None else end_ms) / 1000
    timeline = build_timeline(log_lines, event_at, recovered_at + TIMELINE_AFTER, action,
                              arrivals, end_ms)
    outcome = Outcome(
        scenario=scenario.name, implementation=pair.label, outage_ms=outage_ms,
        recovered=outage_ms is not None,
        spis_unchanged=bool(spis_before) and all(spis_before.values()) and spis_after == spis_before,
        cleartext_packets=len(leaks) + capture.kernel_drops, event_at=event_at,
        timeline=timeline, arrivals=arrivals, action=action, window_ms=end_ms,
        spis_before=spis_before, spis_after=spis_after, path_before=path_before,
        path_after=path_after, states_after=states_after)
    log.info("%s", outcome.summary())
    return outcome


def _arrivals(report: ProbeReport, event_at: float) -> list[float]:
    """Return a probe's arrival times in ms relative to `event_at`."""
    offset_ms = report.first_send_ns / 1e6 - event_at * 1000
    return [round(at + offset_ms, 3) for at in report.receive_times_ms]


def _path_or_nothing(pair: TunnelPair) -> tuple[str, str]:
    with contextlib.suppress(Exception):
        return pair.active_path()
    return ("", "")
