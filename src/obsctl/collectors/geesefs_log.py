"""Cache hits and misses from geesefs's ``--print-stats`` lines.

Source: geesefs core/goofys.go, ``StatPrinter`` (github.com/yandex-cloud/geesefs,
commit 6e2bbab). Every ``--print-stats`` interval it swaps its counters to
zero and logs, through its ``main`` logger at info level::

    2026/11/21 21:00:10.000000 main.INFO I/O: 12.30 read/s, 75.00 % hits, 0.00 write/s; metadata:
    1.00 read/s, 0.00 write/s, 0.00 noop/s, 42 alive, 0.00 evict/s; 0.00 flush/s

(one line, wrapped here)

with the Go format ``"I/O: %.2f read/s, %.2f %% hits, %.2f write/s; metadata:
%.2f read/s, %.2f write/s, %.2f noop/s, %v alive, %.2f evict/s; %.2f flush/s"``.
``read/s`` is FUSE reads per second over the window, ``% hits`` the share of
them geesefs served from its buffers without a request to the bucket.

What is recorded: reads in the window = round(read/s x window), hits =
round(reads x hits% / 100), misses = reads - hits ->
:meth:`~obsctl.instruments.Instruments.add_cache`. The window is the interval
obsctl gave ``--print-stats`` (geesefs divides by the real elapsed time, a
few milliseconds longer), and the rates carry two decimals, so a window's
counts are exact to within one read. The other fields (writes, metadata
operations) are FUSE operations the kernel collector already counts per
opcode: they are not recorded, so nothing is counted twice.
"""

from __future__ import annotations

import re

from obsctl.collectors import LogCollector, log
from obsctl.instruments import Instruments

STATS_LINE = re.compile(
    r"I/O: (?P<reads>\d+(?:\.\d+)?) read/s, (?P<hits>\d+(?:\.\d+)?) % hits, (?P<writes>\d+(?:\.\d+)?) write/s;")


def window_counts(line: str, window_seconds: float) -> tuple[int, int] | None:
    """``(hits, misses)`` of one stats line over ``window_seconds``, or None for another line.

    Raises nothing: a line that does not match the format above is None.
    """
    match = STATS_LINE.search(line)
    if match is None:
        return None
    reads = round(float(match.group("reads")) * window_seconds)
    hits = min(reads, round(reads * float(match.group("hits")) / 100.0))
    return hits, reads - hits


class GeesefsStatsCollector(LogCollector):
    """Feeds ``obsctl_cache_hits_total`` / ``obsctl_cache_misses_total`` from the stats lines.

    Args:
        instruments: the mount's instruments.
        window_seconds: the ``--print-stats`` interval obsctl set (seconds).
    """

    def __init__(self, instruments: Instruments, window_seconds: float) -> None:
        super().__init__(instruments)
        self.window_seconds = window_seconds
        self.lines = 0

    def _feed(self, line: str) -> None:
        counts = window_counts(line, self.window_seconds)
        if counts is None:
            return
        self.lines += 1
        hits, misses = counts
        if hits or misses:
            self.instruments.add_cache(hits=hits, misses=misses)
        log.debug("geesefs stats: %d hits, %d misses in %ss", hits, misses, self.window_seconds)
