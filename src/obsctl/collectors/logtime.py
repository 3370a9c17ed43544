"""Log timestamps of the drivers, for latency pairing: one implementation for every log collector.

rclone's ``time`` field (``2026-11-21T08:01:55.4007+00:00``, microseconds)
and s3fs's line prefix (``2026-11-21T07:58:05.458Z``, milliseconds) are both
ISO 8601 with the seconds last before the zone; :func:`parse_time_parts`
reads either. Used by :mod:`obsctl.collectors.rclone_log` and
:mod:`obsctl.collectors.s3fs_log`.
"""

from __future__ import annotations

from datetime import datetime

_epoch_cache: dict[str, float] = {}


def parse_time_parts(value: str) -> tuple[float, float] | None:
    """``(minute_epoch, seconds)`` of an rclone ``time`` field, or None.

    ``2026-11-21T08:01:55.4007+00:00`` -> (epoch of 08:01:00 UTC, 55.4007).
    The part up to the minute plus the zone is converted once and cached.
    Kept in two parts so that differences keep microsecond precision (one
    float of ~1.8e9 s has a resolution of ~0.24 us).
    """
    try:
        end = len(value)
        for i in range(19, len(value)):
            c = value[i]
            if c == "+" or c == "-" or c == "Z":
                end = i
                break
        key = value[:16] + value[end:]
        base = _epoch_cache.get(key)
        if base is None:
            base = datetime.fromisoformat(value[:16] + ":00" + value[end:]).timestamp()
            if len(_epoch_cache) > 4096:
                _epoch_cache.clear()
            _epoch_cache[key] = base
        return base, float(value[17:end])
    except (ValueError, TypeError):
        return None


def parse_time(value: str) -> float | None:
    """Seconds since the epoch of an rclone (or s3fs) log timestamp, or None."""
    parts = parse_time_parts(value)
    return None if parts is None else parts[0] + parts[1]


def elapsed_ms(start: tuple[float, float], end: tuple[float, float]) -> float:
    """Milliseconds from ``start`` to ``end`` (both from :func:`parse_time_parts`)."""
    return ((end[0] - start[0]) + (end[1] - start[1])) * 1000.0
