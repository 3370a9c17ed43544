"""A fixture that serves what rust-dkg-engine serves on its metrics address.

Run as a script (``python tests/support/real_node.py --help``) or start it
with :func:`start`. It listens on 127.0.0.1 (port 0 = a free port chosen by
the kernel); the first stdout line is ``listening 127.0.0.1:PORT``.

Where each fact comes from. NODE = github.com/zeroxbt/rust-dkg-engine at
2b3201c627b0d2375947289216ba95415dce29ab (Cargo.toml: version 0.2.14);
EXP = github.com/metrics-rs/metrics, tag metrics-exporter-prometheus-v0.17.2
(NODE Cargo.lock pins metrics-exporter-prometheus 0.17.2, metrics 0.24.3).

The exporter
* NODE src/logger/mod.rs:74-76: ``PrometheusBuilder::new()
  .with_http_listener(bind_address).install()`` - no buckets, no quantiles,
  no global labels, no idle timeout are set, and the node never calls
  ``describe_counter/gauge/histogram`` (``git grep describe_`` finds
  nothing), so there is no ``# HELP`` line (EXP recorder.rs:120-123 writes
  one only for a described metric) and no unit suffix.
* Without buckets every ``histogram!`` is a *summary* (EXP distribution.rs:
  114-122 and 126-139: ``# TYPE name summary``), with the default quantiles
  0, 0.5, 0.9, 0.95, 0.99, 0.999, 1 (EXP exporter/builder.rs:57), written as
  the value's ``Display`` (``0``, ``0.5`` ... ``1``) in a ``quantile`` label
  that comes after the metric's own labels (EXP formatting.rs:84-107), then
  ``NAME_sum`` and ``NAME_count`` (EXP recorder.rs:214-231). Never
  ``_bucket``.
* The quantiles cover a rolling window of 3 buckets x 20 s = 60 s (EXP
  distribution.rs:14-18, 256-268); with no sample in it a quantile is ``0``
  (EXP recorder.rs:174 ``unwrap_or(0.0)``). ``_count`` and ``_sum`` count
  every sample since the start (EXP distribution.rs:162-164, 194-196, 63-67).
  The real sketch (metrics-util ``Summary``) has a bounded relative error;
  this fixture computes exact nearest-rank quantiles over the window.
* Families are written counters first, then gauges, then summaries (EXP
  recorder.rs:119, 140, 161), each ``# TYPE`` line followed by its samples
  and one empty line (recorder.rs:137, 158, 234). Counters and ``_count`` are
  integers (``u64``, recorder.rs:127, 223), gauges, quantiles and ``_sum``
  are ``f64`` ``Display`` (no exponent: ``0.0001``, ``1`` for 1.0).
* Labels keep the order the ``counter!``/``histogram!`` call gives them (EXP
  formatting.rs:12-26, an IndexMap). Content-Type is ``text/plain``, and any
  path but ``/health`` serves the metrics (EXP exporter/http_listener.rs:
  133-137).

The metrics (NODE crates/dkg-observability/src/)
* command.rs:6-10 ``node_command_total{command, status}`` counter;
  command.rs:15-19 ``node_command_duration_seconds{command, status}`` and
  command.rs:24-28 ``node_command_execution_delay_seconds{command, status}``
  summaries; command.rs:33 ``node_command_queue_depth`` and command.rs:37
  ``node_command_queue_fill_ratio`` (clamped to 0..1) gauges, no labels.
* task.rs:6-10 ``node_task_runs_total{task, status}`` counter, task.rs:12-16
  ``node_task_duration_seconds{task, status}`` summary, task.rs:21-25
  ``node_task_cadence_seconds{task}`` summary (seconds between two starts).

The values (NODE src/)
* Command status: ``expired`` (commands/executor.rs:139-143: total, execution
  delay and duration), ``completed`` (executor.rs:149-151: the same three),
  ``rejected_shutdown`` (commands/scheduler.rs:60, 95), ``rejected_channel_closed``
  (scheduler.rs:72, 119-122), ``rejected_queue_full`` (scheduler.rs:110-113,
  only ``try_schedule``: inbound peer requests). A rejected command records
  ``node_command_total`` only, no duration and no delay.
* Command names are the enum variants (commands/registry.rs:53-55
  ``stringify!($variant)``; variants at registry.rs:121-151).
* Queue: depth / COMMAND_QUEUE_SIZE = 256 (commands/constants.rs:9,
  scheduler.rs:29-38, executor.rs:154-163).
* Task status: ``completed`` or ``panicked`` (tasks/periodic/runner.rs:31,
  35); after a panic the runner re-raises it (runner.rs:36
  ``resume_unwind``): that task never runs again until the node restarts.
  The cadence is recorded from the second run on (runner.rs:21-23).
* Task names and periods: ``sharding_table_check`` every 10 s
  (tasks/periodic/tasks/sharding_table_check/task.rs:19, 333), ``dial_peers``
  every 30 s (dial_peers/task.rs:16, 82), ``proving`` every 300 s
  (proving/mod.rs:22, proving/task.rs:133).

What it does: every ``--interval`` seconds (default 0.2) one round: for each
command of :data:`COMMANDS` it records ``--mix`` (``STATUS=N,...``: N
commands of each status per round, default ``completed=20``), so the share
of commands not completed is exactly :func:`not_completed_share` over every
round; it sets the queue gauges from ``--queue-depth``; each task of
:data:`TASKS` but ``--panicked-task`` runs once (cadence = the measured time
since its previous start). ``--panicked-task NAME`` gives that task a past:
``--task-history`` completed runs at its real period, then one panic, and it
never runs again (runner.rs:36), as a node whose task died before the scrape
began.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: tests/ on the path for ``support``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import node_script  # noqa: E402

#: command names (NODE src/commands/registry.rs:121-151, Command::name()
#: = stringify!(variant), registry.rs:53-55); inbound Handle* commands are
#: the ones try_schedule can reject with rejected_queue_full
COMMANDS: tuple[str, ...] = ("HandleGetRequest", "HandlePublishStoreRequest", "SendPublishStoreRequests")
#: task name -> its period in seconds (NODE, see the module docstring)
TASKS: dict[str, float] = {"sharding_table_check": 10.0, "dial_peers": 30.0, "proving": 300.0}
#: every command status the node records (NODE executor.rs, scheduler.rs)
COMMAND_STATUSES: tuple[str, ...] = (
    "completed", "expired", "rejected_shutdown", "rejected_channel_closed", "rejected_queue_full")
#: statuses that record a duration and an execution delay (executor.rs:141-151)
EXECUTED_STATUSES: tuple[str, ...] = ("completed", "expired")
#: COMMAND_QUEUE_SIZE (NODE src/commands/constants.rs:9)
COMMAND_QUEUE_SIZE = 256
#: default quantiles (EXP exporter/builder.rs:57)
QUANTILES: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
#: rolling summary window: 3 buckets of 20 s (EXP distribution.rs:14-18)
SUMMARY_WINDOW_S = 3 * 20.0


def rust_f64(value: float) -> str:
    """``value`` as Rust's ``impl Display for f64`` writes it: the shortest
    round-trip digits, never an exponent, no ``.0`` for whole numbers
    (``1.0`` -> ``1``, ``1e-05`` -> ``0.00001``), ``NaN``, ``inf``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def parse_mix(text: str) -> dict[str, int]:
    """``"completed=16,expired=2,rejected_queue_full=2"`` -> ordered dict.

    Raises:
        ValueError: an unknown status (names the known ones), a count that
            is not a whole number >= 0, or no command at all.
    """
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        status, sep, count = part.partition("=")
        if not sep or status not in COMMAND_STATUSES:
            raise ValueError(f"--mix: {part!r} is not STATUS=N with STATUS one of "
                             f"{', '.join(COMMAND_STATUSES)}")
        if not count.isdigit():
            raise ValueError(f"--mix: count of {status!r} must be a whole number >= 0, not {count!r}")
        mix[status] = mix.get(status, 0) + int(count)
    if sum(mix.values()) == 0:
        raise ValueError("--mix: at least one command per round is needed")
    return mix


