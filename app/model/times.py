"""Event times across the whole range a callback may carry: years 0001 to 9999, any offset.

Python's datetime ends at 9999-12-31 in every offset, so an instant such as
9999-12-31T23:00-05:00 has no UTC form in Python (it is 10000-01-01T04:00Z),
though PostgreSQL stores it well. Such an instant is kept in the offset of
largest magnitude that Python has (23:59), where it fits; every other instant
is kept in UTC. One form per instant, so that text made from a time (a
discrepancy's detail, say) never depends on where the value came from.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_EDGE = timedelta(hours=23, minutes=59)
# Where instants just past datetime.max, or just before datetime.min, fit.
_LATE = timezone(-_EDGE)
_EARLY = timezone(_EDGE)


def canonical(value: datetime) -> datetime:
    """The one form of an aware time: UTC where Python can write it, else at the edge offset."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return _shift(value, _LATE if value.year >= 9999 else _EARLY)


def _shift(value: datetime, zone: timezone) -> datetime:
    """The same instant in another fixed offset (raises OverflowError where it does not fit)."""
    offset = value.utcoffset()
    assert offset is not None, "event times are aware"
    # Shift the wall time by the offsets' difference in one step: going
    # through UTC is what overflows.
    return (value.replace(tzinfo=None) + (zone.utcoffset(None) - offset)).replace(tzinfo=zone)


def plus(value: datetime, delta: timedelta) -> datetime | None:
    """`value + delta`, or None past the end of representable time (no deadline, then)."""
    try:
        return canonical(value + delta)
    except OverflowError:
        pass
    try:
        # Written at the late edge, an instant has a day more of wall time left.
        return canonical(_shift(value, _LATE) + delta)
    except OverflowError:
        return None


def iso(value: datetime) -> str:
    """ISO 8601, in UTC with a Z where it can be, as Dispatch writes its timestamps."""
    return canonical(value).isoformat().replace("+00:00", "Z")


def display(value: datetime) -> str:
    """A time as people read it here (the dashboard, reasons in words): UTC, to the millisecond
    when it has one, e.g. 2026-03-01T09:00:02Z or 2026-03-01T09:00:02.250Z."""
    m = canonical(value)
    text = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    if m.microsecond:
        text += f".{m.microsecond // 1000:03d}"
    offset = m.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    sign, minutes = ("-", -offset) if offset < timedelta(0) else ("+", offset)
    hours, rest = divmod(int(minutes.total_seconds()) // 60, 60)
    return f"{text}{sign}{hours:02d}:{rest:02d}"


# PostgreSQL's text form of a timestamptz in a session whose TimeZone is UTC.
_PG_UTC = re.compile(
    r"(?P<year>\d{4,5})-(?P<month>\d\d)-(?P<day>\d\d) (?P<hour>\d\d):(?P<minute>\d\d):"
    r"(?P<second>\d\d)(?:\.(?P<fraction>\d{1,6}))?\+00(?P<bc> BC)?"
)


def from_postgres_utc(text: str) -> datetime:
    """An instant PostgreSQL wrote in UTC just outside Python's years, in its canonical form.

    Only the day past 9999-12-31 and the day before 0001-01-01 can occur: a
    stored event time is at most 23:59 away from a year Python has.
    """
    match = _PG_UTC.fullmatch(text)
    if match is None:
        raise ValueError(f"not a UTC timestamp from PostgreSQL: {text!r}")
    part = {k: int(v) for k, v in match.groupdict().items() if k not in ("fraction", "bc") and v}
    micros = int((match["fraction"] or "0").ljust(6, "0"))
    since_midnight = timedelta(
        hours=part["hour"], minutes=part["minute"], seconds=part["second"], microseconds=micros
    )
    day = (part["year"], part["month"], part["day"], match["bc"] is not None)
    if day == (10000, 1, 1, False):
        # 10000-01-01T00:00Z, written at the late edge.
        return datetime(9999, 12, 31, 0, 1, tzinfo=_LATE) + since_midnight
    if day == (1, 12, 31, True):
        # 1 BC is year 0; 0001-01-01T00:00 at the early edge is 0000-12-31T00:01Z.
        return datetime(1, 1, 1, tzinfo=_EARLY) + (since_midnight - timedelta(minutes=1))
    raise ValueError(f"outside any event time a callback can carry: {text!r}")
