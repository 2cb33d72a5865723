"""Tests for the traffic probe's datagram format and report computation."""

import pytest

from tests.lab.probe import HEADER, decode, encode
from tests.lab.traffic import ProbeReport, compute_report

MS = 1_000_000  # nanoseconds per millisecond
START = 1_700_000_000 * 1_000_000_000  # an arbitrary CLOCK_REALTIME in ns


def _sender(sent: int, last_ms: float, errors: int = 0) -> dict:
    return {"sent": sent, "send_errors": errors, "first_send_ns": START,
            "last_send_ns": START + int(last_ms * MS), "max_send_gap_ms": 2.0}


def _receiver(arrivals_ms: list[tuple[int, float]], sources=("10.1.0.10",)) -> dict:
    arrivals = [[sequence, START + sequence * 2 * MS, START + int(at_ms * MS)]
                for sequence, at_ms in arrivals_ms]
    return {"arrivals": arrivals, "sources": list(sources), "ignored": 0}


def test_datagram_round_trip() -> None:
    datagram = encode(7, START, 64)

    assert len(datagram) == 64
    assert decode(datagram) == (7, START)


def test_datagram_shorter_than_header() -> None:
    datagram = encode(1, START, 4)

    assert len(datagram) == HEADER.size
    assert decode(datagram) == (1, START)


@pytest.mark.parametrize("datagram", [b"", b"RMBP", b"XXXX" + bytes(12)], ids=["empty", "short", "magic"])
def test_decode_rejects_foreign_datagram(datagram: bytes) -> None:
    assert decode(datagram) is None


def test_report_no_loss() -> None:
    # Five datagrams 2 ms apart, each arriving 1 ms after it was sent.
    report = compute_report(_sender(5, 8), _receiver([(n, 2 * n + 1) for n in range(5)]))

    assert report.sent == 5
    assert report.received == 5
    assert report.lost == 0
    assert report.duplicates == 0
    assert report.max_gap_ms == pytest.approx(2.0)
    assert report.receive_times_ms == pytest.approx([1, 3, 5, 7, 9])
    assert report.sources == ["10.1.0.10"]


def test_report_gap_in_middle() -> None:
    # Datagrams 3..6 are lost: nothing arrives between 5 ms and 15 ms.
    arrivals = [(0, 1), (1, 3), (2, 5), (7, 15), (8, 17), (9, 19)]
    report = compute_report(_sender(10, 18), _receiver(arrivals))

    assert report.lost == 4
    assert report.max_gap_ms == pytest.approx(10.0)
    assert report.max_gap_start_ms == pytest.approx(5.0)
    assert report.max_gap_interval() == pytest.approx(
        (START / 1e9 + 0.005, START / 1e9 + 0.015))


def test_report_outage_at_start() -> None:
    # The first arrival comes 50 ms after the first send.
    report = compute_report(_sender(30, 58), _receiver([(25, 50), (29, 58)]))

    assert report.max_gap_ms == pytest.approx(50.0)
    assert report.max_gap_start_ms == pytest.approx(0.0)


def test_report_outage_never_ends() -> None:
    # Nothing arrives after 3 ms although sending goes on until 100 ms.
    report = compute_report(_sender(51, 100), _receiver([(0, 1), (1, 3)]))

    assert report.lost == 49
    assert report.max_gap_ms == pytest.approx(97.0)
    assert report.max_gap_start_ms == pytest.approx(3.0)


def test_report_nothing_received() -> None:
    report = compute_report(_sender(10, 18, errors=10), _receiver([], sources=()))

    assert report.received == 0
    assert report.lost == 10
    assert report.send_errors == 10
    assert report.max_gap_ms == pytest.approx(18.0)
    assert report.sources == []


def test_report_counts_duplicates_once() -> None:
    arrivals = [(0, 1), (1, 3), (1, 4), (2, 5)]
    report = compute_report(_sender(3, 4), _receiver(arrivals))

    assert report.received == 3
    assert report.duplicates == 1
    assert report.lost == 0


def test_report_ignores_arrivals_after_last_send() -> None:
    # The last datagram arrives after the last send; it ends no gap inside the window.
    report = compute_report(_sender(2, 2), _receiver([(0, 1), (1, 40)]))

    assert report.received == 2
    assert report.max_gap_ms == pytest.approx(1.0)


def test_report_summary_names_counts() -> None:
    report = ProbeReport(sent=10, received=8, lost=2, duplicates=0, max_gap_ms=4.0,
                         max_gap_start_ms=6.0, send_errors=0, max_send_gap_ms=2.0)

    summary = report.summary()

    assert "sent 10" in summary
    assert "lost 2" in summary
    assert "max gap 4.0 ms" in summary
