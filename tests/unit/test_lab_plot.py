"""The lab's PNG timeline writer: a valid PNG with the expected size and drawn pixels."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tests.lab.plot import (
    FAILURE,
    GAP,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    ROW_HEIGHT,
    TICK,
    WHITE,
    Canvas,
    longest_gap_after_failure,
    timeline_png,
    write_timeline_png,
)

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking every CRC."""
    assert data[:8] == SIGNATURE
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def _decode(data: bytes) -> tuple[int, int, list[bytes]]:
    """Return (width, height, RGB rows) of a PNG that uses filter type 0 only."""
    chunks = _chunks(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1])
    assert (depth, color_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + width * 3
    assert len(raw) == stride * height
    rows = []
    for y in range(height):
        row = raw[y * stride:(y + 1) * stride]
        assert row[0] == 0
        rows.append(row[1:])
    return width, height, rows


def _colors(rows: list[bytes]) -> set[tuple[int, int, int]]:
    return {tuple(row[x:x + 3]) for row in rows for x in range(0, len(row), 3)}


ROWS = [
    ("responder_link_down", {"gw1->gw2": [-10.0, -5.0, 0.0, 250.0, 255.0, 1900.0],
                             "gw2->gw1": [-8.0, -3.0, 260.0, 1900.0]}, 260.0),
    ("silent_blackhole", {"gw1->gw2": [-10.0, -5.0], "gw2->gw1": [-9.0]}, None),
]


def test_timeline_header_and_size() -> None:
    width, height, rows = _decode(timeline_png(ROWS, width=900))

    assert width == 900
    assert height == MARGIN_TOP + 4 * ROW_HEIGHT + MARGIN_BOTTOM
    assert len(rows) == height


def test_timeline_draws_ticks_gap_and_failure() -> None:
    _, _, rows = _decode(timeline_png(ROWS))

    colors = _colors(rows)
    assert TICK in colors
    assert GAP in colors
    assert FAILURE in colors
    assert WHITE in colors


def test_timeline_without_arrivals() -> None:
    width, height, rows = _decode(timeline_png([("admin_switch", {}, None)], width=700))

    assert (width, height) == (700, MARGIN_TOP + ROW_HEIGHT + MARGIN_BOTTOM)
    assert FAILURE in _colors(rows)


def test_timeline_needs_rows() -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        timeline_png([])


def test_write_creates_directory(tmp_path: Path) -> None:
    path = write_timeline_png(tmp_path / "out" / "t.png", ROWS)

    assert path.read_bytes().startswith(SIGNATURE)


def test_canvas_text_and_clipping() -> None:
    canvas = Canvas(40, 20)
    end = canvas.text(0, 0, "A1")
    canvas.fill(-5, -5, 100, 1, (1, 2, 3))

    assert end == 16
    assert canvas.pixel(2, 0) != WHITE  # the top of "A"
    assert canvas.pixel(39, 0) == (1, 2, 3)
    assert canvas.pixel(39, 19) == WHITE


def test_canvas_rejects_empty_size() -> None:
    with pytest.raises(ValueError, match="invalid image size"):
        Canvas(0, 10)


def test_longest_gap_starts_before_failure() -> None:
    assert longest_gap_after_failure([-20.0, -5.0, 300.0, 305.0]) == (-5.0, 300.0)
    assert longest_gap_after_failure([-5.0]) is None
