"""Histograms whose buckets obsctl keeps itself, for sources that count in bulk.

The OpenTelemetry API records one value per call (``Histogram.record``) and has
no way to add counts that are already sorted into buckets. The eBPF source
(:mod:`obsctl.collectors.fuse_bpf`) reads per-opcode bucket counts from a BPF
map once per poll; replaying each count through ``Histogram.record`` cost 7.45
of the 7.7 us of obsctl CPU per FUSE request (bench/fuse_bpf.py, issue 18), so
obsctl's CPU grew with the request rate. A :class:`BucketHistogram` adds a
whole bucket array in O(buckets); :class:`obsctl.telemetry.PreBucketedReader`
hands its points to every metric reader at collection time, next to the SDK's
own instruments (the same idea as a prometheus_client custom collector that
yields a ``HistogramMetricFamily`` from counts it did not observe one by one).

This module is pure Python (no SDK import): :mod:`obsctl.instruments` uses it
on the hot path; the SDK point types are built in :mod:`obsctl.telemetry`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass
from typing import Mapping, Sequence


#: Series per histogram before new attribute sets fold into one overflow series:
#: the OpenTelemetry SDK's default cardinality limit (2000: opentelemetry-sdk 1.45
#: ``_view_instrument_match._DEFAULT_CARDINALITY_LIMIT``); Telemetry sets the
#: configured ``[telemetry.metrics] cardinality_limit``.
DEFAULT_MAX_SERIES = 2000
#: The overflow series, named as the OpenTelemetry specification names it
#: (metrics SDK, "Cardinality limits": attribute ``otel.metric.overflow`` = true).
OVERFLOW_KEY = "\0overflow"
OVERFLOW_ATTRIBUTES: Mapping[str, str | bool] = {"otel.metric.overflow": True}


@dataclass
class Series:
    """The cumulative state of one attribute set of a :class:`BucketHistogram`.

    ``counts[i]``: values with ``bounds[i-1] < v <= bounds[i]`` (the last one
    +Inf), non-cumulative per bucket as OpenTelemetry's explicit-bucket
    histogram; ``sum``: their sum, in the histogram's unit; ``min``/``max``:
    exact while every value was recorded one by one, None once bucket counts
    were added (the buckets do not tell them).
    """

    attributes: dict[str, str | bool]
    counts: list[int]
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    exact: bool = True

    @property
    def count(self) -> int:
        """Values recorded in this series (sum of :attr:`counts`)."""
        return sum(self.counts)


class BucketHistogram:
    """A cumulative explicit-bucket histogram, one :class:`Series` per key.

    Args:
        name / description / unit: as the OpenTelemetry instrument would have
            them (:data:`obsctl.instruments.METRICS`).
        bounds: the bucket boundaries, ascending (``LATENCY_BUCKETS_MS``).

    ``key`` identifies a series cheaply on the hot path (an opcode); its
    ``attributes`` are stored on first use and never change for that key.
    Thread-safe: collectors record from their poll thread, readers take
    :meth:`snapshot` from theirs.
    """

    def __init__(self, name: str, description: str, unit: str, bounds: Sequence[float],
                 max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.name = name
        self.description = description
        self.unit = unit
        self.bounds: tuple[float, ...] = tuple(bounds)
        self.max_series = max_series
        self._series: dict[str, Series] = {}
        self._lock = threading.Lock()

    def _get(self, key: str, attributes: Mapping[str, str]) -> Series:
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series - 1:  # the SDK's cardinality rule: one series left for overflow
                key, attributes = OVERFLOW_KEY, OVERFLOW_ATTRIBUTES
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(dict(attributes), [0] * (len(self.bounds) + 1))
        return series

    def record(self, key: str, attributes: Mapping[str, str], value: float) -> None:
        """Add one value (in the histogram's unit) to the series ``key``."""
        index = bisect_left(self.bounds, value)
        with self._lock:
            series = self._get(key, attributes)
            series.counts[index] += 1
            series.sum += value
            if series.exact:
                series.min = value if series.min is None else min(series.min, value)
                series.max = value if series.max is None else max(series.max, value)

    def add_buckets(self, key: str, attributes: Mapping[str, str], counts: Sequence[int], total: float) -> None:
        """Add values already sorted into this histogram's buckets.

        ``counts``: one count per bucket (``len(bounds) + 1``, non-cumulative,
        as :class:`Series`); ``total``: the sum of those values. O(buckets),
        whatever the number of values. Raises ValueError on a wrong length
        (a source built for other bounds).
        """
        if len(counts) != len(self.bounds) + 1:
            raise ValueError(f"{self.name}: {len(counts)} bucket counts for {len(self.bounds) + 1} buckets")
        if not any(counts):
            return
        with self._lock:
            series = self._get(key, attributes)
            for i, k in enumerate(counts):
                if k:
                    series.counts[i] += k
            series.sum += total
            series.exact, series.min, series.max = False, None, None

    def snapshot(self) -> dict[str, Series]:
        """A copy of every series, ``{key: Series}``, taken under the lock."""
        with self._lock:
            return {key: Series(dict(s.attributes), list(s.counts), s.sum, s.min, s.max, s.exact)
                    for key, s in self._series.items()}
