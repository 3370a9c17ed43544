"""Rates and latency percentiles for ``obsctl top``, from two state-file snapshots.

Pure functions over the JSON objects that the supervisor (and ``obsctl
sidecar``) write to RUNTIME_DIR/mounts/*.json every poll (2 s by default).
The ``live`` member of those objects (:meth:`obsctl.instruments.Instruments.live`)
holds cumulative counters only; everything per second is computed here from
the difference between two snapshots of the same supervisor, divided by the
difference of their ``live.time`` (the writer's clock, so the interval is
the one the counters really covered, not the reader's refresh period).

Rules, all the ones Prometheus applies to counters:

* a counter that went down was reset (a new supervisor process): the
  increase over the interval is its new value (as ``rate()``/``increase()``);
* a snapshot from another supervisor (``pid`` or ``started_at`` changed) is
  not compared with the old one: the rates are unknown (None) until the next
  snapshot of the new process;
* percentiles are estimated from the per-bucket increase of the latency
  histogram with linear interpolation inside the bucket where the rank
  falls, like PromQL's ``histogram_quantile``: the lowest bucket starts at
  0 ms; a rank in the +Inf bucket returns the highest finite bound
  (30000 ms), so such a value means "at least that".

Nothing here reads a file or the clock; :mod:`obsctl.top` does the I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

MIB = 1024 * 1024

#: How many opcodes (by operations in the interval) and requesting processes
#: a row shows.
BUSIEST_OPCODES = 3
TOP_REQUESTERS = 3


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) of a histogram, in the unit of ``bounds``.

    Args:
        q: the quantile, 0.5 for the median, 0.99 for p99.
        bounds: ascending finite upper bounds (OpenTelemetry explicit bucket
            boundaries, here :data:`obsctl.instruments.LATENCY_BUCKETS_MS`).
        counts: observations per bucket, NOT cumulative, ``len(bounds) + 1``
            long (the last one is the +Inf bucket); bucket ``i`` holds the
            values ``bounds[i-1] < v <= bounds[i]``.

    Returns:
        The estimate (see the module docstring), or None when there is no
        observation.

    Raises:
        ValueError: ``q`` outside [0, 1] or ``counts`` of the wrong length.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} bucket counts for {len(bounds)} bounds (need bounds + 1 for +Inf)")
    total = float(sum(counts))
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        if cumulative + count >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            upper = float(bounds[i])
            return lower + (upper - lower) * max(0.0, rank - cumulative) / count
        cumulative += count
    return float(bounds[-1])  # only reached through float rounding at q == 1


def increase(new: float, old: float | None) -> float:
    """Counter increase from ``old`` to ``new``; a decrease is a reset (returns ``new``)."""
    if old is None or new < old:
        return float(new)
    return float(new - old)


@dataclass
class OpcodeRow:
    """One opcode of a mount over the interval: operations/s and latency in ms
    (None when no operation of it was timed in the interval)."""

    opcode: str
    ops_per_s: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class MountRow:
    """What ``obsctl top`` shows for one mount.

    Rates are per second over ``interval_s`` (None on the first snapshot of a
    supervisor, or when the state has no ``live`` member: an older obsctl).
    Byte rates are MiB/s (2**20 bytes). ``requesters`` is None when the state
    has no ``requesters`` key (the kernel source is off), else the busiest
    ``(comm[pid], requests/s)`` pairs.
    """

    name: str
    mountpoint: str
    impl: str
    state: str
    health: str | None
    pid: int | None
    interval_s: float | None = None
    read_mib_s: float | None = None
    write_mib_s: float | None = None
    ops_per_s: float | None = None
    errors_per_s: float | None = None
    driver_read_mib_s: float | None = None
    driver_write_mib_s: float | None = None
    waiting: int | None = None
    opcodes: list[OpcodeRow] = field(default_factory=list)
    requesters: list[tuple[str, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy (``obsctl top --json``)."""
        out = asdict(self)
        if self.requesters is not None:
            out["requesters"] = [{"requester": r, "requests_per_s": v} for r, v in self.requesters]
        return out


