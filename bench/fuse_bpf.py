"""eBPF source vs tracefs source vs no obsctl, in one run, through bindfs.

Run as root from the venv that has obsctl (about 1-2 min)::

    sudo .venv/bin/python bench/fuse_bpf.py [--files 3000] [--workers 2] [--read-mib 256] [--runs 2]

Workloads (from bench/fuse_trace.py): ``meta``, ``--files`` small files
created, stat'ed and unlinked by ``--workers`` processes (a metadata storm);
``seqread``, one ``--read-mib`` MiB file read with 1 MiB reads after
dropping the page cache. Variants, interleaved per run on one bindfs mount:

* ``none``: no collector;
* ``tracefs``: :class:`~obsctl.collectors.fuse_trace.FuseTraceCollector`;
* ``ebpf``: :class:`~obsctl.collectors.fuse_bpf.FuseBpfCollector`;

each collector in a child process (this file with ``--collector SOURCE MP``)
polling every 0.5 s and recording into the real OpenTelemetry SDK (an
in-memory reader), so its CPU time (``getrusage``) is its own. The kernel's
own count of the run's requests: a separate tracefs instance with a 64 MiB
per-CPU buffer and both fuse events enabled, read after the run (``trace``,
not ``trace_pipe``: no reader competes during the run), its lines counted
and its ``overrun`` checked to be 0. Printed per workload and variant
(medians of ``--runs``): FUSE requests/s, obsctl CPU s per 100k requests,
events lost (tracefs ``overrun``; eBPF ``map_full``), requests counted vs
the kernel's count, and for eBPF the programs' own kernel time per request
(``kernel.bpf_stats_enabled``, ``bpftool prog show``: run_time_ns/run_cnt)
and the loader's start time and RSS.

Writes bench/results/fuse_bpf-latest.json. Never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from _common import log, poll_until_stdin_closes, write_results  # noqa: E402  (bench/_common.py)
import fuse_trace as ft  # noqa: E402  (bench/fuse_trace.py: workloads, mount helpers)
from support.kernel_count import KernelCount as _KernelCount  # noqa: E402

TRACEFS = "/sys/kernel/tracing"


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1))


def collector_main(source: str, mountpoint: str) -> None:
    """Child: run one source's collector on ``mountpoint`` until stdin closes; print stats JSON."""
    from obsctl.instruments import MountAttributes
    from support.metrics import in_memory

    _reader, ins = in_memory(MountAttributes("", "bench", mountpoint))
    rss0 = rss_kib()
    t0 = time.perf_counter()
    if source == "ebpf":
        from obsctl.collectors import fuse_bpf

        probe, reason = fuse_bpf.shared_probe()
        if probe is None:
            print(json.dumps({"error": reason}), flush=True)
            return
        col = fuse_bpf.FuseBpfCollector(ins, mountpoint, probe, reason)
    else:
        from obsctl.collectors.fuse_trace import FuseTraceCollector, detect_support

        col = FuseTraceCollector(ins, mountpoint, support=detect_support(disabled=False))
    col.poll()
    start_s = time.perf_counter() - t0
    rss1 = rss_kib()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    poll_until_stdin_closes(col)
    stats = col.stats()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    col.close()
    stats.update(cpu_s=ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
                 ops=ins.totals.get("obsctl_fs_ops", 0), start_s=start_s, rss_kib_before=rss0,
                 rss_kib_after_start=rss1, rss_kib_end=rss_kib())
    print(json.dumps(stats), flush=True)


class KernelCount(_KernelCount):
    """tests/support/kernel_count.py's count under ``obsctl-bench-count-PID``; :meth:`result` as this bench reports it."""

    def __init__(self, conn: str) -> None:
        super().__init__(conn, prefix="bench", tracefs=TRACEFS)

    def result(self) -> dict:
        """``{"ends", "sends", "overrun"}`` of the run."""
        counts = self.counts()
        return {"ends": counts["ends"], "sends": counts["sends"], "overrun": counts["overrun"]}


PROG_NAMES = ("tp_send", "tp_end", "request_end", "bg_start", "bg_exit",
              "sync_start3", "sync_exit3", "sync_start2", "sync_exit2")


def bpf_prog_stats(names: tuple[str, ...] = PROG_NAMES) -> dict:
    """{program name: (run_cnt, run_time_ns)} of loaded programs with those names."""
    out: dict = {}
    try:
        progs = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                                          check=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return out
    for p in progs:
        if p.get("name") in names:
            cnt, ns = out.get(p["name"], (0, 0))
            out[p["name"]] = (cnt + p.get("run_cnt", 0), ns + p.get("run_time_ns", 0))
    return out


