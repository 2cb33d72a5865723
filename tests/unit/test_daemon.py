"""rmobiked's command line, and the control handlers of a Daemon on a fake kernel."""

from __future__ import annotations

import io

import pytest

from agent import daemon as daemon_module
from agent.config import load_config
from agent.control import CommandError, list_sas_result
from agent.daemon import Daemon, main
from agent.kernel import Kernel
from agent.manager import Manager
from agent.paths import FixedPaths
from xfrm import FakeXfrm

VALID = """
[connections.site]
local_addrs = ["192.0.2.10"]
remote_addrs = ["198.51.100.20"]
[connections.site.local]
auth = "psk"
id = "gw-a"
[connections.site.remote]
auth = "psk"
id = "gw-b"
[connections.site.children.lan]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
[secrets.site]
id = "gw-b"
secret = "0x00112233445566778899aabbccddeeff"
"""


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "rmobike.toml"
    path.write_text(VALID)
    path.chmod(0o600)
    return path


def run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(argv, stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue()


def test_check_valid(config_path):
    status, out, err = run(["--check", "--config", str(config_path)])

    assert status == 0
    assert "configuration valid" in out
    assert err == ""


def test_check_invalid(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace('"10.1.0.0/24"', '"10.1.0.1/24"').replace("dpd", "x"))

    status, out, err = run(["--check", "--config", str(path)])

    assert status == 1
    assert "children.lan.local_ts[0]: '10.1.0.1/24' has host bits set" in err
    assert out == ""


def test_check_missing_file(tmp_path):
    status, _, err = run(["--check", "--config", str(tmp_path / "none.toml")])

    assert status == 1
    assert "file not found" in err


def test_version(capsys):
    status = main(["--version"])

    assert status == 0
    assert capsys.readouterr().out.startswith("rmobiked ")


def test_invalid_config_does_not_start(tmp_path, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text("[connections.site]\nmobike = 3\n")
    monkeypatch.setattr(daemon_module, "Daemon", None)  # starting would fail loudly

    status, _, err = run(["--config", str(path)])

    assert status == 1
    assert "not starting" in err


@pytest.fixture
def daemon(config_path):
    config = load_config(config_path)
    instance = Daemon(config_path, config)
    instance.manager = Manager(config, kernel=Kernel(FakeXfrm()), transport=_NoNetwork(), paths=FixedPaths(),
                               clock=lambda: 0.0)
    instance._arm_timer = lambda: None  # no event loop in these tests
    return instance


class _NoNetwork:
    def send(self, data, local, remote) -> bool:
        return True


def test_status_fields(daemon):
    status = daemon.status({})

    assert status["connections"] == 1
    assert status["ike_sas"] == 0
    assert status["child_sas"] == 0
    assert status["config"].endswith("rmobike.toml")
    assert {"version", "pid", "uptime", "log_level"} <= set(status)


def test_reload_invalid_keeps_config(daemon, config_path):
    config_path.write_text("[connections.site]\nnonsense = 1\n")

    with pytest.raises(CommandError, match="running configuration stays") as raised:
        daemon.reload({})

    assert "nonsense: unknown key" in str(raised.value)
    assert list(daemon.manager.config.connections) == ["site"]


def test_reload_reports_diff(daemon, config_path):
    config_path.write_text(VALID.replace("[connections.site]", "[connections.other]\nlocal_addrs = []\n"
                                         "[connections.other.local]\nauth = \"psk\"\nid = \"gw-a\"\n"
                                         "[connections.other.remote]\nauth = \"psk\"\nid = \"gw-b\"\n"
                                         "[connections.site]", 1))

    result = daemon.reload({})

    assert result["added"] == ["other"]
    assert result["unchanged"] == ["site"]
    assert daemon.manager.counts().connections == 2


def test_log_level_handler(daemon):
    assert daemon.log_level({"level": "debug"}) == "log level debug"
    assert daemon.status({})["log_level"] == "debug"
    daemon.log_level({"level": "info"})


def test_handlers_cover_commands(daemon):
    from agent.control import COMMANDS

    handlers = daemon._handlers()

    assert set(handlers) == set(COMMANDS)
    assert handlers["list-sas"]({}) == list_sas_result([])
    with pytest.raises(CommandError, match="unknown connection"):
        handlers["initiate"]({"name": "nowhere"})
