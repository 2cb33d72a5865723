"""Tests for agent.logs: SA tags, journald fields, stderr format and run-time levels."""

import io
import logging
import os
import sys
import types

import pytest

from agent import logs
from agent.logs import JournalHandler, SaFormatter, SaLogger


@pytest.fixture(autouse=True)
def restore_logging():
    """Undo setup_logging's changes to the root and project loggers after each test."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_levels = {name: logging.getLogger(name).level for name in ("", *logs.PROJECT_LOGGERS)}
    yield
    if logs._installed_handler is not None:
        root.removeHandler(logs._installed_handler)
        logs._installed_handler = None
    root.handlers[:] = saved_handlers
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def captured():
    logger = logging.getLogger("agent.test_logs")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, handler.records
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_sa_logger_fields(captured):
    logger, records = captured
    log = SaLogger(
        logger,
        "site",
        spi_i=bytes.fromhex("1a2b3c4d5e6f7081"),
        spi_r=0,
        peer=("198.51.100.20", 4500),
    )

    log.info("IKE SA established")

    (record,) = records
    assert record.IKE_SA == "site"
    assert record.IKE_SPI_I == "1a2b3c4d5e6f7081"
    assert record.IKE_SPI_R == "0000000000000000"
    assert record.PEER == "198.51.100.20:4500"
    assert not hasattr(record, "CHILD_SA")
    assert record.getMessage() == "IKE SA established"


def test_sa_logger_update_and_child(captured):
    logger, records = captured
    log = SaLogger(logger, "site", peer="198.51.100.20")

    log.update(peer=("2001:db8:b::1", 500), spi_r="0807060504030201")
    log.child("lan").warning("CHILD SA rekey failed")
    log.info("no child here")

    assert records[0].PEER == "[2001:db8:b::1]:500"
    assert records[0].IKE_SPI_R == "0807060504030201"
    assert records[0].CHILD_SA == "lan"
    assert not hasattr(records[1], "CHILD_SA")


def test_sa_logger_keeps_caller_extra(captured):
    logger, records = captured

    SaLogger(logger, "site").info("moved", extra={"REASON": "link down", "IKE_SA": "other"})

    assert records[0].REASON == "link down"
    assert records[0].IKE_SA == "site"


def test_formatter_prefix():
    formatter = SaFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "agent.x",
        logging.INFO,
        __file__,
        1,
        "switch %s -> %s",
        ("198.51.100.10", "203.0.113.10"),
        None,
    )
    record.IKE_SA = "site"
    record.PEER = "198.51.100.20:4500"
    record.CHILD_SA = "lan"

    text = formatter.format(record)

    tags = "[ike_sa=site child_sa=lan peer=198.51.100.20:4500]"
    assert text == f"INFO {tags} switch 198.51.100.10 -> 203.0.113.10"


def test_formatter_without_sa_fields():
    formatter = SaFormatter("%(message)s", priority_prefix=True)
    record = logging.LogRecord("agent.x", logging.ERROR, __file__, 1, "100%% done", (), None)

    assert formatter.format(record) == "<3>100%% done"


def test_formatter_prefix_with_percent_in_peer():
    formatter = SaFormatter("%(message)s")
    record = logging.LogRecord("agent.x", logging.INFO, __file__, 1, "%d retransmits", (3,), None)
    record.IKE_SA = "site"
    record.PEER = "fe80::1%eth0"

    assert formatter.format(record) == "[ike_sa=site peer=fe80::1%eth0] 3 retransmits"


def test_journal_handler_sends_fields(captured):
    logger, _ = captured
    sent = []
    handler = JournalHandler(
        lambda message, **fields: sent.append((message, fields)), identifier="rmobiked"
    )
    handler.setFormatter(SaFormatter("%(message)s"))
    logger.addHandler(handler)
    try:
        SaLogger(logger, "site", peer="198.51.100.20").child("lan").warning(
            "peer sent %s", "TS_UNACCEPTABLE"
        )
    finally:
        logger.removeHandler(handler)

    ((message, fields),) = sent
    assert message == "[ike_sa=site child_sa=lan peer=198.51.100.20] peer sent TS_UNACCEPTABLE"
    assert fields["PRIORITY"] == "4"
    assert fields["IKE_SA"] == "site"
    assert fields["CHILD_SA"] == "lan"
    assert fields["PEER"] == "198.51.100.20"
    assert fields["SYSLOG_IDENTIFIER"] == "rmobiked"
    assert fields["LOGGER"] == "agent.test_logs"


def test_setup_stderr_format_and_level():
    stream = io.StringIO()

    target = logs.setup_logging("warning", target="stderr", stream=stream)
    logging.getLogger("agent.x").info("hidden")
    SaLogger(logging.getLogger("agent.x"), "site").warning("shown")

    assert target == "stderr"
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" WARNING agent.x: [ike_sa=site] shown")


def test_set_level_at_run_time():
    stream = io.StringIO()
    logs.setup_logging("info", target="stderr", stream=stream)

    logging.getLogger("agent.x").debug("before")
    logs.set_level("debug")
    logging.getLogger("xfrm.y").debug("after")

    assert logs.get_level() == "debug"
    assert "before" not in stream.getvalue()
    assert "xfrm.y: after" in stream.getvalue()


def test_third_party_debug_stays_quiet():
    stream = io.StringIO()
    logs.setup_logging("debug", target="stderr", stream=stream)

    logging.getLogger("pyroute2.test").info("noise")
    logging.getLogger("pyroute2.test").warning("trouble")

    assert "noise" not in stream.getvalue()
    assert "trouble" in stream.getvalue()


def test_setup_replaces_handler():
    first, second = io.StringIO(), io.StringIO()

    logs.setup_logging("info", target="stderr", stream=first)
    logs.setup_logging("info", target="stderr", stream=second)
    logging.getLogger("agent.x").info("once")

    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def journal_stream(tmp_path, monkeypatch):
    """A file that $JOURNAL_STREAM names, as systemd does for a service's stderr."""
    stream = open(tmp_path / "journal-stream", "w")
    status = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    return stream