def connection_of(mp: str) -> str:
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if fields[4] == mp:
                return fields[2].split(":")[1]
    raise RuntimeError(f"{mp} not mounted")


def run_variant(mp: str, work, variant: str) -> dict:
    counter = KernelCount(connection_of(mp))
    child = None
    try:
        if variant != "none":
            child = subprocess.Popen([sys.executable, __file__, "--collector", variant, mp],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            first = child.stdout.readline().strip()
            if first != "ready":
                raise RuntimeError(f"{variant} collector did not start: {first}")
        bpf0 = bpf_prog_stats() if variant == "ebpf" else {}
        seconds = work()
        bpf1 = bpf_prog_stats() if variant == "ebpf" else {}
        out: dict = {"seconds": seconds, "kernel": counter.result()}
        if child is not None:
            time.sleep(0.6)
            stdout, _err = child.communicate("", timeout=120)
            out.update(json.loads(stdout.strip().splitlines()[-1]))
            ops = out.get("ops") or 1
            out["cpu_per_100k"] = out["cpu_s"] * 100_000 / ops
        if bpf1:
            cnt = sum(v[0] for v in bpf1.values()) - sum(v[0] for v in bpf0.values())
            ns = sum(v[1] for v in bpf1.values()) - sum(v[1] for v in bpf0.values())
            out["bpf_runs"], out["bpf_ns"] = cnt, ns
        out["requests_per_s"] = out["kernel"]["ends"] / seconds
        return out
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        counter.close()


def bench(mp: str, workloads: dict, runs: int) -> dict:
    results: dict = {}
    for wname, work in workloads.items():
        work()  # warm-up
        rows: dict = {"none": [], "tracefs": [], "ebpf": []}
        for _run in range(runs):
            for variant in rows:
                rows[variant].append(run_variant(mp, work, variant))
        results[wname] = rows
        for variant, rs in rows.items():
            rps = statistics.median(r["requests_per_s"] for r in rs)
            kern = [r["kernel"]["ends"] for r in rs]
            line = f"{wname:8} {variant:8} requests/s {rps:>9.0f}  kernel ends {kern}"
            if variant != "none":
                counted = [int(r.get("ops", 0)) for r in rs]
                lost = [r.get("lost", r.get("map_full", 0)) for r in rs]
                cpu = statistics.median(r["cpu_per_100k"] for r in rs)
                line += f"  counted {counted}  lost {lost}  obsctl cpu/100k req {cpu:6.2f} s"
            if variant == "ebpf" and rs[0].get("bpf_runs"):
                per = statistics.median(r["bpf_ns"] / max(1, r["kernel"]["ends"]) for r in rs)
                line += f"  bpf kernel ns/request {per:5.0f}"
                line += (f"  start {rs[0]['start_s'] * 1000:.0f} ms  RSS +{rs[0]['rss_kib_after_start'] - rs[0]['rss_kib_before']} KiB")
            overrun = [r["kernel"]["overrun"] for r in rs]
            if any(overrun):
                line += f"  (kernel count overrun {overrun}: not exact)"
            log(line)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--collector", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--read-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if args.collector:
        collector_main(*args.collector)
        return 0
    if os.geteuid() != 0:
        log("run as root (FUSE mounts, tracefs, BPF)")
        return 1
    from obsctl.collectors.fuse_trace import ensure_tracefs

    ensure_tracefs()
    stats_file = "/proc/sys/kernel/bpf_stats_enabled"
    stats_before = open(stats_file).read().strip() if os.path.exists(stats_file) else None
    results: dict = {"kernel": os.uname().release, "cpus": os.cpu_count(), "args": vars(args)}
    work = tempfile.mkdtemp(prefix="obsctl-bench-fuse-bpf-")
    proc = None
    try:
        if stats_before is not None:
            with open(stats_file, "w") as fh:
                fh.write("1\n")
        src, mp = os.path.join(work, "src"), os.path.join(work, "bindfs")
        os.makedirs(src)
        os.makedirs(mp)
        with open(os.path.join(src, "read.bin"), "wb") as fh:
            for _mib in range(args.read_mib):
                fh.write(os.urandom(1 << 20))
        proc = subprocess.Popen(["bindfs", "-f", src, mp])
        ft.wait_mounted(mp)
        results["bindfs"] = bench(mp, {
            "meta": lambda: ft.meta(mp, args.files, args.workers),
            "seqread": lambda: ft.seqread(os.path.join(mp, "read.bin"))}, args.runs)
    finally:
        if stats_before is not None:
            with open(stats_file, "w") as fh:
                fh.write(stats_before + "\n")
        subprocess.run(["fusermount3", "-u", "-z", os.path.join(work, "bindfs")], capture_output=True, check=False)
        if proc is not None:
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    write_results("fuse_bpf", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
