"""obsctl.histograms + obsctl.telemetry.PreBucketedReader: histograms obsctl keeps
itself reach every reader exactly (issue 18: bucket counts from the eBPF source are
added in O(buckets), never replayed one value at a time).

The readers are the SDK's own (InMemoryMetricReader, PrometheusMetricReader over a
real socket, PeriodicExportingMetricReader into the real OTLP receiver of
tests/support), with the mixin in front; the expected numbers are the inputs.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.parser import text_string_to_metric_families

from obsctl.config import parse_telemetry
from obsctl.histograms import OVERFLOW_ATTRIBUTES, BucketHistogram
from obsctl.instruments import LATENCY_BUCKETS_MS, MountAttributes
from obsctl.telemetry import MemoryReader, PreBucketedPoints, Telemetry, in_memory_instruments

ATTRS = MountAttributes("data", "bindfs", "/mnt/data")
NBUCKETS = len(LATENCY_BUCKETS_MS) + 1


def latency_points(reader) -> dict[str, object]:
    data = reader.get_metrics_data()
    out = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "obsctl_fs_latency_ms":
                    for dp in metric.data.data_points:
                        out[dp.attributes["opcode"]] = dp
    return out


def test_a_million_bucketed_latencies_are_exported_exactly_and_alone():
    """The SDK has nothing else to collect (collect() would skip _receive_metrics): the
    histogram is still delivered, with the bucket counts, count and sum as added."""
    reader, ins = in_memory_instruments(ATTRS)
    counts = [0] * NBUCKETS
    counts[0], counts[5], counts[-1] = 600_000, 399_999, 1  # <= 0.05 ms, (1, 2.5] ms, > 30 s
    ins.record_fs_latency_buckets("getattr", counts, [0.0] * NBUCKETS)
    ins.record_fs_latency_buckets("getattr", [1] + [0] * (NBUCKETS - 1), [12.5] + [0.0] * (NBUCKETS - 1))
    point = latency_points(reader)["getattr"]
    assert list(point.bucket_counts) == [600_001] + [0] * 4 + [399_999] + [0] * (NBUCKETS - 7) + [1]
    assert point.count == 1_000_001 and point.sum == pytest.approx(12.5)
    assert list(point.explicit_bounds) == list(LATENCY_BUCKETS_MS)
    assert point.attributes == {"opcode": "getattr", "bucket": "data", "impl": "bindfs"}
    assert point.min is None and point.max is None  # the buckets do not tell them
    assert ins.live()["latency_buckets"]["getattr"] == list(point.bucket_counts)  # obsctl top reads the same


def test_one_by_one_latencies_keep_exact_min_max_and_cumulate():
    reader, ins = in_memory_instruments(ATTRS)
    for ms in (0.05, 0.051, 7.0, 30001.0):
        ins.record_fs_latency("read", ms)
    first = latency_points(reader)["read"]
    assert first.count == 4 and first.sum == pytest.approx(30008.101)
    assert (first.min, first.max) == (0.05, 30001.0)
    assert first.bucket_counts[0] == 1 and first.bucket_counts[1] == 1 and first.bucket_counts[-1] == 1
    ins.record_fs_latency("read", 1.0)
    second = latency_points(reader)["read"]
    assert second.count == 5 and second.start_time_unix_nano == first.start_time_unix_nano  # cumulative


def test_delta_temporality_exports_what_came_since_the_last_collection():
    """A reader asking for delta histograms (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta)."""
    points = PreBucketedPoints(Resource.get_empty(), InstrumentationScope("obsctl"))
    histogram = BucketHistogram("obsctl_fs_latency_ms", "", "", LATENCY_BUCKETS_MS)
    points.histograms.append(histogram)
    reader = MemoryReader(points=points, preferred_temporality={Histogram: AggregationTemporality.DELTA})
    MeterProvider(metric_readers=[reader])
    histogram.add_buckets("read", {"opcode": "read"}, [3] + [0] * (NBUCKETS - 1), 0.09)
    first = latency_points(reader)["read"]
    histogram.add_buckets("read", {"opcode": "read"}, [0, 2] + [0] * (NBUCKETS - 2), 0.15)
    second = latency_points(reader)["read"]
    assert first.count == 3 and second.count == 2 and second.sum == pytest.approx(0.15)
    assert second.bucket_counts[:2] == [0, 2]
    assert second.start_time_unix_nano == first.time_unix_nano
    assert "read" not in latency_points(reader)  # nothing new: no point, as the SDK's delta


def test_series_beyond_the_cardinality_limit_fold_into_the_overflow_series():
    histogram = BucketHistogram("h", "", "", (1.0,), max_series=3)
    for op in ("a", "b", "c", "d"):
        histogram.record(op, {"opcode": op}, 0.5)
    snap = histogram.snapshot()
    assert set(snap) == {"a", "b", "\0overflow"} and snap["\0overflow"].count == 2
    assert snap["\0overflow"].attributes == dict(OVERFLOW_ATTRIBUTES)
    with pytest.raises(ValueError, match="3 bucket counts for 2 buckets"):
        histogram.add_buckets("a", {"opcode": "a"}, [1, 2, 3], 1.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prometheus_exposition_carries_the_bucketed_histogram(tmp_path):
    """Through Telemetry's real PrometheusMetricReader and scrape endpoint, parsed by prometheus_client."""
    port = free_port()
    cfg = parse_telemetry({"telemetry": {"mode": "remote", "traces": {"enabled": False},
                                         "metrics": {"bind_address": f"127.0.0.1:{port}"}}})
    telemetry = Telemetry(cfg, ATTRS)
    try:
        counts = [0] * NBUCKETS
        counts[2], counts[3] = 70_000, 30_000  # (0.1, 0.25] and (0.25, 0.5] ms
        telemetry.instruments.record_fs_latency_buckets("lookup", counts, [0.0, 0.0, 14_000.0, 9_000.0]
                                                        + [0.0] * (NBUCKETS - 4))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        telemetry.shutdown(1)
    got = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("obsctl_fs_latency_ms") and s.labels.get("opcode") == "lookup":
                got[(s.name, s.labels.get("le"))] = s.value
    assert got[("obsctl_fs_latency_ms_bucket", "0.1")] == 0
    assert got[("obsctl_fs_latency_ms_bucket", "0.25")] == 70_000
    assert got[("obsctl_fs_latency_ms_bucket", "0.5")] == 100_000
    assert got[("obsctl_fs_latency_ms_bucket", "+Inf")] == 100_000
    assert got[("obsctl_fs_latency_ms_count", None)] == 100_000
    assert got[("obsctl_fs_latency_ms_sum", None)] == pytest.approx(23_000.0)
