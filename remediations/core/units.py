"""Sizes, durations and times: one grammar each, for flags and vars alike."""

from __future__ import annotations

import datetime as dt
import re

from remediations.core.errors import UsageError
from remediations.core.validate import check_duration, shown

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of one size value as Docker prints it in JSON ("1.982MB", "15B", "0B", "2.1GiB")."""
    match = _SIZE.match(text or "0B")
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def human_bytes(count: float, binary: bool = False) -> str:
    """1234567 -> '1.2 MB' (decimal units, as Docker prints them); binary: '1.2 MiB' (as PostgreSQL)."""
    base = 1024 if binary else 1000
    units = ("B", "KiB", "MiB", "GiB", "TiB") if binary else ("B", "kB", "MB", "GB", "TB")
    value = float(count)
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= base
    return f"{value:.1f} {units[-1]}"


def human_age(seconds: float) -> str:
    """An age or a duration for a result line: '45s', '12m', '3.5h', '2.0d'."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


# The one duration grammar, for every duration flag (--ttl, --grace, --max-age, --older-than,
# --lock-wait, --at … ago) and var: a number and a unit, several of them combined, or a bare number
# of seconds. Each part consumes at least one digit, so long hostile text costs linear time.
_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*")
_SECONDS = {
    "": 1,
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 604800),
}
DURATION_HINT = "give a duration of 0 or more such as 168h, 30m, 7d, 1h30m or 0s"


class DurationError(ValueError):
    """Not a duration; the message says why (completes "--flag 'text': …")."""


def duration_parts(text: object) -> list[tuple[str, str]]:
    """The (number, unit) parts of a duration; DurationError when `text` is not one."""
    value = str(text).strip().lower()
    parts: list[tuple[str, str]] = []
    position = 0
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if not match:
            raise DurationError("")
        parts.append((match.group(1), match.group(2)))
        position = match.end()
    if not parts:
        raise DurationError("")
    unknown = next((u for _, u in parts if u not in _SECONDS), None)
    if unknown is not None:
        raise DurationError(f"unknown unit {unknown[:20]!r} (use s, m, h, d or w)")
    if len(parts) > 1 and any(not u or "." in n for n, u in parts):
        raise DurationError("")  # '1h30' or '1.5h30m': a combined duration is whole numbers with units
    return parts


def duration_seconds(text: object) -> float | None:
    """Seconds of a duration in the one grammar: '90s', '30m', '24h', '7d', '2w', '1.5h', combined
    ('1h30m', '1d 12h'), unit words ('90 minutes', '2 hours'), or a bare number of seconds ('1.5');
    None when `text` is not one."""
    try:
        return sum(float(n) * _SECONDS[u] for n, u in duration_parts(text))
    except DurationError:
        return None


def parse_seconds(text: object, flag: str, hint: str = DURATION_HINT, *, unit_required: bool = False,
                  high: float | None = None) -> float:  # fmt: skip
    """Seconds of a duration (see `duration_seconds`), at most `high`; UsageError with `hint`
    otherwise. `unit_required` refuses a bare number (for --ttl, where `24` is never 24 seconds)."""
    try:
        parts = duration_parts(text)
    except DurationError as exc:
        why = f"{exc}; " if str(exc) else ""
        raise UsageError(f"{flag} {shown(text)}: {why}{hint}") from None
    if unit_required and not all(u for _, u in parts):
        raise UsageError(f"{flag} {shown(text)}: give a unit, e.g. {str(text).strip()[:20]}h; {hint}")
    seconds = check_duration(sum(float(n) * _SECONDS[u] for n, u in parts), flag, text)
    if high is not None and seconds > high:
        raise UsageError(f"{flag} {shown(text)}: at most {human_age(high)}; {hint}")
    return seconds


def parse_duration(text: object, flag: str, hint: str = DURATION_HINT) -> int:
    """Whole seconds of a duration (see `duration_seconds`); UsageError with `hint` otherwise."""
    return int(parse_seconds(text, flag, hint))


def docker_time(text: str) -> float:
    """Unix time of a timestamp from Docker JSON: RFC 3339 ('2024-01-01T00:00:00.123456789Z') or the
    CLI's '2024-01-01 00:00:00.123 +0000 UTC'."""
    value = text.strip()
    if value.endswith(" UTC") and " +" in value:  # Go's time.String(): drop the zone name
        value = value[: -len(" UTC")]
    value = value.replace("Z", "+00:00")
    # Python parses at most microseconds: trim nanoseconds.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)
    for fmt in (
        "%Y-%m-%dT%H:%M:%S.%f%z",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%d %H:%M:%S.%f %z",
        "%Y-%m-%d %H:%M:%S %z",
    ):
        try:
            return dt.datetime.strptime(value, fmt).timestamp()
        except ValueError:
            continue
    raise ValueError(f"not a Docker timestamp: {text!r}")


def host_time(text: str) -> float:
    """The host's clock from `date +%s.%N` (a date without %N prints it literally: whole seconds)."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        return float(value.split(".", 1)[0])


def check_non_negative(value: object, what: str, kind: type[int] | type[float] = float) -> float:
    """A number 0 or more (an int when `kind` is int: "2.5" is refused) or UsageError."""
    try:
        number = kind(str(value))
    except ValueError:
        raise UsageError(f"{what} {value!r}: give a number, 0 or more") from None
    if number < 0:
        raise UsageError(f"{what} {value!r}: give a number, 0 or more (not negative)")
    return float(number)


def check_percent(value: object, flag: str) -> float:
    """A percentage 0..100 or UsageError."""
    try:
        number = float(str(value))
    except ValueError:
        raise UsageError(f"{flag} {value!r}: give a percentage from 0 to 100") from None
    if not 0 <= number <= 100:
        raise UsageError(f"{flag} {value!r}: give a percentage from 0 to 100")
    return number


# A point in time given on the command line (--to): a date, a time, and an explicit UTC offset. A
# time without an offset means different instants on the controller, the host and the database
# server, so it is refused rather than guessed.
_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)\s*(Z|UTC|[+-]\d{2}(?::?\d{2})?)$"
)
TIMESTAMP_HINT = (
    "give a date, a time and an explicit UTC offset, e.g. '2024-01-15 14:30:00+03' or '2024-01-15T11:30:00Z'"
)


def parse_timestamp(text: object, flag: str) -> float:
    """Unix time of `2024-01-15 14:30:00+03` (also `…T…`, seconds optional, fractions up to
    microseconds, `Z`/`UTC`/`+HH`/`+HHMM`/`+HH:MM`); UsageError for anything else."""
    value = str(text).strip()
    match = _TIMESTAMP.match(value)
    if match is None:
        missing = re.match(r"^\d{4}-\d{2}-\d{2}[ T][\d:.]+$", value)
        why = "no UTC offset; " if missing else ""
        raise UsageError(f"{flag} {shown(text)}: {why}{TIMESTAMP_HINT}")
    day, clock, zone = match.groups()
    offset = "+00:00" if zone in ("Z", "UTC") else zone
    if len(offset) == 3:
        offset += ":00"
    elif ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    if abs(int(offset[1:3])) > 15:
        raise UsageError(f"{flag} {shown(text)}: UTC offset {zone} is out of range; {TIMESTAMP_HINT}")
    try:
        return dt.datetime.fromisoformat(f"{day}T{clock}{offset}").timestamp()
    except ValueError as exc:
        raise UsageError(f"{flag} {shown(text)}: {exc}; {TIMESTAMP_HINT}") from None
