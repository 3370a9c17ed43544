"""A node of the rollout plan's shape: histograms, status ok/error (the "plan shape" fixture).

Run as a script (``python tests/support/synthetic_node.py --help``). It
drives the real OpenTelemetry SDK: instruments on a MeterProvider whose only
reader is the ``opentelemetry-exporter-prometheus`` PrometheusMetricReader,
served by ``prometheus_client`` on 127.0.0.1 (port 0 = a free port chosen by
the kernel). The first stdout line is ``listening 127.0.0.1:PORT``.

The Node overview dashboard and the node alerts must work on two shapes
(docs/observability.md, "The node metrics"): what rust-dkg-engine really
serves (summaries, its status values: tests/support/real_node.py) and this
one, the rollout plan's: every duration a *histogram* (``_bucket`` with
``le``), command status ``ok`` | ``error``, task status ``success`` |
``failure``. It emits:

* the plan's list: ``node_command_total{command, status}`` counter,
  ``node_command_duration_seconds{command, status}`` histogram,
  ``node_task_runs_total{task, status}`` counter,
  ``node_task_duration_seconds{task, status}`` histogram;
* in the plan's shape, the real node's metrics the dashboard reads and the
  plan did not list (names and labels as rust-dkg-engine's
  crates/dkg-observability/src/command.rs:24-37 and task.rs:20-26 define
  them): ``node_command_execution_delay_seconds{command, status}`` and
  ``node_task_cadence_seconds{task}`` histograms,
  ``node_command_queue_depth`` and ``node_command_queue_fill_ratio`` gauges.

The plan's ``node_sync_last_success_unix`` is gone: the real node has no
such gauge and nothing reads it any more.

Every ``--interval`` seconds (default 0.2) it runs one "command" per name of
:data:`COMMANDS` (``--error-ratio`` of them fail, decided by a counter, not
a random draw, so the ratio is exact over every 1/ratio commands) and one
"task" per name of :data:`TASKS` (``--failure-ratio`` of them fail); the
queue gauges say ``--queue-depth`` of :data:`QUEUE_SIZE`. Durations are the
real wall time of a short sleep (``--work-seconds``) and the cadence the
measured time between two starts of a task, so the histograms hold measured
values.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

if __package__ in (None, ""):  # run as a script: tests/ on the path for ``support``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import node_script  # noqa: E402

#: command names the node "serves" (label ``command``)
COMMANDS: tuple[str, ...] = ("get_block", "submit_tx")
#: background tasks it "runs" (label ``task``)
TASKS: tuple[str, ...] = ("compact", "snapshot")
#: bucket boundaries in seconds for both duration histograms: 1 ms to 10 s,
#: the range of an RPC command or a background task of a node
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: queue capacity the fill ratio is relative to: rust-dkg-engine's
#: COMMAND_QUEUE_SIZE (src/commands/constants.rs:9)
QUEUE_SIZE = 256


def _every_nth(ratio: float) -> int:
    """1 failure every N events for ``ratio`` (0 = never)."""
    return 0 if ratio <= 0 else max(1, round(1 / ratio))


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve the metrics and emit until SIGTERM/SIGINT.

    Raises:
        SystemExit: bad arguments (argparse's message and exit code 2).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = free port)")
    parser.add_argument("--instance-id", default="synthetic-node", help="service.instance.id")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between rounds")
    parser.add_argument("--work-seconds", type=float, default=0.002,
                        help="measured sleep per command/task (seconds)")
    parser.add_argument("--error-ratio", type=float, default=0.0,
                        help="fraction of commands with status=error (0..1)")
    parser.add_argument("--failure-ratio", type=float, default=0.25,
                        help="fraction of task runs with status=failure (0..1)")
    parser.add_argument("--queue-depth", type=int, default=3,
                        help=f"commands waiting in the queue (0..{QUEUE_SIZE})")
    args = parser.parse_args(argv)
    for name in ("error_ratio", "failure_ratio"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if not 0 <= args.queue_depth <= QUEUE_SIZE:
        parser.error(f"--queue-depth must be between 0 and {QUEUE_SIZE}")

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    server, _thread = start_http_server(args.port, addr="127.0.0.1", registry=registry)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "synthetic-node",
                                  "service.instance.id": args.instance_id}),
        metric_readers=[reader], shutdown_on_exit=False)
    meter = provider.get_meter("obsctl.tests.synthetic_node")

    # names chosen so the Prometheus translation shows them as documented:
    # a counter gets "_total", unit "s" becomes the "_seconds" suffix
    commands = meter.create_counter("node_command", unit="", description="Commands served")
    command_s = meter.create_histogram(
        "node_command_duration", unit="s", description="Command latency",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S))
    tasks = meter.create_counter("node_task_runs", unit="", description="Task runs")
    task_s = meter.create_histogram(
        "node_task_duration", unit="s", description="Task run duration",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S))
    delay_s = meter.create_histogram(
        "node_command_execution_delay", unit="s", description="Command wait before it runs",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S))
    cadence_s = meter.create_histogram(
        "node_task_cadence", unit="s", description="Seconds between two starts of a task",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S))

    def observe_depth(_options: CallbackOptions) -> list[Observation]:
        return [Observation(args.queue_depth)]

    def observe_fill(_options: CallbackOptions) -> list[Observation]:
        return [Observation(args.queue_depth / QUEUE_SIZE)]

    meter.create_observable_gauge("node_command_queue_depth", callbacks=[observe_depth], unit="",
                                  description="Commands waiting in the queue")
    meter.create_observable_gauge("node_command_queue_fill_ratio", callbacks=[observe_fill], unit="",
                                  description="Queue depth / queue capacity (0..1)")
    last_start: dict[str, float] = {}

    stop = node_script.stop_on_signals()
    node_script.announce(server.server_port)

    err_every, fail_every = _every_nth(args.error_ratio), _every_nth(args.failure_ratio)

    def work(kind: str, names: tuple[str, ...], count: Any, duration: Any, statuses: tuple[str, str],
             every: int, n: int) -> None:
        """One round of ``names``: each sleeps work_seconds; every ``every``-th round ends in statuses[1]."""
        for name in names:
            started = time.monotonic()
            time.sleep(args.work_seconds)
            labels = {kind: name, "status": statuses[1] if every and n % every == 0 else statuses[0]}
            count.add(1, labels)
            duration.record(time.monotonic() - started, labels)
            if kind == "command":
                delay_s.record(args.work_seconds / 2, labels)
            else:
                if name in last_start:
                    cadence_s.record(started - last_start[name], {"task": name})
                last_start[name] = started

    n = 0
    while not stop.is_set():
        n += 1
        work("command", COMMANDS, commands, command_s, ("ok", "error"), err_every, n)
        work("task", TASKS, tasks, task_s, ("success", "failure"), fail_every, n)
        stop.wait(args.interval)
    server.shutdown()
    provider.shutdown()
    return 0


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """Run this script with ``args`` in a child process: :func:`support.node_script.start`."""
    return node_script.start(__file__, "synthetic node", *args)


if __name__ == "__main__":
    sys.exit(run())
