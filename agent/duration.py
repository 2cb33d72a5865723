"""Durations as written in rmobike.toml: "10s", "5m", "1h", "1h30m", "500ms" or plain seconds."""

import math
import re

# Seconds per unit. The suffixes are those of swanctl.conf (s, m, h, d) plus ms.
UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

EXPECTED = 'seconds as a number, or a string such as "10s", "5m", "1h", "1h30m" or "500ms"'


class DurationError(ValueError):
    """A value that is not a duration. The message names the value."""


def parse_duration(value: object) -> float:
    """Parse a duration and return it in seconds.

    Accepts a non-negative int or float (seconds), a string of digits (seconds), or a string
    of one or more number-unit parts with the units of UNITS. Raises DurationError otherwise.
    """
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}: a boolean is not a duration")

    if isinstance(value, (int, float)):
        return _checked_seconds(float(value), value)

    if not isinstance(value, str):
        raise DurationError(f"invalid duration {value!r}: expected a number or a string")

    text = value.strip()
    if _NUMBER.fullmatch(text):
        return _checked_seconds(float(text), value)
    if not _WHOLE.fullmatch(text):
        raise DurationError(f"invalid duration {value!r}")

    seconds = sum(float(number) * UNITS[unit] for number, unit in _PART.findall(text))
    return _checked_seconds(seconds, value)


def _checked_seconds(seconds: float, original: object) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"invalid duration {original!r}: must be a finite number >= 0")
    return seconds
