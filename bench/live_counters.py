"""What the ``live`` counters of ``obsctl top`` cost the supervisor.

Run from the venv that has obsctl (no root, no mount needed)::

    .venv/bin/python bench/live_counters.py [--ops 200000] [--runs 5]

Two numbers, each the median of ``--runs`` interleaved runs:

1. per FUSE operation: ``Instruments.record_fs_op(opcode, latency_ms)`` (the
   OTel counter, obsctl's own latency histogram, which is also what
   ``obsctl top`` reads (obsctl.histograms), and the local per-opcode count)
   against the bare OTel SDK doing the same (``fs_ops.add`` plus an SDK
   histogram's ``record`` with the same buckets, which is what record_fs_op
   did before obsctl kept its histograms itself).
   Printed: microseconds per operation for each and their ratio;
2. per state write: ``Instruments.live()`` plus ``json.dumps(indent=1)`` of
   it, with ``--opcodes`` opcodes that all have latency buckets (rclone's
   log names about 20 FUSE operations), in microseconds, and its size in
   bytes (the state file is rewritten every poll, 2 s by default).

The SDK is a MeterProvider with an in-memory reader (no exporter), so
network time does not hide the difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from obsctl.instruments import LATENCY_BUCKETS_MS, MountAttributes
from obsctl.telemetry import in_memory_instruments

OPCODES = ["read", "write", "lookup", "getattr", "open", "flush", "release", "readdir", "create", "unlink",
           "mkdir", "rmdir", "rename", "setattr", "fsync", "opendir", "releasedir", "statfs", "access",
           "truncate"]


def fresh():
    return in_memory_instruments(MountAttributes("bench", "rclone", "/mnt/bench"))[1]


def with_live(n: int) -> float:
    ins = fresh()
    start = time.perf_counter()
    for i in range(n):
        ins.record_fs_op("read", 0.7 + (i & 7))
    return (time.perf_counter() - start) / n * 1e6


def bare_otel(n: int) -> float:
    ins = fresh()
    sdk_histogram = ins.meter.create_histogram("bench_latency_ms",
                                               explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS_MS))
    base = ins.attrs.base()
    start = time.perf_counter()
    for i in range(n):
        labels = {"opcode": "read", **base}
        ins.fs_ops.add(1, labels)
        ins._count("obsctl_fs_ops", 1)
        sdk_histogram.record(0.7 + (i & 7), labels)
    return (time.perf_counter() - start) / n * 1e6


def state_write(opcodes: int, repeat: int = 2000) -> tuple[float, int]:
    ins = fresh()
    for op in OPCODES[:opcodes]:
        for ms in (0.07, 0.3, 2, 40, 600):
            ins.record_fs_op(op, ms)
    start = time.perf_counter()
    for _rep in range(repeat):
        text = json.dumps(ins.live(), indent=1)
    return (time.perf_counter() - start) / repeat * 1e6, len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--opcodes", type=int, default=len(OPCODES))
    args = parser.parse_args()
    live_us, bare_us, write_us = [], [], []
    size = 0
    for _run in range(args.runs):
        bare_us.append(bare_otel(args.ops))
        live_us.append(with_live(args.ops))
        us, size = state_write(args.opcodes)
        write_us.append(us)
    live, bare = statistics.median(live_us), statistics.median(bare_us)
    print(f"record_fs_op with live counters: {live:.2f} us/op; bare OTel counter+histogram: {bare:.2f} us/op; "
          f"ratio {live / bare:.3f} (median of {args.runs} runs of {args.ops} ops)")
    print(f"live() + json.dumps for {args.opcodes} opcodes: {statistics.median(write_us):.0f} us per state write, "
          f"{size} bytes")


if __name__ == "__main__":
    main()
