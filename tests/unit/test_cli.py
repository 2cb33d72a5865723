"""Tests for agent.cli (rmobikectl) against a control server with fake handlers."""

import asyncio
import io
import ipaddress
import json

import pytest

from agent import cli
from agent.control import ChildSaStatus, CommandError, ControlServer, IkeSaStatus, list_sas_result

SITE = IkeSaStatus(
    name="site",
    state="ESTABLISHED",
    initiator=True,
    local_address="198.51.100.10",
    local_port=4500,
    remote_address="198.51.100.20",
    remote_port=4500,
    spi_i=bytes.fromhex("1a2b3c4d5e6f7081"),
    spi_r=bytes.fromhex("0807060504030201"),
    mobike=True,
    switch=True,
    nat_remote=True,
    children=(
        ChildSaStatus(
            name="lan",
            state="INSTALLED",
            spi_in=0xC1234567,
            spi_out=0xC7654321,
            local_ts=("10.1.0.0/24",),
            remote_ts=("10.2.0.0/24", "10.3.0.0/24"),
            bytes_in=1234,
            bytes_out=5678,
            packets_in=12,
            packets_out=34,
        ),
    ),
)
BACKUP = IkeSaStatus(
    name="backup",
    state="CONNECTING",
    initiator=False,
    local_address="2001:db8:a::1",
    local_port=500,
    remote_address="2001:db8:b::1",
    remote_port=500,
    spi_i=bytes.fromhex("0102030405060708"),
    spi_r=0,
    mobike=False,
    switch=False,
)


class FakeDaemon:
    """Handlers that record their arguments and return fixed results."""

    def __init__(self, sas=(SITE, BACKUP)):
        self.calls = []
        self.sas = list(sas)

    def handlers(self):
        return {
            "status": self.status,
            "list-sas": self.list_sas,
            "initiate": self.initiate,
            "terminate": self.record,
            "switch": self.record,
            "reload": self.reload,
            "log-level": self.record,
        }

    async def status(self, args):
        self.calls.append(("status", args))
        return {"version": "0.1.0", "connections": 2, "ike_sas": 2, "log_level": "info"}

    async def list_sas(self, args):
        self.calls.append(("list-sas", args))
        sas = [sa for sa in self.sas if args.get("name") in (None, sa.name)]
        return list_sas_result(sas)

    async def initiate(self, args):
        self.calls.append(("initiate", args))
        if args["name"] != "site":
            raise CommandError(f"unknown connection {args['name']!r}")
        return f"initiating {args['name']}"

    async def record(self, args):
        self.calls.append(("record", args))
        return None

    async def reload(self, args):
        self.calls.append(("reload", args))
        return {"added": ["fresh"], "removed": [], "changed": ["site"], "unchanged": ["backup"]}


def run_cli(tmp_path, argv, daemon=None):
    """Run rmobikectl against a control server in a temporary directory.

    Returns the exit status, stdout and stderr.
    """
    daemon = daemon or FakeDaemon()
    path = tmp_path / "control.sock"
    stdout, stderr = io.StringIO(), io.StringIO()

    async def scenario():
        async with ControlServer(path, daemon.handlers()):
            return await asyncio.to_thread(
                cli.main, [*argv, "--socket", str(path)], stdout=stdout, stderr=stderr
            )

    status = asyncio.run(asyncio.wait_for(scenario(), 20.0))
    return status, stdout.getvalue(), stderr.getvalue()


def test_cli_status(tmp_path):
    status, out, err = run_cli(tmp_path, ["status"])

    assert status == 0
    assert out.splitlines() == ["version: 0.1.0", "connections: 2", "ike_sas: 2", "log_level: info"]
    assert err == ""


def test_cli_list_sas_table(tmp_path):
    status, out, _ = run_cli(tmp_path, ["list-sas"])

    lines = out.splitlines()
    assert status == 0
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "ROLE",
        "LOCAL",
        "REMOTE",
        "SPI_I",
        "SPI_R",
        "MOBIKE",
        "SWITCH",
        "NAT",
    ]
    assert lines[1].split() == [
        "site", "ESTABLISHED", "initiator", "198.51.100.10:4500", "198.51.100.20:4500",
        "1a2b3c4d5e6f7081", "0807060504030201", "yes", "yes", "remote",
    ]  # fmt: skip
    assert lines[2].split() == [
        "backup", "CONNECTING", "responder", "[2001:db8:a::1]:500", "[2001:db8:b::1]:500",
        "0102030405060708", "0000000000000000", "no", "no", "none",
    ]  # fmt: skip
    assert lines[3] == ""
    assert lines[4].split()[:4] == ["IKE_SA", "CHILD", "STATE", "MODE"]
    assert lines[5].split() == [
        "site", "lan", "INSTALLED", "tunnel", "c1234567", "c7654321", "10.1.0.0/24",
        "10.2.0.0/24,10.3.0.0/24", "1234", "5678", "12", "34",
    ]  # fmt: skip


