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


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_HINT = "give a duration of 0 or more such as 168h, 30m, 7d or 0s"


def duration_seconds(text: object) -> float | None:
    """The one duration grammar of this project: '90s', '30m', '24h', '7d', '2w', '1.5h', combined
    ('1h30m', '1d12h'), or a bare number of seconds; None when `text` is not one. (Every match
    of the part pattern consumes its digits, so long hostile text costs linear time.)"""
    value = str(text).strip().lower()
    if not value:
        return None
    parts = _DURATION_PART.findall(value)
    if "".join(n + u for n, u in parts) != value:
        return None
    if len(parts) > 1 and any(not u or "." in n for n, u in parts):
        return None  # '1h30' or '1.5h30m': a combined duration is whole numbers, each with a unit
    return sum(float(n) * _SECONDS[u] for n, u in parts)


def parse_duration(text: object, flag: str, hint: str = DURATION_HINT) -> int:
    """Whole seconds of a duration (see `duration_seconds`); UsageError with `hint` otherwise."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise UsageError(f"{flag} {shown(text)}: {hint}")
    return int(check_duration(seconds, flag, text))


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
