"""Time as the pipeline counts it: integer microseconds since the Unix epoch, UTC.

``wall_clock_us`` is the default ``clock`` of every stage that reads the time (tests inject their own);
``parse_rfc3339``, ``rfc3339_us`` and ``parse_rfc3339_us`` read RFC 3339 date-times (``Z`` or an offset, up to nine
fractional digits, truncated to the microsecond); ``micros`` turns a datetime into the pipeline's unit, and
``rfc3339_or_micros`` a time back into text.
"""

from __future__ import annotations

import datetime
import functools
import re
import time

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_MICROSECOND = datetime.timedelta(microseconds=1)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
# What _RFC3339 matches of ASCII texts, found faster: every form it takes with the digits written 0.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_RFC3339_FORMS = frozenset(
    f"0000-00-00{separator}00:00:00{fraction}{offset}".encode()
    for separator in "Tt"
    for fraction in ("", *("." + "0" * digits for digits in range(1, 10)))
    for offset in ("Z", "z", "+00:00", "-00:00")
)


def wall_clock_us() -> int:
    return time.time_ns() // 1_000


def micros(moment: datetime.datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (archives only ever store UTC instants)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - EPOCH) // _ONE_MICROSECOND


def rfc3339_or_micros(time_us: int) -> str:
    """``time_us`` as an RFC 3339 date-time, or as a count of microseconds when no datetime can hold it."""
    try:
        return (EPOCH + datetime.timedelta(microseconds=time_us)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"{time_us} µs since 1970-01-01"


# A record's time is read by validation, by stitching and by the profile writer, which take records in batches of
# hundreds: the two readers below remember their answers (immutable) for the 4096 texts read last, so that only the
# first read of a record's time parses it.
@functools.lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> datetime.datetime | None:
    """An RFC 3339 date-time as an aware datetime, or ``None`` when ``text`` is not one."""
    # The form first, for fromisoformat takes ISO 8601 forms that RFC 3339 does not (no offset, a comma, week dates,
    # ...). \d takes digits of any script, and so does fromisoformat past the sixth fractional digit: a text beyond
    # ASCII goes to the regular expression.
    if text.isascii():
        if text.encode().translate(_DIGITS_AS_ZERO) not in _RFC3339_FORMS:
            return None
    elif not _RFC3339.fullmatch(text):
        return None
    try:
        return datetime.datetime.fromisoformat(text.upper())
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def rfc3339_us(text: str) -> int | None:
    """Microseconds since the epoch of an RFC 3339 date-time, or ``None`` when ``text`` is not one."""
    moment = parse_rfc3339(text)
    return None if moment is None else micros(moment)


def parse_rfc3339_us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 date-time; raises :class:`ValueError` when it is not one."""
    moment = parse_rfc3339(text)
    if moment is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    return micros(moment)
