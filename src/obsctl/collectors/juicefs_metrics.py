"""JuiceFS's own Prometheus endpoint (``juicefs mount --metrics 127.0.0.1:PORT``) -> obsctl's instruments.

Source: the exposition of a live juicefs 1.4.2 mount, captured in
tests/fixtures/juicefs/ (how: tests/fixtures/juicefs/README.md). The names are
JuiceFS's (every one prefixed ``juicefs_`` by ``WrapRegistererWithPrefix`` in
cmd/mount.go; each series carries ``mp``, ``vol_name`` and
``juicefs_version`` and ``instance``, which obsctl replaces by its own labels). Each
:meth:`JuicefsMetricsCollector.poll` reads ``/metrics`` once (1 s timeout) and
records the increase of every cumulative series since the last poll:

* ``juicefs_fuse_ops_total{method}`` (pkg/vfs/accesslog.go ``opsTotal``:
  every FUSE operation juicefs answered) -> ``record_fs_op(method lower case, n)``;
  ``juicefs_fuse_ops_durations_seconds{method}`` (the summed durations of the
  same operations) -> ``obsctl_fs_latency_ms``: the ``n`` operations of the
  interval are recorded at their mean (count and sum exact, the spread inside
  one poll interval is not known);
* ``juicefs_fuse_read_size_bytes_sum`` / ``juicefs_fuse_written_size_bytes_sum``
  (pkg/vfs/vfs.go: the bytes a read returned / a write took) ->
  ``add_read_bytes`` / ``add_write_bytes``;
* ``juicefs_object_request_durations_histogram_seconds{method,storage_class}``
  (pkg/chunk/cached_store.go: GET, PUT, DELETE ... to the object store) ->
  ``record_request(method, ms)``: each new observation of a bucket is recorded
  at the interval's mean for that method, clamped into the bucket's bounds;
* ``juicefs_object_request_errors`` -> ``add_error("juicefs_object_error", n)``;
* ``juicefs_blockcache_hits`` / ``juicefs_blockcache_miss`` -> ``add_cache``.

The FUSE quantities go through the mount's source view, so when the kernel
source gives them (docs/metrics.md) juicefs's copy is dropped and nothing is
counted twice. A counter that goes down (juicefs restarted) restarts its
delta from 0. Never raises out of :meth:`poll`: an endpoint that does not
answer (juicefs starting, restarting, hung) is skipped.
"""

from __future__ import annotations

import http.client
import logging
from bisect import bisect_left
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from obsctl.collectors import PollingCollector
from obsctl.collectors.rclone_rc import rc_request
from obsctl.instruments import LATENCY_BUCKETS_MS, Instruments

log = logging.getLogger(__name__)

#: JuiceFS's labels on every series (cmd/mount.go ``commonLabels``, and ``instance``: the host name,
#: seen in tests/fixtures/juicefs/read.metrics): obsctl's own labels replace them.
_COMMON = frozenset({"mp", "vol_name", "juicefs_version", "instance"})
#: Counters are keyed by their family name, without ``_total`` (:func:`parse_exposition`).
OPS = "juicefs_fuse_ops"
OPS_SECONDS = "juicefs_fuse_ops_durations_seconds"
READ_BYTES = "juicefs_fuse_read_size_bytes_sum"
WRITTEN_BYTES = "juicefs_fuse_written_size_bytes_sum"
OBJECT = "juicefs_object_request_durations_histogram_seconds"
OBJECT_ERRORS = "juicefs_object_request_errors"
CACHE_HITS = "juicefs_blockcache_hits"
CACHE_MISS = "juicefs_blockcache_miss"
#: The ``error_type`` of a failed object-store request (juicefs does not say which HTTP status).
OBJECT_ERROR = "juicefs_object_error"

Key = tuple[str, tuple[tuple[str, str], ...]]


def parse_exposition(text: str) -> dict[Key, float]:
    """``{(sample name, sorted labels without mp / vol_name / juicefs_version / instance): value}`` of
    a Prometheus text exposition (parsed by prometheus_client; samples that differ only in the dropped
    labels are summed). A counter's sample is named by its family, without ``_total``:
    juicefs exposes ``juicefs_fuse_ops_total`` and ``juicefs_blockcache_hits`` alike, and
    prometheus_client's parser adds ``_total`` to the second, so the family name is the one
    spelling both share.

    Raises:
        ValueError: text that is not a Prometheus exposition.
    """
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in _COMMON))
            name = family.name if family.type == "counter" and sample.name == family.name + "_total" else sample.name
            key = (name, labels)
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def _by(values: dict[Key, float], name: str, label: str) -> dict[str, float]:
    """``{label value: sum}`` of the samples called ``name`` (other labels summed over)."""
    out: dict[str, float] = {}
    for (sample, labels), value in values.items():
        if sample == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