def test_setup_auto_uses_journal(tmp_path, monkeypatch):
    sent = []
    journal = types.ModuleType("systemd.journal")
    journal.send = lambda message, **fields: sent.append((message, fields))
    package = types.ModuleType("systemd")
    package.journal = journal
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)

    with journal_stream(tmp_path, monkeypatch) as stream:
        target = logs.setup_logging("info", stream=stream)
        SaLogger(logging.getLogger("agent.x"), "site").info("up")

    assert target == "journal"
    assert sent[0][0] == "[ike_sa=site] up"
    assert sent[0][1]["IKE_SA"] == "site"
    assert sent[0][1]["PRIORITY"] == "6"


def test_setup_auto_journal_stream_without_systemd_python(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "systemd", None)

    with journal_stream(tmp_path, monkeypatch) as stream:
        target = logs.setup_logging("info", stream=stream)
        logging.getLogger("agent.x").error("failed")
    text = (tmp_path / "journal-stream").read_text()

    assert target == "stderr"
    assert text == "<3>agent.x: failed\n"


def test_setup_auto_terminal_uses_stderr(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)

    assert logs.setup_logging("info", stream=io.StringIO()) == "stderr"


def test_setup_journal_requires_systemd_python(monkeypatch):
    monkeypatch.setitem(sys.modules, "systemd", None)

    with pytest.raises(RuntimeError) as raised:
        logs.setup_logging("info", target="journal")

    assert "systemd-python" in str(raised.value)


def test_parse_level_invalid():
    with pytest.raises(ValueError) as raised:
        logs.parse_level("verbose")

    assert (
        str(raised.value)
        == "invalid log level 'verbose'; expected one of debug, info, warning, error"
    )
