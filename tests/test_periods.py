"""Local periods (DST, month and year ends, leap day) and the occupancy calendar (pure)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from api.accounting import periods
from api.accounting.calendar import Calendar, parse_window
from api.accounting.settings import parse_accounting
from campusmon.config import ConfigError, parse_config

BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def month_days(month: str, tz: ZoneInfo) -> list[periods.Bucket]:
    m = periods.month_range(month, tz)
    return periods.buckets(m.start, m.end, "day", tz)


@pytest.mark.parametrize(
    ("month", "short_or_long", "hours"), [("2026-03", "2026-03-29", 23), ("2026-10", "2026-10-25", 25)]
)
def test_dst_days_are_23_and_25_hours_and_the_days_tile_the_month(month, short_or_long, hours):
    days = month_days(month, BERLIN)
    m = periods.month_range(month, BERLIN)
    assert len(days) == 31
    assert {d.label: d.hours for d in days}[short_or_long] == hours
    assert all(d.hours == 24 for d in days if d.label != short_or_long)
    assert days[0].start == m.start and days[-1].end == m.end
    assert all(a.end == b.start for a, b in zip(days, days[1:], strict=False))
    # Every day starts at local midnight.
    assert all(datetime.fromtimestamp(d.start, BERLIN).time().isoformat() == "00:00:00" for d in days)


def test_hour_buckets_on_the_autumn_change_repeat_two_oclock():
    day = next(d for d in month_days("2026-10", BERLIN) if d.label == "2026-10-25")
    hours = periods.buckets(day.start, day.end, "hour", BERLIN)
    assert len(hours) == 25
    labels = [h.label for h in hours]
    assert labels[2] == "2026-10-25T02:00+02:00" and labels[3] == "2026-10-25T02:00+01:00"
    spring = next(d for d in month_days("2026-03", BERLIN) if d.label == "2026-03-29")
    spring_hours = periods.buckets(spring.start, spring.end, "hour", BERLIN)
    assert [h.label[11:16] for h in spring_hours][:3] == ["00:00", "01:00", "03:00"]


def test_month_and_year_ends():
    dec = periods.month_range("2026-12", SHANGHAI)
    assert datetime.fromtimestamp(dec.end, SHANGHAI) == datetime(2027, 1, 1, tzinfo=SHANGHAI)
    years = periods.buckets(dec.start, dec.end + 86400, "year", SHANGHAI)
    assert [y.label for y in years] == ["2026", "2027"]
    assert years[0].end == dec.end
    months = periods.buckets(dec.start, dec.end + 1, "month", SHANGHAI)
    assert [m.label for m in months] == ["2026-12", "2027-01"]
    # ISO weeks cross the year: 2026 has 53 of them.
    weeks = periods.buckets(
        periods.local_midnight(date(2026, 12, 28), SHANGHAI), dec.end + 7 * 86400, "week", SHANGHAI
    )
    assert [w.label for w in weeks] == ["2026-W53", "2027-W01"]
    assert datetime.fromtimestamp(weeks[1].start, SHANGHAI).date() == date(2027, 1, 4)


def test_leap_day():
    feb = month_days("2028-02", SHANGHAI)
    assert len(feb) == 29 and feb[-1].label == "2028-02-29"
    year = periods.buckets(feb[0].start, feb[0].start + 1, "year", SHANGHAI)[0]
    assert (year.end - year.start) == 366 * 86400
    # The same period a year earlier maps 29 February to 28 February.
    prev = periods.previous_year(feb[-1], "day", SHANGHAI)
    assert prev.label.startswith("2028-02-29") and periods.local_date(prev.start, SHANGHAI) == date(
        2027, 2, 28
    )
    assert periods.previous_year(periods.month_range("2028-02", SHANGHAI), "month", SHANGHAI).hours == 28 * 24


def test_zone_whose_midnight_does_not_exist_still_tiles():
    # Chile moves clocks at 24:00 in September: 00:00 local does not exist that day.
    tz = ZoneInfo("America/Santiago")
    days = month_days("2026-09", tz)
    assert all(a.end == b.start for a, b in zip(days, days[1:], strict=False))
    assert sorted({d.hours for d in days}) == [23, 24]


def test_half_hour_zone_hours_fall_on_local_whole_hours():
    tz = ZoneInfo("Asia/Kolkata")
    day = month_days("2026-05", tz)[0]
    hours = periods.hour_starts(day.start, day.end, tz)
    assert len(hours) == 24 and all(datetime.fromtimestamp(h, tz).minute == 0 for h in hours)


def test_floor_and_ceil():
    t = int(datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN).timestamp())
    assert datetime.fromtimestamp(periods.floor(t, "day", BERLIN), BERLIN) == datetime(
        2026, 10, 25, tzinfo=BERLIN
    )
    assert periods.ceil(periods.floor(t, "month", BERLIN), "month", BERLIN) == periods.floor(
        t, "month", BERLIN
    )
    assert periods.ceil(t, "month", BERLIN) == periods.month_range("2026-11", BERLIN).start
    assert periods.floor(t, "hour", BERLIN) == t - 1800


def test_parsing_api_times():
    assert periods.parse_local("2026-10-01", SHANGHAI) == periods.month_range("2026-10", SHANGHAI).start
    assert periods.parse_local("2026-10-01T08:00", SHANGHAI) == periods.parse_local(
        "2026-10-01T00:00Z", SHANGHAI
    )
    with pytest.raises(ValueError, match="not an ISO date"):
        periods.parse_local("yesterday", SHANGHAI)
    with pytest.raises(ValueError, match="YYYY-MM"):
        periods.month_range("2026-13", SHANGHAI)


# --- the occupancy calendar ---------------------------------------------------------------


def calendar() -> Calendar:
    cfg = parse_config(
        {
            "site": {"timezone": "Asia/Shanghai"},
            "accounting": {
                "calendar": {
                    "terms": [{"name": "autumn", "start": "2026-09-07", "end": "2027-01-15"}],
                    "vacations": [{"name": "winter", "start": "2027-01-16", "end": "2027-02-28"}],
                    "holidays": [{"name": "National Day", "start": "2026-10-01", "end": "2026-10-07"},
                                 {"name": "New Year", "date": "2027-01-01"}],
                    "workdays": ["2026-10-10"],
                    "opening_hours": {"classroom": {"term": ["07:30-12:00", "13:30-22:00"], "vacation": []}},
                }
            },
        },
        environ={},
    )  # fmt: skip
    return parse_accounting(cfg).calendar


def test_day_kinds_and_their_precedence():
    cal = calendar()
    assert cal.day_kind(date(2026, 10, 8)) == "term"  # Thursday in term
    assert cal.day_kind(date(2026, 10, 3)) == "holiday"  # Saturday inside National Day
    assert cal.day_kind(date(2026, 10, 11)) == "weekend"
    assert cal.day_kind(date(2026, 10, 10)) == "term"  # a Saturday made a working day
    assert cal.day_kind(date(2027, 1, 1)) == "holiday"
    assert cal.day_kind(date(2027, 1, 20)) == "vacation"
    assert cal.day_kind(date(2026, 8, 20)) == "vacation"  # outside every term
    assert Calendar().day_kind(date(2026, 8, 20)) == "term"  # no terms configured: working days are term


def test_is_occupied_by_building_type_and_time():
    cal = calendar()
    lunch = datetime(2026, 10, 8, 12, 30)
    assert not cal.is_occupied("classroom", lunch)
    assert cal.is_occupied("classroom", datetime(2026, 10, 8, 8, 0))
    assert not cal.is_occupied("classroom", datetime(2026, 10, 8, 22, 0))  # closing time is exclusive
    assert not cal.is_occupied("classroom", datetime(2027, 1, 20, 10, 0))  # vacation: closed here
    assert cal.is_occupied("dorm", datetime(2026, 10, 3, 3, 0))  # dorms: always
    assert cal.is_occupied("library", datetime(2026, 10, 11, 10, 0))  # default weekend hours
    # An aware time is converted to campus time: 00:30 UTC is 08:30 in Shanghai.
    assert cal.is_occupied("classroom", datetime(2026, 10, 8, 0, 30, tzinfo=ZoneInfo("UTC")))
    ts = int(datetime(2026, 10, 8, 12, 30, tzinfo=SHANGHAI).timestamp())
    assert cal.is_occupied_ts("classroom", ts) is False


def test_calendar_errors_name_file_key_and_problem():
    bad = {"accounting": {"calendar": {"terms": [{"start": "2026-09-07", "end": "2026-01-15"}]}}}
    with pytest.raises(ConfigError, match=r"^campus.yaml: accounting\.calendar\.terms\[0\]: .*before start"):
        parse_accounting(parse_config(bad, environ={}), "campus.yaml")
    with pytest.raises(ConfigError, match=r"accounting\.calendar\.opening_hours: .*unknown building type"):
        parse_accounting(
            parse_config({"accounting": {"calendar": {"opening_hours": {"barn": {}}}}}, environ={})
        )
    with pytest.raises(ValueError, match="closes before it opens"):
        parse_window("22:00-06:00")
