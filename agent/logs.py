"""Logging for rmobiked: journald with structured fields under systemd, stderr otherwise.

Code that works on an IKE SA logs through an `SaLogger`, which attaches the SA's name,
SPIs, peer and CHILD SA to each record as the journald fields IKE_SA, IKE_SPI_I,
IKE_SPI_R, PEER and CHILD_SA. The formatter installed by `setup_logging` also writes the
same values in front of the message text, so that `journalctl` and plain stderr show them.

Callers never pass keys, nonces, PSKs or DH secrets to a logger. Nothing here filters them.
"""

import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Loggers whose level `set_level` changes. Third-party libraries (pyroute2, asyncio) stay at
# WARNING so that "debug" shows rmobike's own messages only.
PROJECT_LOGGERS = ("agent", "xfrm")

# Journald field names, in the order they are written into the message prefix.
JOURNAL_FIELDS = ("IKE_SA", "CHILD_SA", "IKE_SPI_I", "IKE_SPI_R", "PEER")

# Syslog priorities (sd-daemon(3), syslog(3)) for the highest logging level that maps to them.
_SYSLOG_PRIORITIES = (
    (logging.DEBUG, 7),
    (logging.INFO, 6),
    (logging.WARNING, 4),
    (logging.ERROR, 3),
    (logging.CRITICAL, 2),
)

_installed_handler: logging.Handler | None = None


def parse_level(name: str) -> int:
    """Return the logging level for a name of LEVELS, or raise ValueError naming the valid ones."""
    try:
        return LEVELS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"invalid log level {name!r}; expected one of {', '.join(LEVELS)}"
        ) from None


def set_level(name: str) -> None:
    """Set the level of rmobike's loggers at run time (the `log-level` control command)."""
    level = parse_level(name)
    for logger_name in PROJECT_LOGGERS:
        logging.getLogger(logger_name).setLevel(level)


def get_level() -> str:
    """Return the name of the current level of rmobike's loggers."""
    level = logging.getLogger(PROJECT_LOGGERS[0]).getEffectiveLevel()
    for name, value in LEVELS.items():
        if value == level:
            return name
    return logging.getLevelName(level).lower()


def syslog_priority(levelno: int) -> int:
    """Map a logging level to a syslog priority (7 debug ... 2 critical)."""
    for threshold, priority in _SYSLOG_PRIORITIES:
        if levelno <= threshold:
            return priority
    return 1


def setup_logging(
    level: str = "info",
    *,
    target: str = "auto",
    stream: TextIO | None = None,
    identifier: str = "rmobiked",
) -> str:
    """Install one handler on the root logger, set the level and return the target used.

    `target` is "journal", "stderr" or "auto". With "auto", records go to the journal when
    stderr is connected to journald (systemd sets $JOURNAL_STREAM) and systemd-python is
    installed. Without systemd-python, stderr lines get a "<N>" priority prefix, which
    journald reads. Calling this again replaces the handler that an earlier call installed.
    """
    global _installed_handler

    stream = stream if stream is not None else sys.stderr
    send = _journal_send() if target in ("auto", "journal") else None
    if target == "journal" and send is None:
        raise RuntimeError("journal logging needs systemd-python (the systemd.journal module)")

    to_journal = send is not None and (target == "journal" or stream_is_journal(stream))
    if to_journal:
        handler: logging.Handler = JournalHandler(send, identifier=identifier)
        handler.setFormatter(SaFormatter("%(message)s"))
        chosen = "journal"
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_stream_formatter(stream))
        chosen = "stderr"

    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    _installed_handler = handler

    set_level(level)
    return chosen