def same_process(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two snapshots come from the same supervisor run."""
    return old.get("pid") == new.get("pid") and old.get("started_at") == new.get("started_at")


def _requesters(state: dict[str, Any]) -> dict[str, float] | None:
    live = state.get("live") or {}
    value = state.get("requesters", live.get("requesters"))
    return value if isinstance(value, dict) else None


def _driver_io(state: dict[str, Any], key: str) -> float | None:
    value = (state.get("driver_io") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def mount_row(new: dict[str, Any], old: dict[str, Any] | None) -> MountRow:
    """The row of one mount from its latest snapshot ``new`` and an older one.

    Args:
        new: the latest state object of the mount (as ``obsctl status --json``).
        old: an earlier state object of the same mountpoint, or None. It is
            only compared when it is from the same process and its
            ``live.time`` is older; otherwise the rates are None.

    Returns:
        A :class:`MountRow`. Never raises on missing keys: an absent member
        shows as None.
    """
    live = new.get("live") or {}
    row = MountRow(
        name=str(new.get("name") or new.get("source") or ""),
        mountpoint=str(new.get("mountpoint", "")),
        impl=str(new.get("impl", "")),
        state=str(new.get("state", "")),
        health=new.get("health"),
        pid=new.get("pid"),
        waiting=live.get("waiting"),
    )
    requesters_now = _requesters(new)
    if requesters_now is not None:
        row.requesters = []
    old_live = (old or {}).get("live") or {}
    if (not live or not old_live or old is None or not same_process(old, new)
            or row.state == "dead"):
        return row
    dt = float(live.get("time", 0)) - float(old_live.get("time", 0))
    if dt <= 0:
        return row
    row.interval_s = dt

    def rate(key: str) -> float:
        return increase(float(live.get(key, 0)), old_live.get(key)) / dt

    row.read_mib_s = rate("read_bytes") / MIB
    row.write_mib_s = rate("write_bytes") / MIB
    row.ops_per_s = rate("ops")
    row.errors_per_s = rate("errors")
    for key, attr in (("read_bytes", "driver_read_mib_s"), ("write_bytes", "driver_write_mib_s")):
        now, before = _driver_io(new, key), _driver_io(old, key)
        if now is not None and before is not None:
            setattr(row, attr, increase(now, before) / dt / MIB)

    bounds = live.get("latency_bounds_ms") or []
    old_ops = old_live.get("ops_by_opcode") or {}
    old_buckets = old_live.get("latency_buckets") or {}
    ops_delta = {op: increase(n, old_ops.get(op)) for op, n in (live.get("ops_by_opcode") or {}).items()}
    busiest = sorted((op for op, n in ops_delta.items() if n > 0), key=lambda op: (-ops_delta[op], op))
    for op in busiest[:BUSIEST_OPCODES]:
        p50 = p99 = None
        buckets = (live.get("latency_buckets") or {}).get(op)
        if buckets and len(buckets) == len(bounds) + 1:
            before = old_buckets.get(op) or [0] * len(buckets)
            if len(before) != len(buckets) or any(b < a for a, b in zip(before, buckets)):
                before = [0] * len(buckets)  # reset: the whole new histogram is the increase
            delta = [b - a for a, b in zip(before, buckets)]
            p50 = histogram_quantile(0.5, bounds, delta)
            p99 = histogram_quantile(0.99, bounds, delta)
        row.opcodes.append(OpcodeRow(op, ops_delta[op] / dt, p50, p99))

    if requesters_now is not None:
        requesters_old = _requesters(old) or {}
        per_s = {who: increase(float(n), requesters_old.get(who)) / dt
                 for who, n in requesters_now.items() if isinstance(n, (int, float))}
        row.requesters = sorted(((w, v) for w, v in per_s.items() if v > 0),
                                key=lambda item: (-item[1], item[0]))[:TOP_REQUESTERS]
    return row


class Tracker:
    """Keeps, per mountpoint, the two latest distinct snapshots, so every
    refresh shows the rates of the latest state interval (the supervisor
    writes its state every poll, 2 s by default, while top redraws every
    second: a refresh that sees the same snapshot again keeps its rates)."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._previous: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _time(state: dict[str, Any]) -> float | None:
        value = (state.get("live") or {}).get("time")
        return float(value) if isinstance(value, (int, float)) else None

    def update(self, states: list[dict[str, Any]]) -> list[MountRow]:
        """Feed the states read now (:func:`obsctl.statefile.read_states`); returns one
        row per state, in the given order. Mounts that disappeared are forgotten."""
        seen = set()
        rows = []
        for state in states:
            key = str(state.get("mountpoint", ""))
            seen.add(key)
            latest = self._latest.get(key)
            if latest is None or self._time(state) != self._time(latest) or not same_process(latest, state):
                if latest is not None:
                    self._previous[key] = latest
                self._latest[key] = state
            rows.append(mount_row(state, self._previous.get(key)))
        for key in list(self._latest):
            if key not in seen:
                self._latest.pop(key, None)
                self._previous.pop(key, None)
        return rows

    def changed_since(self, times: dict[str, float | None]) -> bool:
        """True when every mount in ``times`` (mountpoint -> ``live.time`` seen
        at the start) has a newer snapshot now (``obsctl top --once`` waits
        for this before printing)."""
        return all(self._time(self._latest.get(mp, {})) != t for mp, t in times.items())

    def times(self) -> dict[str, float | None]:
        """mountpoint -> ``live.time`` of the latest snapshot."""
        return {mp: self._time(state) for mp, state in self._latest.items()}
