"""In-memory OpenTelemetry reading for collector unit tests.

The collectors under test write to the real SDK; an InMemoryMetricReader
collects what they recorded, as an exporter would see it.
"""

from __future__ import annotations

from typing import Any, Iterator

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from obsctl.instruments import Instruments, MountAttributes
from obsctl.telemetry import in_memory_instruments


def in_memory(attrs: MountAttributes) -> tuple[InMemoryMetricReader, Instruments]:
    """A reader and the instruments of one mount on a fresh MeterProvider
    (:func:`obsctl.telemetry.in_memory_instruments`)."""
    return in_memory_instruments(attrs)


def data_points(reader: InMemoryMetricReader, name: str | None = None) -> Iterator[tuple[Any, dict[str, Any], Any]]:
    """``(metric, attributes, value)`` for every data point collected now.

    ``value`` is the point's value, or ``(count, sum)`` for a histogram.
    ``name`` keeps only that metric.
    """
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if name is not None and metric.name != name:
                    continue
                for dp in metric.data.data_points:
                    value = dp.value if hasattr(dp, "value") else (dp.count, dp.sum)
                    yield metric, dict(dp.attributes), value


def points(reader: InMemoryMetricReader, attrs: MountAttributes) -> dict[tuple[str, frozenset], Any]:
    """``{(metric name, frozenset(labels other than bucket/impl/mountpoint)): value}``.

    Asserts that every point carries the mount's ``bucket`` and ``impl``.
    """
    out = {}
    for metric, labels, value in data_points(reader):
        assert labels.pop("bucket") == attrs.bucket
        assert labels.pop("impl") == attrs.impl
        labels.pop("mountpoint", None)
        out[(metric.name, frozenset(labels.items()))] = value
    return out