def not_completed_share(mix: dict[str, int]) -> float:
    """Share (0..1) of the commands of ``mix`` whose status is not completed."""
    return 1 - mix.get("completed", 0) / sum(mix.values())


class Summary:
    """One summary series as the exporter keeps it: every (time, value)
    sample for the rolling quantiles, cumulative count and sum."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.count = 0
        self.sum = 0.0

    def _expire(self, now: float) -> None:
        while self.samples and self.samples[0][0] <= now - SUMMARY_WINDOW_S:
            self.samples.popleft()

    def record(self, value: float, at: float) -> None:
        if not self.samples or at >= self.samples[-1][0]:
            self.samples.append((at, value))
        else:  # a sample from the past (panicked_past): keep time order
            self.samples = deque(sorted((*self.samples, (at, value))))
        self.count += 1
        self.sum += value
        self._expire(time.monotonic())

    def quantiles(self, now: float) -> list[tuple[float, float]]:
        self._expire(now)
        window = sorted(v for _t, v in self.samples)
        out = []
        for q in QUANTILES:
            if not window:
                out.append((q, 0.0))  # EXP recorder.rs:174
                continue
            rank = max(1, math.ceil(q * len(window)))
            out.append((q, window[rank - 1]))
        return out


Labels = tuple[tuple[str, str], ...]


class Registry:
    """The node's metric families, rendered as metrics-exporter-prometheus
    0.17.2 renders them (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[str, dict[Labels, int]] = OrderedDict()
        self.gauges: dict[str, dict[Labels, float]] = OrderedDict()
        self.summaries: dict[str, dict[Labels, Summary]] = OrderedDict()

    def counter(self, name: str, labels: Labels, by: int = 1) -> None:
        with self.lock:
            family = self.counters.setdefault(name, OrderedDict())
            family[labels] = family.get(labels, 0) + by

    def gauge(self, name: str, value: float) -> None:
        with self.lock:
            self.gauges.setdefault(name, OrderedDict())[()] = value

    def histogram(self, name: str, labels: Labels, value: float, at: float | None = None) -> None:
        with self.lock:
            family = self.summaries.setdefault(name, OrderedDict())
            family.setdefault(labels, Summary()).record(value, time.monotonic() if at is None else at)

    def render(self) -> str:
        def line(name: str, labels: Labels, value: str, extra: tuple[str, str] | None = None) -> str:
            pairs = [f'{k}="{v}"' for k, v in labels] + ([f'{extra[0]}="{extra[1]}"'] if extra else [])
            return f"{name}{{{','.join(pairs)}}} {value}\n" if pairs else f"{name} {value}\n"

        now = time.monotonic()
        out: list[str] = []
        with self.lock:
            for name, family in self.counters.items():
                out.append(f"# TYPE {name} counter\n")
                out += [line(name, labels, str(v)) for labels, v in family.items()]
                out.append("\n")
            for name, family in self.gauges.items():
                out.append(f"# TYPE {name} gauge\n")
                out += [line(name, labels, rust_f64(v)) for labels, v in family.items()]
                out.append("\n")
            for name, family in self.summaries.items():
                out.append(f"# TYPE {name} summary\n")
                for labels, s in family.items():
                    out += [line(name, labels, rust_f64(v), ("quantile", rust_f64(q)))
                            for q, v in s.quantiles(now)]
                    out.append(line(f"{name}_sum", labels, rust_f64(s.sum)))
                    out.append(line(f"{name}_count", labels, str(s.count)))
                out.append("\n")
        return "".join(out)


def record_command(reg: Registry, command: str, status: str, duration_s: float, delay_s: float) -> None:
    """What the node records for one command of ``status`` (executor.rs:141-151,
    scheduler.rs: a rejected command has only the counter)."""
    reg.counter("node_command_total", (("command", command), ("status", status)))
    if status in EXECUTED_STATUSES:
        labels = (("command", command), ("status", status))
        reg.histogram("node_command_execution_delay_seconds", labels, delay_s)
        reg.histogram("node_command_duration_seconds", labels, duration_s)


def record_queue(reg: Registry, depth: int) -> None:
    """command.rs:32-38: depth and depth / COMMAND_QUEUE_SIZE clamped to 0..1."""
    reg.gauge("node_command_queue_depth", float(depth))
    reg.gauge("node_command_queue_fill_ratio", min(1.0, max(0.0, depth / COMMAND_QUEUE_SIZE)))


def record_task_run(reg: Registry, task: str, status: str, duration_s: float, at: float | None = None) -> None:
    """task.rs:5-18."""
    labels = (("task", task), ("status", status))
    reg.counter("node_task_runs_total", labels)
    reg.histogram("node_task_duration_seconds", labels, duration_s, at)


def record_task_cadence(reg: Registry, task: str, cadence_s: float, at: float | None = None) -> None:
    """task.rs:20-26."""
    reg.histogram("node_task_cadence_seconds", (("task", task),), cadence_s, at)


def panicked_past(reg: Registry, task: str, history: int) -> None:
    """``history`` completed runs of ``task`` at its period, then a panic,
    all before now (runner.rs:18-38: cadence from the second start on)."""
    period = TASKS[task]
    start = time.monotonic() - (history + 1) * period - SUMMARY_WINDOW_S
    for i in range(history + 1):
        at = start + i * period
        if i:
            record_task_cadence(reg, task, period, at)
        record_task_run(reg, task, "completed" if i < history else "panicked", 0.05, at)


class _Handler(BaseHTTPRequestHandler):
    registry: Registry

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"OK" if self.path == "/health" else self.registry.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve the node's metrics and record rounds until
    SIGTERM/SIGINT.

    Raises:
        SystemExit: bad arguments (argparse's message and exit code 2).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = free port)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between rounds")
    parser.add_argument("--mix", default="completed=20",
                        help="commands per round and command, STATUS=N,... (statuses: "
                             + ", ".join(COMMAND_STATUSES) + ")")
    parser.add_argument("--queue-depth", type=int, default=3,
                        help=f"commands waiting in the queue (0..{COMMAND_QUEUE_SIZE})")
    parser.add_argument("--panicked-task", choices=sorted(TASKS),
                        help="a task that panicked before the scrape began and never runs again")
    parser.add_argument("--task-history", type=int, default=5,
                        help="with --panicked-task: its completed runs before the panic")
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= args.queue_depth <= COMMAND_QUEUE_SIZE:
        parser.error(f"--queue-depth must be between 0 and {COMMAND_QUEUE_SIZE}")
    if args.task_history < 1:
        parser.error("--task-history must be at least 1")

    reg = Registry()
    record_queue(reg, 0)  # scheduler.rs:24-25 at start-up
    if args.panicked_task:
        panicked_past(reg, args.panicked_task, args.task_history)
    handler = type("Handler", (_Handler,), {"registry": reg})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    stop = node_script.stop_on_signals()
    live_tasks = [t for t in TASKS if t != args.panicked_task]
    last_start: dict[str, float] = {}
    n = 0
    while True:
        n += 1
        for command in COMMANDS:
            for status, count in mix.items():
                for i in range(count):
                    # deterministic durations: 10..50 ms, an expired command
                    # is dropped before it runs (executor.rs:139-144)
                    duration = 0.00002 if status == "expired" else 0.01 * (1 + (n + i) % 5)
                    delay = 0.2 * (1 + i % 3) if status == "expired" else 0.001 * (1 + i % 4)
                    record_command(reg, command, status, duration, delay)
        record_queue(reg, args.queue_depth)
        for task in live_tasks:
            started = time.monotonic()
            if task in last_start:
                record_task_cadence(reg, task, started - last_start[task])
            last_start[task] = started
            record_task_run(reg, task, "completed", 0.002 * (1 + n % 3))
        if n == 1:
            # first round recorded: every series exists before the first scrape
            node_script.announce(server.server_port)
        if stop.wait(args.interval):
            break
    server.shutdown()
    return 0


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """Run this script with ``args`` in a child process: :func:`support.node_script.start`."""
    return node_script.start(__file__, "real-node fixture", *args)


if __name__ == "__main__":
    sys.exit(run())
