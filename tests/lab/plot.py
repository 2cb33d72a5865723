"""A PNG timeline of probe arrivals around a failure, drawn with zlib and struct only.

One row per scenario and direction: a tick for every probe datagram that arrived, the longest
gap after the failure shaded, its length written at the right, and a red line at 0 ms, when
the failure command was issued::

    write_timeline_png(Path("lab-out/demo-timeline.png"),
                       [("responder_link_down", {"gw1->gw2": [-4.9, 0.1, 310.2]}, 310.1)])

Text uses a built-in 3x5 pixel font (upper case, digits and a few signs), drawn twice as large.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Color = tuple[int, int, int]
Row = tuple[str, dict[str, list[float]], float | None]  # (scenario, direction -> ms, outage)

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GRID: Color = (225, 225, 225)
TICK: Color = (30, 70, 160)
GAP: Color = (255, 215, 205)
FAILURE: Color = (210, 30, 30)
SEPARATOR: Color = (150, 150, 150)

SCALE = 2  # font pixels per glyph pixel
GLYPH_WIDTH, GLYPH_HEIGHT = 3, 5
ADVANCE = (GLYPH_WIDTH + 1) * SCALE  # pixels from one character to the next

ROW_HEIGHT = 22
TICK_HEIGHT = 14
MARGIN_LEFT = 300
MARGIN_RIGHT = 140
MARGIN_TOP = 36
MARGIN_BOTTOM = 40
BEFORE_MS = 500.0  # shown before the failure
AFTER_RECOVERY_MS = 500.0  # shown after the last outage ends
GRID_STEPS_MS = (50, 100, 250, 500, 1000, 2000, 5000, 10000)
MAX_GRID_LINES = 12

# Each glyph is five rows of three pixels, "#" set.
_FONT_ROWS = {
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": ".## #.. #.. #.. .##",
    "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#", "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": ".#. #.# #.# #.# .#.",
    "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.", "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###",
    "3": "##. ..# .#. ..# ##.", "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ##.",
    " ": "... ... ... ... ...", "-": "... ... ### ... ...", "+": "... .#. ### .#. ...",
    ">": "#.. .#. ..# .#. #..", "<": "..# .#. #.. .#. ..#", "_": "... ... ... ... ###",
    ".": "... ... ... ... .#.", ":": "... .#. ... .#. ...", "/": "..# ..# .#. #.. #..",
    "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.", ",": "... ... ... .#. #..",
    "=": "... ### ... ### ...", "?": "##. ..# .#. ... .#.",
}
FONT: dict[str, tuple[str, ...]] = {char: tuple(rows.split()) for char, rows in _FONT_ROWS.items()}


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"invalid image size {width}x{height}")
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def fill(self, left: int, top: int, right: int, bottom: int, color: Color) -> None:
        """Paint the rectangle [left, right) x [top, bottom), clipped to the image."""
        left, right = max(0, left), min(self.width, right)
        top, bottom = max(0, top), min(self.height, bottom)
        if left >= right:
            return
        run = bytes(color) * (right - left)
        for y in range(top, bottom):
            start = (y * self.width + left) * 3
            self.pixels[start:start + len(run)] = run

    def pixel(self, x: int, y: int) -> Color:
        start = (y * self.width + x) * 3
        red, green, blue = self.pixels[start:start + 3]
        return red, green, blue

    def text(self, x: int, y: int, text: str, color: Color = BLACK) -> int:
        """Draw `text` with its top left corner at (x, y); return the x after its last character."""
        for char in text.upper():
            rows = FONT.get(char, FONT["?"])
            for row, bits in enumerate(rows):
                for column, bit in enumerate(bits):
                    if bit == "#":
                        left, top = x + column * SCALE, y + row * SCALE
                        self.fill(left, top, left + SCALE, top + SCALE, color)
            x += ADVANCE
        return x

    def png(self) -> bytes:
        """Return the image as a PNG file: 8-bit RGB, no interlace, filter type 0 on every row."""
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride])
                       for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_width(text: str) -> int:
    return len(text) * ADVANCE


def longest_gap_after_failure(times: Sequence[float]) -> tuple[float, float] | None:
    """Return (start, end) of the longest gap from the last arrival before 0 ms onward."""
    ordered = sorted(times)
    before = [at for at in ordered if at < 0]
    points = ([before[-1]] if before else []) + [at for at in ordered if at >= 0]
    if len(points) < 2:
        return None
    return max(zip(points, points[1:]), key=lambda gap: gap[1] - gap[0])


def _x_range(rows: Sequence[Row]) -> tuple[float, float]:
    """Return the ms range to show: from before the failure to a little after the last recovery."""
    last_arrival = max((max(times) for _, arrivals, _ in rows for times in arrivals.values()
                        if times), default=1000.0)
    recovered = [gap[1] for _, arrivals, _ in rows for times in arrivals.values()
                 if (gap := longest_gap_after_failure(times)) is not None]
    right = max(recovered, default=last_arrival) + AFTER_RECOVERY_MS
    if any(outage is None for _, _, outage in rows):
        right = last_arrival  # a scenario that never recovered: show the whole window
    return -BEFORE_MS, max(1000.0, min(right, last_arrival))


def _grid_step(span_ms: float) -> int:
    return next((step for step in GRID_STEPS_MS if span_ms / step <= MAX_GRID_LINES),
                GRID_STEPS_MS[-1])


def timeline_png(rows: Sequence[Row], width: int = 1200, title: str = "probe arrivals") -> bytes:
    """Return the PNG of `rows`: per scenario, one line of arrival ticks per direction."""
    lines = [(scenario, direction, times, outage)
             for scenario, arrivals, outage in rows for direction, times in arrivals.items()]
    if not lines:
        lines = [(scenario, "no traffic", [], outage) for scenario, _, outage in rows]
    if not lines:
        raise ValueError("nothing to plot: no scenarios")
    height = MARGIN_TOP + ROW_HEIGHT * len(lines) + MARGIN_BOTTOM
    canvas = Canvas(width, height)
    start_ms, end_ms = _x_range(rows)
    plot_left, plot_right = MARGIN_LEFT, width - MARGIN_RIGHT

    def x_of(ms: float) -> int:
        return plot_left + round((ms - start_ms) / (end_ms - start_ms) * (plot_right - plot_left))

    # Title and grid with labels in ms below it.
    canvas.text(8, 8, f"{title}, ms around the failure (red)")
    step = _grid_step(end_ms - start_ms)
    bottom = MARGIN_TOP + ROW_HEIGHT * len(lines)
    for mark in range(math.ceil(start_ms / step) * step, int(end_ms) + 1, step):
        canvas.fill(x_of(mark), MARGIN_TOP, x_of(mark) + 1, bottom, GRID)
        label = f"{mark:+d}" if mark else "0"
        canvas.text(x_of(mark) - text_width(label) // 2, bottom + 6, label)

    previous = None
    for index, (scenario, direction, times, outage) in enumerate(lines):
        top = MARGIN_TOP + index * ROW_HEIGHT
        middle = top + (ROW_HEIGHT - TICK_HEIGHT) // 2
        if scenario != previous:
            canvas.fill(0, top, width, top + 1, SEPARATOR)
            canvas.text(8, top + 4, scenario)
            previous = scenario
        canvas.text(plot_left - text_width(direction) - 10, top + 4, direction)

        gap = longest_gap_after_failure(times)
        if gap is not None:
            canvas.fill(x_of(max(gap[0], start_ms)), middle, x_of(min(gap[1], end_ms)) + 1,
                        middle + TICK_HEIGHT, GAP)
        for at in times:
            if start_ms <= at <= end_ms:
                canvas.fill(x_of(at), middle, x_of(at) + 1, middle + TICK_HEIGHT, TICK)

        label = "no recovery" if outage is None else f"{outage:.0f} ms"
        if gap is not None and outage is not None:
            label = f"{gap[1] - gap[0]:.0f} ms"
        canvas.text(plot_right + 10, top + 4, label)

    canvas.fill(x_of(0), MARGIN_TOP - 4, x_of(0) + 2, bottom + 2, FAILURE)
    return canvas.png()


def write_timeline_png(path: Path, rows: Sequence[Row], **options) -> Path:
    """Write timeline_png(rows) to `path`, creating its directory; return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(timeline_png(rows, **options))
    return path
