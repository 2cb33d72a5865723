"""Tests for agent.duration, the duration syntax of rmobike.toml."""

import pytest

from agent.duration import DurationError, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 10s ", 10.0),
        ("0.5s", 0.5),
    ],
)
def test_duration_valid(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        True,
        -1,
        -0.5,
        float("inf"),
        float("nan"),
        "",
        "s",
        "10 sec",
        "10x",
        "-5s",
        "1h-30m",
        "ten",
        None,
        [10],
    ],
)
def test_duration_invalid(value):
    with pytest.raises(DurationError) as raised:
        parse_duration(value)

    assert repr(value) in str(raised.value)
