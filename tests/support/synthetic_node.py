"""A synthetic node that emits the pilot metric set (DESIGN section 6a).

Run as a script (``python tests/support/synthetic_node.py --help``). It
drives the real OpenTelemetry SDK: instruments on a MeterProvider whose only
reader is the ``opentelemetry-exporter-prometheus`` PrometheusMetricReader,
served by ``prometheus_client`` on 127.0.0.1 (port 0 = a free port chosen by
the kernel). The first stdout line is ``listening 127.0.0.1:PORT``.

The label contract it emits is the one docs/observability.md documents
("The node metrics: label contract"):

* ``node_command_total{command, status}`` counter, status ``ok`` | ``error``;
* ``node_command_duration_seconds{command, status}`` histogram, seconds;
* ``node_task_runs_total{task, status}`` counter, status ``success`` | ``failure``;
* ``node_task_duration_seconds{task, status}`` histogram, seconds;
* ``node_sync_last_success_unix`` gauge, Unix time in seconds of the last
  successful sync (no labels besides job/instance).

Every ``--interval`` seconds (default 0.2) it runs one "command" per name of
:data:`COMMANDS` (``--error-ratio`` of them fail, decided by a counter, not
a random draw, so the ratio is exact over every 1/ratio commands), one
"task" per name of :data:`TASKS` (``--failure-ratio`` of them fail) and, when
``--sync-stuck`` is not given, one successful sync. With ``--sync-stuck``
the last success stays ``--sync-age`` seconds before the start, as a node
whose sync stopped making progress. Durations are the real wall time of a
short sleep (``--work-seconds``), so the histograms hold measured values.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

#: command names the node "serves" (label ``command``)
COMMANDS: tuple[str, ...] = ("get_block", "submit_tx")
#: background tasks it "runs" (label ``task``)
TASKS: tuple[str, ...] = ("compact", "snapshot")
#: bucket boundaries in seconds for both duration histograms: 1 ms to 10 s,
#: the range of an RPC command or a background task of a node
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


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
    parser.add_argument("--sync-stuck", action="store_true",
                        help="never advance node_sync_last_success_unix")
    parser.add_argument("--sync-age", type=float, default=3600.0,
                        help="with --sync-stuck: age in seconds of the last success")
    args = parser.parse_args(argv)
    for name in ("error_ratio", "failure_ratio"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")

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
    last_sync = [time.time() - args.sync_age if args.sync_stuck else time.time()]

    def observe_sync(_options: CallbackOptions) -> list[Observation]:
        return [Observation(last_sync[0])]

    meter.create_observable_gauge(
        "node_sync_last_success_unix", callbacks=[observe_sync], unit="",
        description="Unix time (s) of the last successful sync")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    signal.signal(signal.SIGINT, lambda *_a: stop.set())
    print(f"listening 127.0.0.1:{server.server_port}", flush=True)

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

    n = 0
    while not stop.is_set():
        n += 1
        work("command", COMMANDS, commands, command_s, ("ok", "error"), err_every, n)
        work("task", TASKS, tasks, task_s, ("success", "failure"), fail_every, n)
        if not args.sync_stuck:
            last_sync[0] = time.time()
        stop.wait(args.interval)
    server.shutdown()
    provider.shutdown()
    return 0


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """Run this script with ``args`` in a child process (``sys.executable``).

    Returns the process (stdout piped, text) and its ``127.0.0.1:PORT``
    scrape target once it listens. Raises AssertionError with what the
    child said when its first line is not the ``listening`` line."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening 127.0.0.1:"):
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"synthetic node {args}: {line!r}")
    return proc, line.split(" ", 1)[1]


if __name__ == "__main__":
    sys.exit(run())
