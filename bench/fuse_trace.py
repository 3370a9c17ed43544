"""Can the kernel collector keep up? And what does rclone's debug log cost?

Run as root from the venv that has obsctl, moto[server] and boto3 (< 2 min)::

    sudo .venv/bin/python bench/fuse_trace.py [--files 1500] [--read-mib 128] [--runs 2]

Part 1, the kernel collector (collectors/fuse_trace). For bindfs (a local
directory) and s3fs (a moto_server bucket on 127.0.0.1) it mounts the bare
driver and runs each workload twice, collector off and on, interleaved:

* ``meta``: ``--files`` small files (64 bytes) created, stat'ed and
  unlinked by ``--workers`` processes in parallel (s3fs: ``--s3fs-files``,
  every create is an S3 PUT);
* ``seqread``: one file of ``--read-mib`` MiB (s3fs: ``--s3fs-read-mib``)
  read with 1 MiB reads after dropping the page cache.

"on" runs :class:`~obsctl.collectors.fuse_trace.FuseTraceCollector` in a
child process (this file with ``--collector MOUNTPOINT``) recording into the
real OpenTelemetry SDK (an in-memory reader), so its CPU time is its own
(``getrusage``). Printed per run: FUSE requests (the collector's pairs),
events/s handled, collector CPU seconds per 100k requests, events lost
(``overrun`` of the instance's ``per_cpu/cpu*/stats``: what the kernel
overwrote before the reader got it), chunks handled in counting mode, and
the workload's throughput ratio on/off (medians of ``--runs``). Also: the
reader's capacity on one core (the real capture parsed in a loop, full and
counting mode) and a "starved" storm (collector at nice 19, 4 writers on 2
cores) that shows what happens when the reader falls behind.

Part 2, rclone's log level: the same metadata + read workload on a bare
``rclone mount`` at ``--log-level DEBUG`` (what obsctl needed for FUSE
numbers before the kernel source) and at ``INFO`` (what it runs now on 6.18+),
stdout/stderr read and discarded by this process; printed: rclone's CPU
seconds (utime+stime of /proc/PID/stat), log bytes, and the saving.

Part 3, ``--compare REV``: the tracefs collector of git revision REV (its
src/obsctl/collectors/fuse_trace.py, loaded from ``git show``) against this
tree's, in one run: reader capacity on the capture (full and counting mode)
and a live bindfs metadata storm with each collector in turn (interleaved
``--runs`` times), printing obsctl CPU per request, requests counted, the
lost counter (new only) and the kernel's own count (bench/fuse_bpf.py's
64 MiB second instance). Only this part runs with ``--compare``.

Writes bench/results/fuse_trace-latest.json (``--compare``:
fuse_trace-compare-latest.json). Never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from _common import log, poll_until_stdin_closes, remove_work, write_results  # noqa: E402  (bench/_common.py)


def load_revision(rev: str):
    """The ``fuse_trace`` module of git revision ``rev`` (its source from ``git show``), imported
    under another name; it uses this tree's obsctl for everything else."""
    import importlib.util

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/obsctl/collectors/fuse_trace.py"],
                            capture_output=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="obsctl-bench-rev-")) / "fuse_trace_rev.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("fuse_trace_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuse_trace_rev"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def collector_main(mountpoint: str, rev: str | None = None) -> None:
    """Child: trace ``mountpoint`` until stdin closes; print stats JSON."""
    from obsctl.collectors import fuse_trace
    from obsctl.instruments import MountAttributes
    from support.metrics import in_memory

    module = load_revision(rev) if rev else fuse_trace
    _reader, ins = in_memory(MountAttributes("", "bench", mountpoint))
    col = module.FuseTraceCollector(ins, mountpoint, support=module.detect_support(disabled=False))
    col.poll()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)  # imports and set-up are not the reader's cost
    poll_until_stdin_closes(col)
    stats = col.stats()
    col.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    stats.update(cpu_s=ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
                 ops=ins.totals.get("obsctl_fs_ops", 0))
    print(json.dumps(stats), flush=True)