def test_cli_list_sas_columns_aligned(tmp_path):
    _, out, _ = run_cli(tmp_path, ["list-sas"])

    header, site, backup = out.splitlines()[:3]
    for column in ("STATE", "LOCAL", "SPI_I", "NAT"):
        start = header.index(column)
        assert site[start - 1] == " "
        assert backup[start - 1] == " "
        assert site[start] != " "


def test_cli_list_sas_json(tmp_path):
    status, out, _ = run_cli(tmp_path, ["list-sas", "--json"])

    assert status == 0
    assert json.loads(out) == list_sas_result([SITE, BACKUP])


def test_cli_list_sas_by_name(tmp_path):
    daemon = FakeDaemon()

    status, out, _ = run_cli(tmp_path, ["list-sas", "backup"], daemon)

    assert status == 0
    assert daemon.calls == [("list-sas", {"name": "backup"})]
    assert "site" not in out
    assert "no CHILD SAs" in out


def test_cli_list_sas_empty(tmp_path):
    status, out, _ = run_cli(tmp_path, ["list-sas"], FakeDaemon(sas=()))

    assert status == 0
    assert out == "no IKE SAs\n"


def test_cli_initiate(tmp_path):
    daemon = FakeDaemon()

    status, out, _ = run_cli(tmp_path, ["initiate", "site"], daemon)

    assert status == 0
    assert out == "initiating site\n"
    assert daemon.calls == [("initiate", {"name": "site"})]


def test_cli_initiate_unknown_fails(tmp_path):
    status, out, err = run_cli(tmp_path, ["initiate", "nowhere"])

    assert status == cli.EXIT_COMMAND_FAILED
    assert out == ""
    assert err == "rmobikectl: initiate failed: unknown connection 'nowhere'\n"


def test_cli_terminate(tmp_path):
    daemon = FakeDaemon()

    status, out, _ = run_cli(tmp_path, ["terminate", "site"], daemon)

    assert status == 0
    assert out == "terminate: done\n"
    assert daemon.calls == [("record", {"name": "site"})]


def test_cli_switch(tmp_path):
    daemon = FakeDaemon()

    status, _, _ = run_cli(tmp_path, ["switch", "site", "--to", "203.0.113.10"], daemon)

    assert status == 0
    assert daemon.calls == [
        ("record", {"name": "site", "to": ipaddress.ip_address("203.0.113.10")})
    ]


def test_cli_switch_invalid_address(tmp_path, capsys):
    daemon = FakeDaemon()

    status, _, _ = run_cli(tmp_path, ["switch", "site", "--to", "gw-b.example.net"], daemon)

    assert status == cli.EXIT_USAGE
    assert "'gw-b.example.net' is not an IPv4 or IPv6 address" in capsys.readouterr().err
    assert daemon.calls == []


def test_cli_reload(tmp_path):
    status, out, _ = run_cli(tmp_path, ["reload"])

    assert status == 0
    assert out.splitlines() == [
        "added: fresh",
        "removed: none",
        "changed: site",
        "unchanged: backup",
    ]


def test_cli_log_level(tmp_path):
    daemon = FakeDaemon()

    status, _, _ = run_cli(tmp_path, ["log-level", "debug"], daemon)

    assert status == 0
    assert daemon.calls == [("record", {"level": "debug"})]


def test_cli_log_level_invalid(tmp_path, capsys):
    status, _, _ = run_cli(tmp_path, ["log-level", "verbose"])

    assert status == cli.EXIT_USAGE
    assert "invalid choice: 'verbose'" in capsys.readouterr().err


def test_cli_socket_option_before_command(tmp_path):
    path = tmp_path / "control.sock"
    stdout = io.StringIO()

    async def scenario():
        async with ControlServer(path, FakeDaemon().handlers()):
            return await asyncio.to_thread(
                cli.main, ["--socket", str(path), "--json", "status"], stdout=stdout
            )

    status = asyncio.run(asyncio.wait_for(scenario(), 20.0))

    assert status == 0
    assert json.loads(stdout.getvalue())["connections"] == 2


def test_cli_socket_missing(tmp_path):
    stderr = io.StringIO()

    status = cli.main(["status", "--socket", str(tmp_path / "absent.sock")], stderr=stderr)

    assert status == cli.EXIT_UNREACHABLE
    socket_path = tmp_path / "absent.sock"
    expected = f"rmobikectl: control socket {socket_path} not found: is rmobiked running?\n"
    assert stderr.getvalue() == expected


def test_cli_without_command(capsys):
    status = cli.main([])

    assert status == cli.EXIT_USAGE
    assert "a command is required" in capsys.readouterr().err


def test_cli_version(capsys):
    status = cli.main(["--version"])

    assert status == 0
    assert capsys.readouterr().out.startswith("rmobikectl ")


@pytest.mark.parametrize(
    "command", ["status", "list-sas", "initiate", "terminate", "switch", "reload", "log-level"]
)
def test_cli_socket_option_on_every_command(command, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])

    assert "--socket PATH" in capsys.readouterr().out