class JuicefsMetricsCollector(PollingCollector):
    """Polls juicefs's ``/metrics`` (see the module doc).

    Args:
        instruments: where to record (the mount's source view of them).
        metrics_url: ``http://127.0.0.1:PORT/metrics`` (the driver's launch plan).
        timeout: seconds per request.
        count_initial: count what the first poll finds (True: obsctl started juicefs) or take it as
            the baseline (False).

    Attributes:
        reachable: whether the last poll read the endpoint.
        last: the last values read (:func:`parse_exposition`), for status.
    """

    def __init__(self, instruments: Instruments, metrics_url: str, timeout: float = 1.0,
                 count_initial: bool = True) -> None:
        super().__init__(instruments)
        base, _sep, path = metrics_url.partition("://")[2].partition("/")
        self.base_url = "http://" + base
        self.path = path or "metrics"
        self.timeout = timeout
        self.count_initial = count_initial
        self.reachable = False
        self.last: dict[Key, float] | None = None

    def status(self) -> dict[str, Any]:
        """``driver_stats.juicefs``: operations, bytes, object requests and cache counts so far, as juicefs gave them."""
        if self.last is None:
            return {}
        values = self.last
        total = {name: sum(v for (s, _l), v in values.items() if s == name)
                 for name in (OPS, READ_BYTES, WRITTEN_BYTES, OBJECT + "_count", OBJECT_ERRORS, CACHE_HITS, CACHE_MISS)}
        return {"driver_stats": {"juicefs": {
            "fuse_ops": total[OPS], "read_bytes": total[READ_BYTES], "written_bytes": total[WRITTEN_BYTES],
            "object_requests": total[OBJECT + "_count"], "object_errors": total[OBJECT_ERRORS],
            "blockcache_hits": total[CACHE_HITS], "blockcache_miss": total[CACHE_MISS]}}}

    def _poll(self) -> None:
        try:
            status, body = rc_request(self.base_url, self.path, timeout=self.timeout, method="GET")
        except (OSError, http.client.HTTPException) as exc:
            self.reachable = False
            log.debug("juicefs metrics %s: %s", self.base_url, exc)
            return
        self.reachable = status == 200
        if status != 200:
            return
        values = parse_exposition(body)
        previous = self.last
        self.last = values
        if previous is None and not self.count_initial:
            return
        self.record(values, previous or {})

    def record(self, now: dict[Key, float], before: dict[Key, float]) -> None:
        """Record the increase from ``before`` to ``now`` (two :func:`parse_exposition` results)."""
        def delta(key: Key) -> float:
            cur, prev = now.get(key, 0.0), before.get(key, 0.0)
            return cur - prev if cur >= prev else cur  # a reset: juicefs restarted

        ins = self.instruments
        deltas = {key: delta(key) for key in now}
        ops = _by(deltas, OPS, "method")
        seconds = _by(deltas, OPS_SECONDS, "method")
        for method, n in sorted(ops.items()):
            count = int(round(n))
            if count <= 0:
                continue
            opcode = method.lower()
            ins.record_fs_op(opcode, None, n=count)
            mean_ms = seconds.get(method, 0.0) * 1000.0 / count
            counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
            sums = [0.0] * (len(LATENCY_BUCKETS_MS) + 1)
            index = bisect_left(LATENCY_BUCKETS_MS, mean_ms)
            counts[index], sums[index] = count, mean_ms * count
            ins.record_fs_latency_buckets(opcode, counts, sums)
        ins.add_read_bytes(int(round(deltas.get((READ_BYTES, ()), 0.0))))
        ins.add_write_bytes(int(round(deltas.get((WRITTEN_BYTES, ()), 0.0))))
        self._object_requests(deltas)
        errors = int(round(deltas.get((OBJECT_ERRORS, ()), 0.0)))
        if errors > 0:
            ins.add_error(OBJECT_ERROR, errors)
        ins.add_cache(hits=int(round(deltas.get((CACHE_HITS, ()), 0.0))),
                      misses=int(round(deltas.get((CACHE_MISS, ()), 0.0))))

    def _object_requests(self, deltas: dict[Key, float]) -> None:
        """Each new observation of the object-request histogram, per method (see the module doc)."""
        counts = _by(deltas, OBJECT + "_count", "method")
        sums = _by(deltas, OBJECT + "_sum", "method")
        for method, total in sorted(counts.items()):
            if total < 1:
                continue
            mean_ms = sums.get(method, 0.0) * 1000.0 / total
            buckets: dict[float, float] = {}
            for (sample, labels), value in deltas.items():
                label = dict(labels)
                if sample == OBJECT + "_bucket" and label.get("method") == method:
                    bound = float(label["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + value
            lower, seen = 0.0, 0.0
            for bound in sorted(buckets):  # cumulative buckets: the increase per bucket is the difference
                k = int(round(buckets[bound] - seen))
                seen = buckets[bound]
                upper = bound * 1000.0
                value = min(max(mean_ms, lower), upper)
                for _n in range(max(k, 0)):
                    self.instruments.record_request(method, value)
                lower = upper
