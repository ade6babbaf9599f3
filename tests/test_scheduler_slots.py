"""Slot arithmetic of the daemon with a fixed clock, across DST changes."""

from __future__ import annotations

import datetime as dt

import pytest

from bot.scheduler import last_slot, next_slot, should_run_slot

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


NINE = dt.time(9, 0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Europe/Berlin leaves summer time on 2026-10-25: 09:00 is 07:00 UTC before, 08:00 after
        ("2026-10-24T12:00:00", "2026-10-25T08:00:00"),
        ("2026-10-25T07:30:00", "2026-10-25T08:00:00"),
        ("2026-10-25T08:00:00", "2026-10-26T08:00:00"),
        # and enters it on 2026-03-29: 09:00 is 08:00 UTC before, 07:00 after
        ("2026-03-28T08:30:00", "2026-03-29T07:00:00"),
    ],
)
def test_next_daily_berlin_across_dst(now: str, expected: str) -> None:
    assert next_slot(at(now), NINE, "Europe/Berlin") == at(expected)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # America/New_York: DST ends 2026-11-01 (09:00 EDT = 13:00 UTC, then EST = 14:00 UTC)
        ("2026-10-31T20:00:00", "2026-11-01T14:00:00"),
        ("2026-11-01T13:30:00", "2026-11-01T14:00:00"),
        # DST starts 2026-03-08 (09:00 EST = 14:00 UTC, then EDT = 13:00 UTC)
        ("2026-03-07T20:00:00", "2026-03-08T13:00:00"),
    ],
)
def test_next_daily_new_york_across_dst(now: str, expected: str) -> None:
    assert next_slot(at(now), NINE, "America/New_York") == at(expected)


def test_wall_clock_time_skipped_by_dst_runs_right_after_the_gap() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 -> 03:00)
    slot = next_slot(at("2026-03-28T12:00:00"), dt.time(2, 30), "Europe/Berlin")
    assert slot == at("2026-03-29T01:30:00")  # 03:30 CEST, one run that day


def test_repeated_wall_clock_time_runs_once_at_first_occurrence() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25; first is CEST (00:30 UTC)
    slot = next_slot(at("2026-10-24T12:00:00"), dt.time(2, 30), "Europe/Berlin")
    assert slot == at("2026-10-25T00:30:00")
    assert next_slot(slot, dt.time(2, 30), "Europe/Berlin") == at("2026-10-26T01:30:00")


def test_weekly_slot_is_the_last_and_next_monday_at_0800_berlin() -> None:
    # 2026-11-25 is a Wednesday; last Monday 08:00 Berlin (CET) = 07:00 UTC on 2026-11-23
    now = at("2026-11-25T10:00:00")
    assert last_slot(now, dt.time(8), "Europe/Berlin", "monday") == at("2026-11-23T07:00:00")
    assert next_slot(now, dt.time(8), "Europe/Berlin", "monday") == at("2026-11-30T07:00:00")


def test_last_slot_is_today_or_yesterday() -> None:
    assert last_slot(at("2026-11-25T08:59:59"), NINE, "UTC") == at("2026-11-24T09:00:00")
    assert last_slot(at("2026-11-25T09:00:00"), NINE, "UTC") == at("2026-11-25T09:00:00")


def test_a_slot_runs_once_when_nothing_or_only_an_earlier_one_was_handled() -> None:
    slot = at("2026-11-25T09:00:00")
    assert should_run_slot(slot, None)  # never ran: catch up once
    assert should_run_slot(slot, at("2026-11-24T09:00:00"))  # missed while down
    assert not should_run_slot(slot, slot)  # already handled