def _meta_worker(args: tuple[str, int, int]) -> int:
    base, worker, n = args
    d = os.path.join(base, f"w{worker}")
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        p = os.path.join(d, f"f{i}")
        with open(p, "wb") as fh:
            fh.write(b"x" * 64)
        os.stat(p)
        os.unlink(p)
    return n


def meta(mp: str, files: int, workers: int) -> float:
    start = time.perf_counter()
    with Pool(workers) as pool:
        pool.map(_meta_worker, [(mp, w, files // workers) for w in range(workers)])
    return time.perf_counter() - start


def seqread(path: str) -> float:
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 20):
            pass
    return time.perf_counter() - start


def wait_mounted(mp: str, timeout: float = 20) -> None:
    from support.obsctl import is_mounted  # the tests' mount-table reader
    from support.waiting import wait_until

    wait_until(lambda: is_mounted(mp), timeout, f"{mp} did not mount", interval=0.05)
    os.stat(mp)


def run_variant(mp: str, work, on: bool, nice: int = 0) -> dict:
    child = None
    if on:
        child = subprocess.Popen(["nice", "-n", str(nice), sys.executable, __file__, "--collector", mp],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
    seconds = work()
    out: dict = {"seconds": seconds}
    if child is not None:
        time.sleep(0.5)
        stdout, _stderr = child.communicate("", timeout=60)
        stats = json.loads(stdout.strip().splitlines()[-1])
        ops = stats["ops"] or 1
        out.update(stats, events_per_s=stats["events"] / seconds, cpu_per_100k=stats["cpu_s"] * 100_000 / ops)
    return out


def bench_driver(name: str, mp: str, workloads: dict, runs: int, nice: int = 0) -> dict:
    results: dict = {}
    for wname, work in workloads.items():
        rows = {"off": [], "on": []}
        work()  # warm-up (directories, caches, moto), not counted
        for _run in range(runs):
            for variant in ("off", "on"):
                rows[variant].append(run_variant(mp, work, variant == "on", nice))
        off = statistics.median(r["seconds"] for r in rows["off"])
        on = statistics.median(r["seconds"] for r in rows["on"])
        best = sorted(rows["on"], key=lambda r: r["seconds"])[len(rows["on"]) // 2]
        results[wname] = {"off_s": off, "on_s": on, "throughput_ratio": off / on, "on_runs": rows["on"]}
        log(f"{name:7} {wname:8} requests {best['ops']:>8.0f}  events/s {best['events_per_s']:>9.0f}  "
            f"cpu/100k req {best['cpu_per_100k']:6.2f} s  lost {sum(r['lost'] for r in rows['on']):>6}  "
            f"counting-mode chunks {sum(r['degraded_chunks'] for r in rows['on']):>3}  "
            f"throughput on/off {off / on:5.3f}")
    return results


def compare(rev: str, mp: str, files: int, workers: int, runs: int) -> dict:
    """Part 3 (see module doc)."""
    import fuse_bpf as fb  # bench/fuse_bpf.py: the kernel's own count

    from obsctl.collectors import fuse_trace

    out: dict = {"rev": rev, "capacity": {}, "storm": {"old": [], "new": []}}
    old_module = load_revision(rev)
    for name, module in (("old", old_module), ("new", fuse_trace)):
        out["capacity"][name] = reader_capacity(module=module, label=f"{name} ({rev if name == 'old' else 'tree'})")

    def ft_meta() -> float:
        return meta(mp, files, workers)

    ft_meta()  # warm-up
    for _run in range(runs):
        for name in ("old", "new"):
            counter = fb.KernelCount(fb.connection_of(mp))
            try:
                child = subprocess.Popen([sys.executable, __file__, "--collector", mp]
                                         + (["--collector-rev", rev] if name == "old" else []),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert child.stdout.readline().strip() == "ready"
                seconds = ft_meta()
                time.sleep(0.6)
                stdout, _err = child.communicate("", timeout=120)
                row = json.loads(stdout.strip().splitlines()[-1])
                row.update(seconds=seconds, kernel=counter.result())
            finally:
                counter.close()
            out["storm"][name].append(row)
    for name, rows in out["storm"].items():
        for row in rows:
            row["cpu_us_per_request"] = row["cpu_s"] * 1e6 / max(1, row["kernel"]["sends"])
        med = statistics.median(r["cpu_us_per_request"] for r in rows)
        log(f"storm   {name}: obsctl cpu/request {med:6.1f} us (median of {len(rows)})  requests/s "
            f"{statistics.median(r['kernel']['sends'] / r['seconds'] for r in rows):8.0f}  counted "
            f"{[int(r['ops']) for r in rows]}  lost {[r.get('requests_lost', '-') for r in rows]}  kernel "
            f"{[r['kernel']['sends'] for r in rows]}  counting mode {[r.get('degradations', r['degraded_chunks']) for r in rows]}")
    old = statistics.median(r["cpu_us_per_request"] for r in out["storm"]["old"])
    new = statistics.median(r["cpu_us_per_request"] for r in out["storm"]["new"])
    out["storm_cpu_ratio_new_old"] = new / old if old else None
    cap = out["capacity"]
    log(f"ratios new/old: storm cpu/request {new / old:5.2f}; capacity full {cap['new']['full'] / cap['old']['full']:5.2f}x, "
        f"counting {cap['new']['counting'] / cap['old']['counting']:5.2f}x")
    return out


def reader_capacity(seconds: float = 3.0, module=None, label: str = "") -> dict:
    """Requests per CPU-second the parser handles, full mode and counting mode,
    on the real capture tests/fixtures/fuse_trace/bindfs-6.18.txt (174 requests)
    fed repeatedly: the rate above which a live reader must fall behind."""
    from obsctl.collectors import fuse_trace
    from obsctl.instruments import MountAttributes
    from support.metrics import in_memory

    module = module or fuse_trace
    FuseTraceCollector, KernelSupport = module.FuseTraceCollector, module.KernelSupport  # noqa: N806
    data = (ROOT / "tests/fixtures/fuse_trace/bindfs-6.18.txt").read_bytes()
    out = {}
    for mode, full in (("full", False), ("counting", True)):
        _reader, ins = in_memory(MountAttributes("", "bench", "/m"))
        col = FuseTraceCollector(ins, "/m", tracefs="/nonexistent", support=KernelSupport("paired", "", ""),
                                 recover_after=10 ** 9)
        n, start = 0, time.process_time()
        while time.process_time() - start < seconds:
            col.feed_chunk(data, full=full)
            n += 174
        out[mode] = n / (time.process_time() - start)
    log(f"reader  {label} capacity (one core, parse + OpenTelemetry SDK): full {out['full']:,.0f} requests/s, "
        f"counting mode {out['counting']:,.0f} requests/s")
    return out


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_rclone_log(endpoint: str, bucket: str, keys: tuple[str, str], work_dir: str, files: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_CA")}
    env.update(RCLONE_CONFIG_OBSCTL_TYPE="s3", RCLONE_CONFIG_OBSCTL_PROVIDER="Other",
               RCLONE_CONFIG_OBSCTL_ENV_AUTH="false", RCLONE_CONFIG_OBSCTL_ENDPOINT=endpoint,
               RCLONE_CONFIG_OBSCTL_ACCESS_KEY_ID=keys[0], RCLONE_CONFIG_OBSCTL_SECRET_ACCESS_KEY=keys[1])
    out = {}
    for level in ("DEBUG", "INFO", "DEBUG", "INFO"):
        mp = tempfile.mkdtemp(dir=work_dir)
        proc = subprocess.Popen(["rclone", "mount", f"obsctl:{bucket}", mp, "--config", "", "--use-json-log",
                                 "--log-level", level], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logged = [0]

        def drain(stream, counter):
            for chunk in iter(lambda: stream.read(65536), b""):
                counter[0] += len(chunk)

        reader = threading.Thread(target=drain, args=(proc.stdout, logged), daemon=True)
        reader.start()
        wait_mounted(mp)
        cpu0 = proc_cpu(proc.pid)
        meta(mp, files, 1)
        seqread(os.path.join(mp, "read.bin"))
        cpu = proc_cpu(proc.pid) - cpu0
        subprocess.run(["fusermount3", "-u", mp], check=False)
        proc.wait(20)
        reader.join(5)
        row = out.setdefault(level, {"cpu_s": [], "log_bytes": []})
        row["cpu_s"].append(cpu)
        row["log_bytes"].append(logged[0])
    dbg, info = min(out["DEBUG"]["cpu_s"]), min(out["INFO"]["cpu_s"])
    out["cpu_saved_fraction"] = (dbg - info) / dbg if dbg else None
    log(f"rclone  DEBUG cpu {dbg:.2f} s, log {max(out['DEBUG']['log_bytes']) / 1e6:.1f} MB;  INFO cpu {info:.2f} s, "
        f"log {max(out['INFO']['log_bytes']) / 1e3:.1f} kB;  saved {100 * (out['cpu_saved_fraction'] or 0):.0f} % "
        f"of rclone's CPU ({files} create/stat/unlink + seq read)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--collector", help=argparse.SUPPRESS)
    ap.add_argument("--collector-rev", help=argparse.SUPPRESS)
    ap.add_argument("--compare", metavar="REV", help="old collector (git revision) against this tree's")
    ap.add_argument("--files", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--read-mib", type=int, default=128)
    ap.add_argument("--s3fs-files", type=int, default=50)
    ap.add_argument("--s3fs-read-mib", type=int, default=16)
    ap.add_argument("--rclone-files", type=int, default=100)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if args.collector:
        collector_main(args.collector, args.collector_rev)
        return 0
    if os.geteuid() != 0:
        log("run as root (FUSE mounts, tracefs)")
        return 1
    from obsctl.collectors.fuse_trace import detect_support

    support = detect_support(disabled=False)
    log(f"kernel source: {support.level} ({support.reason})")
    if support.level != "paired":
        return 1
    from support.s3server import S3Server

    results: dict = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    work = tempfile.mkdtemp(prefix="obsctl-bench-fuse-trace-")
    procs: list[subprocess.Popen] = []
    try:
        src, mp = os.path.join(work, "src"), os.path.join(work, "bindfs")
        os.makedirs(src)
        os.makedirs(mp)
        with open(os.path.join(src, "read.bin"), "wb") as fh:
            for _mib in range(args.read_mib):
                fh.write(os.urandom(1 << 20))
        procs.append(subprocess.Popen(["bindfs", "-f", src, mp]))
        wait_mounted(mp)
        if args.compare:
            results["compare"] = compare(args.compare, mp, args.files, args.workers, args.runs)
            write_results("fuse_trace-compare", results)
            return 0
        results["reader_capacity"] = reader_capacity()
        results["bindfs"] = bench_driver("bindfs", mp, {
            "meta": lambda: meta(mp, args.files, args.workers),
            "seqread": lambda: seqread(os.path.join(mp, "read.bin"))}, args.runs)
        # a storm with the reader starved of CPU (nice 19, 4 writers on 2 cores):
        # shows what happens when it falls behind (lost, counting mode, mount speed)
        results["bindfs_starved"] = bench_driver("starved", mp, {
            "meta": lambda: meta(mp, args.files, 4)}, 1, nice=19)
        subprocess.run(["fusermount3", "-u", mp], check=False)

        with S3Server(auth=False) as s3:
            s3.create_bucket("bench", {"read.bin": os.urandom(args.s3fs_read_mib << 20)})
            s3mp = os.path.join(work, "s3fs")
            os.makedirs(s3mp)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_CA")}
            env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
            procs.append(subprocess.Popen(["s3fs", "bench", s3mp, "-f", "-o", f"url={s3.endpoint}",
                                           "-o", "use_path_request_style"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_mounted(s3mp)
            results["s3fs"] = bench_driver("s3fs", s3mp, {
                "meta": lambda: meta(s3mp, args.s3fs_files, args.workers),
                "seqread": lambda: seqread(os.path.join(s3mp, "read.bin"))}, args.runs)
            subprocess.run(["fusermount3", "-u", s3mp], check=False)
            if shutil.which("rclone"):
                results["rclone_log_level"] = bench_rclone_log(
                    s3.endpoint, "bench", (s3.access_key, s3.secret_key), work, args.rclone_files)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        remove_work(work)
    write_results("fuse_trace", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
