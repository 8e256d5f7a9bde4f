"""The scan cursor (pure): which reads it asks for, and the ranges it reports, against devices described as
"which addresses answer". A device answers a read when every address of it answers, else the exception code of
the first failing address, as Modbus servers do (and ``None`` = no answer at all)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.scan import MAX_SILENT_REQUESTS, ScanCursor, Span, exception_outcome, parse_modbus_url, parse_range

Device = Callable[[int], int | None]
"""address -> 0 (answers), an exception code, or None (no answer)."""

ILLEGAL = exception_outcome(2)


def run(device: Device, first: int, last: int, *, max_count: int = 125) -> tuple[list[Span], int, list[int]]:
    cursor = ScanCursor(first, last, max_count=max_count)
    sizes: list[int] = []
    while (request := cursor.next_request()) is not None:
        start, count = request
        sizes.append(count)
        outcomes = [device(address) for address in range(start, start + count)]
        if any(outcome is None for outcome in outcomes):
            cursor.no_answer()
        elif failing := [outcome for outcome in outcomes if outcome]:
            cursor.exception(failing[0])
        else:
            cursor.answered()
    assert cursor.requests == len(sizes)
    return cursor.spans(), cursor.requests, sizes


def test_an_answering_table_costs_one_request_per_block() -> None:
    spans, requests, sizes = run(lambda a: 0, 0, 9999)
    assert spans == [Span(0, 9999, "answers")]
    assert requests == 80 and max(sizes) == 125


def test_the_end_of_the_table_is_found_exactly() -> None:
    spans, requests, _ = run(lambda a: 0 if a < 1764 else 2, 0, 2000)
    assert spans == [Span(0, 1763, "answers"), Span(1764, 2000, ILLEGAL)]
    assert requests <= 1764 // 125 + 10 + (2000 - 1764 + 1)  # blocks + a bisection + one per failing address


def test_holes_and_codes_are_reported_as_ranges() -> None:
    def device(address: int) -> int | None:
        if 100 <= address < 110:
            return 2
        if address == 300:
            return 4
        return 0

    spans, _, _ = run(device, 0, 499)
    assert spans == [Span(0, 99, "answers"), Span(100, 109, ILLEGAL), Span(110, 299, "answers"),
                     Span(300, 300, exception_outcome(4)), Span(301, 499, "answers")]


def test_silence_stops_the_scan_and_the_rest_is_not_scanned() -> None:
    spans, requests, _ = run(lambda a: 0 if a < 50 else None, 0, 9999, max_count=100)
    assert requests == MAX_SILENT_REQUESTS  # 0-99 is silent as a whole: no bisection of silence
    assert spans == [Span(0, 299, "no answer"), Span(300, 9999, "not scanned")]


def test_bit_tables_use_their_own_block_size() -> None:
    spans, requests, sizes = run(lambda a: 0, 0, 3999, max_count=2000)
    assert spans == [Span(0, 3999, "answers")] and sizes == [2000, 2000] and requests == 2


@pytest.mark.parametrize(("text", "expected"), [("0-9999", (0, 9999)), ("40001-40010", (40001, 40010)), ("7", (7, 7))])
def test_ranges(text: str, expected: tuple[int, int]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["9-1", "0-70000", "a-b", "-5"])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="range"):
        parse_range(text)


def test_urls() -> None:
    assert parse_modbus_url("modbus://127.0.0.1:5020") == ("127.0.0.1", 5020)
    assert parse_modbus_url("modbus://plc") == ("plc", 502)
    with pytest.raises(ValueError, match="modbus://"):
        parse_modbus_url("tcp://plc:502")
