"""``obsctl top``: a live terminal view of every obsctl mount on this host.

Reads the per-mount state files that ``obsctl status`` reads
(:func:`obsctl.statefile.read_states`, RUNTIME_DIR/mounts/*.json, rewritten by each
supervisor every poll: 2 s by default) once per refresh (1 s by default) and
shows, per mount: name, mountpoint, driver, state/health, read and write
MiB/s through the mount, FUSE operations/s, errors/s, requests waiting in
the kernel, the bytes/s the driver process moved (/proc/PID/io), the busiest
opcodes with their p50/p99 latency, and the processes issuing the most
requests when the state carries ``requesters`` (the kernel source).

The rate and percentile math is in :mod:`obsctl.topstats`. The terminal UI
is rich (``rich.live.Live``); it is imported here only, and this module is
imported only by ``obsctl top``, so ``obsctl mount`` never loads it.

``--once`` prints a single frame and exits (for scripts): it waits until
every running mount has written a newer state than the one first read (at
most ``--wait`` seconds), so its rates cover one whole state interval. When
stdout is not a terminal the frame is plain text without escape codes.
``--json`` prints the same rows as a JSON array instead (implies ``--once``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Callable

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from obsctl import paths, statefile
from obsctl.topstats import MountRow, Tracker

#: Width of a frame printed to something that is not a terminal (a pipe or a
#: file has no width): wide enough that no cell is folded (the table is only
#: as wide as its content); $COLUMNS overrides it.
PLAIN_WIDTH = 1000


class StateDirError(Exception):
    """The state directory cannot be listed (permission, not a directory)."""


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _state(row: MountRow) -> str:
    if row.health and row.health != "ok":
        return f"{row.state}/{row.health}"
    return row.state + ("/ok" if row.health == "ok" else "")


def render(rows: list[MountRow], now: float, interval: float) -> Any:
    """The rich renderable of one frame: a header line and one table row per mount."""

    header = Text(f"obsctl top  {time.strftime('%H:%M:%S', time.localtime(now))}  "
                  f"{len(rows)} mount{'s' if len(rows) != 1 else ''}  refresh {interval:g} s  "
                  "(rates over the last state interval; latency ms p50/p99)")
    if not rows:
        return Group(header, Text("no mounts run by obsctl on this host"))
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    for title, justify in (("NAME", "left"), ("MOUNTPOINT", "left"), ("IMPL", "left"), ("STATE", "left"),
                           ("READ MiB/s", "right"), ("WRITE MiB/s", "right"), ("OPS/s", "right"),
                           ("ERR/s", "right"), ("WAIT", "right"), ("DRV R/W MiB/s", "right"),
                           ("BUSIEST OPCODES  ops/s p50/p99", "left"), ("TOP REQUESTERS  req/s", "left")):
        table.add_column(title, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        opcodes = "\n".join(f"{o.opcode} {o.ops_per_s:.0f} {_ms(o.p50_ms)}/{_ms(o.p99_ms)}"
                            for o in row.opcodes) or "-"
        if row.requesters is None:
            requesters = "n/a (kernel source off)"
        else:
            requesters = "\n".join(f"{who} {rate:.0f}" for who, rate in row.requesters) or "-"
        driver = (f"{_num(row.driver_read_mib_s)}/{_num(row.driver_write_mib_s)}"
                  if row.driver_read_mib_s is not None or row.driver_write_mib_s is not None else "-")
        table.add_row(row.name, row.mountpoint, row.impl, _state(row), _num(row.read_mib_s, 2),
                      _num(row.write_mib_s, 2), _num(row.ops_per_s, 0), _num(row.errors_per_s, 1),
                      "-" if row.waiting is None else str(row.waiting), driver, opcodes, requesters)
    return Group(header, table)


def _console(force_plain: bool = False) -> Any:
    if force_plain or not sys.stdout.isatty():
        width = int(os.environ.get("COLUMNS") or PLAIN_WIDTH)
        return Console(file=sys.stdout, force_terminal=False, no_color=True, highlight=False,
                       width=width, emoji=False)
    return Console(highlight=False, emoji=False)


def sample_once(read: Callable[[], list[dict[str, Any]]], wait: float, step: float = 0.1,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> list[MountRow]:
    """Read the states, wait until every running mount wrote a newer one (at
    most ``wait`` seconds, checking every ``step`` s), and return the rows."""
    tracker = Tracker()
    tracker.update(read())
    start = {mp: t for mp, t in tracker.times().items() if t is not None}
    deadline = clock() + wait
    rows = tracker.update(read())
    while start and not tracker.changed_since(start) and clock() < deadline:
        sleep(step)
        rows = tracker.update(read())
    return rows


def run(once: bool = False, as_json: bool = False, interval: float = 1.0, wait: float = 5.0,
        runtime_dir: str | None = None) -> int:
    """Run ``obsctl top``; returns the exit status (0; Ctrl-C or SIGTERM ends the live view with 0).

    Args:
        once: print one frame and exit.
        as_json: print the rows as a JSON array (implies ``once``).
        interval: seconds between refreshes of the live view (> 0).
        wait: ``--once``: at most this many seconds to wait for every mount's
            next state write (the supervisor writes every 2 s by default).
        runtime_dir: where the state files are (default: :func:`obsctl.paths.runtime_dir`).

    Returns 1, with a message on stderr, when the state directory cannot be
    read (permission, not a directory).
    """
    directory = runtime_dir or paths.runtime_dir()

    def read() -> list[dict[str, Any]]:
        try:
            return statefile.read_states(directory, strict=True)
        except OSError as exc:
            where = os.path.join(directory, "mounts")
            raise StateDirError(
                f"cannot read the mount states in {where}: {exc.strerror or exc} "
                "(run obsctl top as root or as a member of the directory's group, "
                "or set OBSCTL_RUNTIME_DIR to where obsctl mount writes them)") from None

    try:
        return _run(read, once, as_json, interval, wait)
    except StateDirError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return 1


def _run(read: Callable[[], list[dict[str, Any]]], once: bool, as_json: bool, interval: float,
         wait: float) -> int:
    if once or as_json:
        rows = sample_once(read, wait)
        if as_json:
            print(json.dumps([r.as_dict() for r in rows], indent=2))
            return 0
        console = _console()
        if console.is_terminal:
            console.print(render(rows, time.time(), interval))
        else:  # plain text for scripts: no escape codes, no padding blanks at line ends
            with console.capture() as capture:
                console.print(render(rows, time.time(), interval))
            sys.stdout.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))
        return 0

    # Ctrl-C (SIGINT) and SIGTERM only set a flag, checked every 50 ms: no
    # KeyboardInterrupt can then land in the middle of a redraw or of Live's
    # screen restore and end the process by the signal instead of exit 0.
    stopping: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    console = _console()
    tracker = Tracker()
    with Live(render(tracker.update(read()), time.time(), interval), console=console,
              auto_refresh=False, screen=console.is_terminal, transient=False) as live:
        while not stopping:
            deadline = time.monotonic() + interval
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if not stopping:
                live.update(render(tracker.update(read()), time.time(), interval), refresh=True)
    return 0