def stream_is_journal(stream: TextIO) -> bool:
    """Return whether `stream` is the journald stream systemd named in $JOURNAL_STREAM."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False

    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def _stream_formatter(stream: TextIO) -> logging.Formatter:
    if stream_is_journal(stream):
        # journald adds the time and the identifier itself.
        return SaFormatter("%(name)s: %(message)s", priority_prefix=True)
    return SaFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def _journal_send() -> Callable[..., Any] | None:
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    return journal.send


class SaFormatter(logging.Formatter):
    """Formatter that writes the record's SA fields in front of the message.

    A record with IKE_SA "site" and PEER "198.51.100.20" gets the prefix
    "[ike_sa=site peer=198.51.100.20] ". Records without SA fields are left unchanged.
    """

    def __init__(self, fmt: str, *, priority_prefix: bool = False) -> None:
        super().__init__(fmt)
        self.priority_prefix = priority_prefix

    def formatMessage(self, record: logging.LogRecord) -> str:
        tags = format_tags(record_fields(record))
        if tags:
            record.message = f"{tags} {record.message}"
        text = super().formatMessage(record)
        if self.priority_prefix:
            text = f"<{syslog_priority(record.levelno)}>{text}"
        return text


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """Return the journald SA fields that a record carries, as strings."""
    fields = {}
    for name in JOURNAL_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = str(value)
    return fields


def format_tags(fields: Mapping[str, str]) -> str:
    """Render SA fields as "[ike_sa=site spi_i=... peer=...]", or "" for no fields."""
    if not fields:
        return ""
    parts = [f"{name.lower()}={fields[name]}" for name in JOURNAL_FIELDS if name in fields]
    return "[" + " ".join(parts) + "]"


class JournalHandler(logging.Handler):
    """Handler that sends each record to journald with its SA fields.

    `send` is `systemd.journal.send` from systemd-python. This handler calls it directly,
    rather than using systemd-python's own JournalHandler, so that the SA fields reach the
    journal whichever version of systemd-python is installed.
    """

    def __init__(self, send: Callable[..., Any], *, identifier: str = "rmobiked") -> None:
        super().__init__()
        self._send = send
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._send(
                message,
                PRIORITY=str(syslog_priority(record.levelno)),
                LOGGER=record.name,
                SYSLOG_IDENTIFIER=self.identifier,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                **record_fields(record),
            )
        except Exception:
            self.handleError(record)


def format_spi(spi: bytes | int | str | None, size: int) -> str | None:
    """Format an SPI of `size` bytes as lowercase hex without "0x" (None stays None)."""
    if spi is None:
        return None
    if isinstance(spi, bytes):
        return spi.hex()
    if isinstance(spi, int):
        return f"{spi:0{size * 2}x}"
    return spi


def format_peer(peer: object) -> str | None:
    """Format a peer as "198.51.100.20", "198.51.100.20:4500" or "[2001:db8::2]:4500".

    `peer` is an address (string or ipaddress object) or an (address, port) tuple.
    """
    if peer is None:
        return None
    if isinstance(peer, tuple):
        address, port = peer[0], peer[1]
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
        return f"{address}:{port}"
    return str(peer)


class SaLogger(logging.LoggerAdapter):
    """Logger adapter that tags every record with an IKE SA and, optionally, a CHILD SA.

    IKE SPIs are 8 bytes (RFC 7296 §3.1). The tags can change during the SA's life: call
    `update` when the responder SPI becomes known or MOBIKE moves the SA to another peer
    address. The caller's own `extra` values are kept, and the SA fields replace any of
    the same name.
    """

    def __init__(
        self,
        logger: logging.Logger,
        ike_sa: str,
        *,
        spi_i: bytes | int | str | None = None,
        spi_r: bytes | int | str | None = None,
        peer: object = None,
        child_sa: str | None = None,
    ) -> None:
        super().__init__(logger, {})
        self.extra: dict[str, str] = {"IKE_SA": ike_sa}
        self.update(spi_i=spi_i, spi_r=spi_r, peer=peer, child_sa=child_sa)

    def update(
        self,
        *,
        spi_i: bytes | int | str | None = None,
        spi_r: bytes | int | str | None = None,
        peer: object = None,
        child_sa: str | None = None,
    ) -> None:
        """Set the given tags. Tags passed as None keep their current value."""
        new_values = {
            "IKE_SPI_I": format_spi(spi_i, 8),
            "IKE_SPI_R": format_spi(spi_r, 8),
            "PEER": format_peer(peer),
            "CHILD_SA": child_sa,
        }
        for name, value in new_values.items():
            if value is not None:
                self.extra[name] = value

    def child(self, name: str) -> "SaLogger":
        """Return a logger with the same IKE SA tags and CHILD_SA set to `name`."""
        child = SaLogger(self.logger, self.extra["IKE_SA"])
        child.extra = {**self.extra, "CHILD_SA": name}
        return child

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **self.extra}
        return msg, kwargs
