"""What obsctl costs on top of the bare FUSE driver: ready, unmount, read, RSS.

Run as root (FUSE mounts), from the venv that has obsctl, moto[server] and boto3::

    sudo /tmp/venv/bin/python bench/mount_overhead.py [--size-mib 1024] [--runs 5]

In one run it:

1. starts ``moto_server`` on loopback (tests/support/s3server.py, the tests' own)
   and uploads the object of ``--size-mib`` MiB with boto3's multipart
   ``upload_file``. moto copies the WHOLE object for every ranged GET and s3fs
   reads with many ~10 MiB ranged GETs, so s3fs reads a 1 GiB moto object at
   ~11 MiB/s (~90 s per read, quadratic in size): the s3fs variants read a
   second object of ``--s3fs-size-mib`` (default 256) MiB instead, which the
   output says. ``--s3fs-size-mib 1024`` restores one object for both;
2. starts the tests' OTLP receiver on loopback (tests/support/otlp_receiver.py:
   gRPC and http/protobuf, answers every Export with success, counts the calls),
   the ``remote`` telemetry target of obsctl;
3. for each variant and each run (variants interleaved round-robin, after one
   uncounted warm-up round), on a FRESH mount each time:

   * spawns the mount and measures *time to ready*: from just before the
     spawn until the mountpoint is in /proc/self/mountinfo with the expected
     fstype AND answers a stat (polled every 1 ms);
   * waits ``--settle`` (2 s) so obsctl is in its steady state (its first
     export runs 1 s after ready), then reads the whole object through the mount with 1 MiB reads (the mount
     is fresh, so the FUSE page cache is cold) -> MiB/s;
   * samples VmHWM/VmRSS of the process it spawned (obsctl's supervisor, or
     the bare driver) and of the driver below obsctl every 20 ms until exit,
     and for obsctl the peaks of RssAnon / RssFile (file-backed pages, shared
     between processes) and Pss (/proc/PID/smaps_rollup, every 0.2 s);
   * measures *time to unmount*: from ``fusermount3 -u`` (bare driver) or
     SIGTERM (obsctl) until the mount is gone from /proc/self/mountinfo AND
     the spawned process has exited (both moments are kept in the JSON:
     ``mount_gone_s``, ``exited_s``).

Variants (``--variants`` selects a subset):

* ``bare-rclone``: ``rclone mount obsctl:BUCKET MP --config ""`` with the same
  ``RCLONE_CONFIG_OBSCTL_*`` environment remote obsctl builds (type s3,
  provider Other, env_auth false, endpoint, keys), no other flag;
* ``bare-s3fs``: ``s3fs BUCKET MP -f -o url=ENDPOINT -o use_path_request_style``
  with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment;
* ``obsctl-rclone`` / ``obsctl-s3fs``: ``obsctl mount s3://BUCKET MP --impl X
  --endpoint ENDPOINT --otel-endpoint http://127.0.0.1:RX`` (telemetry mode
  remote, OTLP/gRPC to the local receiver);
* ``obsctl-rclone-http`` / ``obsctl-s3fs-http``: the same exporting
  OTLP http/protobuf (``--otel-protocol http/protobuf``) to a local HTTP sink;
* ``obsctl-rclone-none`` / ``obsctl-s3fs-none``: the same with
  ``--telemetry-config`` pointing to a file with ``mode = "none"``;
* ``obsctl-rclone-closed`` / ``obsctl-s3fs-closed``: mode remote to a loopback
  port where nothing listens (connection refused); ready and unmount only,
  no read (it shows what an unreachable collector costs at shutdown).

It prints a table and the overhead against the aims (ready delta <= +0.3 s,
unmount delta <= +0.1 s, throughput ratio >= 0.98, obsctl peak RSS <= 40 MiB),
marking each met or not, and writes the same as JSON to
bench/results/mount_overhead-latest.json. It never fails on a missed aim:
it is a benchmark that prints, not a test. It exits 1 only when it could not
measure at all (no moto, no driver, not root).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test support: one S3 server, one OTLP receiver, one mountinfo reader

from support.net import free_port  # noqa: E402
from support.obsctl import mount_entry  # noqa: E402
from support.otlp_receiver import OtlpReceiver  # noqa: E402
from support.s3server import S3Server  # noqa: E402

MiB = 1 << 20
BUCKET = "obsctl-bench"
KEY = "bench-object.bin"
S3FS_KEY = "bench-object-s3fs.bin"
S3FS_DEFAULT_MIB = 256
ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key-0123456789"
REMOTE = "obsctl"  # same env remote name obsctl's rclone driver uses
DEFAULT_JSON = REPO / "bench" / "results" / "mount_overhead-latest.json"

AIMS = {
    "ready_delta_s": 0.3,
    "unmount_delta_s": 0.1,
    "throughput_ratio": 0.98,
    "rss_mib": 40.0,
}

ALL_VARIANTS = ["bare-rclone", "obsctl-rclone", "obsctl-rclone-http", "obsctl-rclone-none", "obsctl-rclone-closed",
                "bare-s3fs", "obsctl-s3fs", "obsctl-s3fs-http", "obsctl-s3fs-none", "obsctl-s3fs-closed"]
DEFAULT_VARIANTS = ALL_VARIANTS
FSTYPE = {"rclone": "fuse.rclone", "s3fs": "fuse.s3fs"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# small helpers

def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS / RssAnon / RssFile in KiB from /proc/PID/status ({} when gone).

    RssFile is file-backed memory (shared libraries such as grpcio's
    cygrpc .so): one physical copy in the page cache is shared by every
    process that maps it. RssAnon is the process's own heap and stacks.
    """
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def pss_kib(pid: int) -> int | None:
    """Pss in KiB from /proc/PID/smaps_rollup: RSS with each shared page divided
    by the number of processes mapping it (None when gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of ``pid`` (s), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                kids += [int(x) for x in handle.read().split()]
    return kids


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


# ---------------------------------------------------------------------------
# S3 server (tests/support/s3server.py) and OTLP receiver (tests/support/otlp_receiver.py)

def upload_object(s3: S3Server, key: str, size_mib: int, workdir: Path) -> float:
    """Upload one object of ``size_mib`` MiB with boto3's multipart upload_file. Returns seconds."""
    from boto3.s3.transfer import TransferConfig

    client = s3.client(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    path = workdir / key
    block = 8 * MiB
    with open(path, "wb") as handle:
        left = size_mib * MiB
        while left:
            n = min(block, left)
            handle.write(os.urandom(n))
            left -= n
    started = time.perf_counter()
    client.upload_file(str(path), BUCKET, key, Config=TransferConfig(
        multipart_threshold=16 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4))
    elapsed = time.perf_counter() - started
    head = client.head_object(Bucket=BUCKET, Key=key)
    if head["ContentLength"] != size_mib * MiB:
        raise SystemExit(f"uploaded object has {head['ContentLength']} bytes, expected {size_mib * MiB}")
    path.unlink()
    return elapsed


def otlp_calls(receiver: OtlpReceiver) -> dict[str, int]:
    """``{"metrics grpc": n, "traces http/protobuf": n, ...}``: the exports the receiver got."""
    calls: dict[str, int] = {}
    for request in receiver.requests():
        key = f"{request.signal} {request.transport}"
        calls[key] = calls.get(key, 0) + 1
    return calls


# ---------------------------------------------------------------------------
# variants

@dataclass
class Variant:
    name: str
    driver: str  # rclone | s3fs
    kind: str  # bare | obsctl
    telemetry: str = ""  # remote | none | closed
    read: bool = True


def make_variant(name: str) -> Variant:
    parts = name.split("-")
    kind, driver = parts[0], parts[1]
    telemetry = parts[2] if len(parts) > 2 else ("remote" if kind == "obsctl" else "")
    return Variant(name, driver, kind, telemetry, read=telemetry != "closed")


@dataclass
class Ctx:
    workdir: Path
    endpoint: str
    obsctl: str
    otlp_port: int | None
    closed_port: int
    otlp_http_port: int | None
    none_config: Path
    sizes: dict[str, int]  # driver -> object size in bytes
    keys: dict[str, str]  # driver -> object key
    block: int
    settle: float = 2.0
    ready_timeout: float = 60.0
    base_env: dict[str, str] = field(default_factory=dict)


def command(v: Variant, ctx: Ctx, mp: str) -> tuple[list[str], dict[str, str]]:
    env = dict(ctx.base_env)
    if v.kind == "bare":
        env.pop("AWS_CA_BUNDLE", None)  # ENVIRONMENT.md: rclone 1.60 + http endpoint
        if v.driver == "rclone":
            p = f"RCLONE_CONFIG_{REMOTE.upper()}_"
            env.update({p + "TYPE": "s3", p + "PROVIDER": "Other", p + "ENV_AUTH": "false",
                        p + "ENDPOINT": ctx.endpoint, p + "ACCESS_KEY_ID": ACCESS_KEY,
                        p + "SECRET_ACCESS_KEY": SECRET_KEY})
            return ["rclone", "mount", f"{REMOTE}:{BUCKET}", mp, "--config", ""], env
        env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
        return ["s3fs", BUCKET, mp, "-f", "-o", f"url={ctx.endpoint}", "-o", "use_path_request_style"], env
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "OBSCTL_RUNTIME_DIR": str(ctx.workdir / "run"),
                # never pick up a host-wide /etc/obsctl/telemetry.toml
                "OBSCTL_TELEMETRY_CONFIG": str(ctx.workdir / "no-such-telemetry.toml")})
    argv = [ctx.obsctl, "mount", f"s3://{BUCKET}", mp, "--impl", v.driver, "--endpoint", ctx.endpoint]
    if v.telemetry == "remote":
        argv += ["--otel-endpoint", f"http://127.0.0.1:{ctx.otlp_port}"]
    elif v.telemetry == "http":
        argv += ["--otel-endpoint", f"http://127.0.0.1:{ctx.otlp_http_port}", "--otel-protocol", "http/protobuf"]
    elif v.telemetry == "closed":
        argv += ["--otel-endpoint", f"http://127.0.0.1:{ctx.closed_port}"]
    else:
        argv += ["--telemetry-config", str(ctx.none_config)]
    return argv, env


class Sampler(threading.Thread):
    """Samples VmHWM/VmRSS of ``pid`` and (for obsctl) its driver child every 20 ms until exit."""

    def __init__(self, pid: int, find_child: bool) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.find_child = find_child
        self.child: int | None = None
        self.hwm_kib = 0
        self.child_hwm_kib = 0
        self.anon_kib = 0  # max RssAnon
        self.file_kib = 0  # max RssFile
        self.pss_kib = 0  # max Pss (sampled every 0.2 s: smaps_rollup walks every mapping)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            st = proc_status(self.pid)
            if not st:
                break
            self.hwm_kib = max(self.hwm_kib, st.get("VmHWM", 0))
            self.anon_kib = max(self.anon_kib, st.get("RssAnon", 0))
            self.file_kib = max(self.file_kib, st.get("RssFile", 0))
            ticks = getattr(self, "_ticks", 0)
            self._ticks = ticks + 1
            if ticks % 10 == 0:
                self.pss_kib = max(self.pss_kib, pss_kib(self.pid) or 0)
            if self.find_child:
                if self.child is None or not os.path.exists(f"/proc/{self.child}"):
                    kids = children(self.pid)
                    self.child = kids[0] if kids else self.child
                if self.child:
                    cst = proc_status(self.child)
                    self.child_hwm_kib = max(self.child_hwm_kib, cst.get("VmHWM", 0))
            self.stop_event.wait(0.02)


def force_unmount(mp: str) -> None:
    if mount_entry(mp) is not None:
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, check=False)


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(5)


def read_through(path: str, block: int) -> tuple[int, float]:
    """Read ``path`` to the end with ``block``-sized read(2) calls. Returns (bytes, seconds)."""
    view = memoryview(bytearray(block))
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:  # FileIO: one read(2) per readinto
        while True:
            n = handle.readinto(view)
            if not n:
                break
            total += n
    return total, time.perf_counter() - started


def run_once(v: Variant, ctx: Ctx, run_no: int) -> dict[str, Any]:
    mp = str(ctx.workdir / f"mnt-{v.name}")
    os.makedirs(mp, exist_ok=True)
    force_unmount(mp)
    argv, env = command(v, ctx, mp)
    log_path = ctx.workdir / "logs" / f"{v.name}-{run_no}.log"
    log_path.parent.mkdir(exist_ok=True)
    result: dict[str, Any] = {"run": run_no, "ok": False}
    fstype = FSTYPE[v.driver]
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    sampler = Sampler(proc.pid, find_child=v.kind == "obsctl")
    sampler.start()
    try:
        # -- time to ready
        deadline = t0 + ctx.ready_timeout
        while True:
            if (mount_entry(mp) or {}).get("fstype") == fstype:
                os.stat(mp)
                ready = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before ready")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not ready within {ctx.ready_timeout:g} s")
            time.sleep(0.001)
        result["ready_s"] = ready
        # -- read
        # A mount is used some time after it is ready: obsctl attaches its
        # collectors and sends a first export ~1 s after ready. Settle past
        # that so every variant reads and unmounts in the steady state.
        time.sleep(ctx.settle)
        if v.read:
            driver_pid = sampler.child if v.kind == "obsctl" else proc.pid
            if v.kind == "obsctl" and driver_pid is None:
                kids = children(proc.pid)
                driver_pid = kids[0] if kids else None
            cpu0 = cpu_seconds(proc.pid), cpu_seconds(driver_pid)
            nbytes, secs = read_through(os.path.join(mp, ctx.keys[v.driver]), ctx.block)
            cpu1 = cpu_seconds(proc.pid), cpu_seconds(driver_pid)
            if nbytes != ctx.sizes[v.driver]:
                raise RuntimeError(f"read {nbytes} bytes, expected {ctx.sizes[v.driver]}")
            result["read_mib"] = nbytes / MiB
            result["read_s"] = secs
            result["mib_s"] = nbytes / MiB / secs
            st = proc_status(proc.pid)
            result["hwm_after_read_mib"] = st.get("VmHWM", 0) / 1024
            if v.kind == "obsctl":
                result["obsctl_cpu_read_s"] = (cpu1[0] - cpu0[0]) if None not in (cpu0[0], cpu1[0]) else None
                result["driver_cpu_read_s"] = (cpu1[1] - cpu0[1]) if None not in (cpu0[1], cpu1[1]) else None
            else:
                result["driver_cpu_read_s"] = (cpu1[0] - cpu0[0]) if None not in (cpu0[0], cpu1[0]) else None
        # -- unmount
        t1 = time.perf_counter()
        if v.kind == "bare":
            subprocess.run(["fusermount3", "-u", mp], capture_output=True, check=False)
        else:
            proc.send_signal(signal.SIGTERM)
        deadline = t1 + 60
        gone = exited = None
        while gone is None or exited is None:
            now = time.perf_counter()
            if gone is None and mount_entry(mp) is None:
                gone = now - t1
            if exited is None and proc.poll() is not None:
                exited = now - t1
            if now > deadline:
                raise RuntimeError("not unmounted / exited within 60 s")
            time.sleep(0.001)
        result["unmount_s"] = max(gone, exited)
        result["mount_gone_s"] = gone  # mount out of /proc/self/mountinfo
        result["exited_s"] = exited  # spawned process exited
        result["exit_code"] = proc.returncode
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
        result["error"] = str(exc)
    finally:
        sampler.stop_event.set()
        sampler.join(2)
        kill_group(proc)
        force_unmount(mp)
    hwm = sampler.hwm_kib / 1024
    if v.kind == "obsctl":
        result["obsctl_hwm_mib"] = hwm
        result["obsctl_anon_mib"] = sampler.anon_kib / 1024
        result["obsctl_file_mib"] = sampler.file_kib / 1024
        result["obsctl_pss_mib"] = sampler.pss_kib / 1024
        result["driver_hwm_mib"] = sampler.child_hwm_kib / 1024
    else:
        result["driver_hwm_mib"] = hwm
    text = log_path.read_text(errors="replace")
    if v.kind == "obsctl":
        m = re.search(r"mounted .* in ([0-9.]+) s", text)
        result["self_reported_ready_s"] = float(m.group(1)) if m else None
        result["said_mounted"] = "mounted" in text
    if not result["ok"]:
        result["log_tail"] = text[-1500:]
    return result


# ---------------------------------------------------------------------------
# summary

def summarize(variants: list[Variant], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for v in variants:
        ok = [r for r in results[v.name] if r.get("ok")]
        s: dict[str, Any] = {"runs_ok": len(ok), "runs_failed": len(results[v.name]) - len(ok)}
        for key in ("ready_s", "unmount_s", "mount_gone_s", "exited_s", "mib_s", "obsctl_hwm_mib", "driver_hwm_mib",
                    "obsctl_anon_mib", "obsctl_file_mib", "obsctl_pss_mib",
                    "obsctl_cpu_read_s", "driver_cpu_read_s", "self_reported_ready_s"):
            vals = [r[key] for r in ok if r.get(key) is not None]
            if vals:
                s[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        summary[v.name] = s
    return summary


def med(summary: dict[str, Any], name: str, key: str) -> float | None:
    return summary.get(name, {}).get(key, {}).get("median")


def overhead(variants: list[Variant], summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    names = {v.name for v in variants}
    for v in variants:
        if v.kind != "obsctl":
            continue
        bare = f"bare-{v.driver}"
        row: dict[str, Any] = {"variant": v.name, "baseline": bare if bare in names else None}
        s = summary[v.name]
        if bare in names:
            r_o, r_b = med(summary, v.name, "ready_s"), med(summary, bare, "ready_s")
            u_o, u_b = med(summary, v.name, "unmount_s"), med(summary, bare, "unmount_s")
            t_o, t_b = med(summary, v.name, "mib_s"), med(summary, bare, "mib_s")
            if r_o is not None and r_b is not None:
                row["ready_delta_s"] = r_o - r_b
                row["ready_aim_met"] = row["ready_delta_s"] <= AIMS["ready_delta_s"]
            if u_o is not None and u_b is not None:
                row["unmount_delta_s"] = u_o - u_b
                row["unmount_aim_met"] = row["unmount_delta_s"] <= AIMS["unmount_delta_s"]
            if t_o is not None and t_b:
                row["throughput_ratio"] = t_o / t_b
                row["throughput_aim_met"] = row["throughput_ratio"] >= AIMS["throughput_ratio"]
        rss = s.get("obsctl_hwm_mib", {}).get("max")
        if rss is not None:
            row["rss_peak_mib"] = rss
            row["rss_aim_met"] = rss <= AIMS["rss_mib"]
        rows.append(row)
    return rows


def print_report(meta: dict[str, Any], variants: list[Variant], summary: dict[str, Any],
                 rows: list[dict[str, Any]]) -> None:
    print()
    sizes = ", ".join(f"{d} {m} MiB" for d, m in meta["object_mib"].items())
    print(f"obsctl mount overhead: object read ({sizes}), {meta['runs']} runs per variant "
          f"(medians; min-max in brackets), moto {meta['moto_version']}, {meta['rclone']}, {meta['s3fs']}")
    print(f"OTLP receiver: {meta['otlp']}")
    hdr = ("variant", "ok", "ready s", "unmount s", "read MiB/s", "obsctl VmHWM MiB",
           "obsctl RssAnon/RssFile/Pss MiB", "driver VmHWM MiB",
           "obsctl CPU s/read", "driver CPU s/read")
    table = [hdr]

    def cell(name: str, key: str, spec: str, rng: bool = True) -> str:
        d = summary[name].get(key)
        if not d:
            return "-"
        txt = format(d["median"], spec)
        if rng and d["min"] != d["max"]:
            txt += f" [{format(d['min'], spec)}-{format(d['max'], spec)}]"
        return txt

    for v in variants:
        s = summary[v.name]
        table.append((v.name, f"{s['runs_ok']}/{s['runs_ok'] + s['runs_failed']}",
                      cell(v.name, "ready_s", ".3f"), cell(v.name, "unmount_s", ".3f"),
                      cell(v.name, "mib_s", ".0f"),
                      cell(v.name, "obsctl_hwm_mib", ".1f") if v.kind == "obsctl" else "",
                      "/".join(cell(v.name, k, ".1f", False)
                               for k in ("obsctl_anon_mib", "obsctl_file_mib", "obsctl_pss_mib"))
                      if v.kind == "obsctl" else "",
                      cell(v.name, "driver_hwm_mib", ".0f"),
                      cell(v.name, "obsctl_cpu_read_s", ".2f", False) if v.kind == "obsctl" else "",
                      cell(v.name, "driver_cpu_read_s", ".2f", False)))
    widths = [max(len(r[i]) for r in table) for i in range(len(hdr))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print("Overhead of obsctl against the bare driver (aims: ready <= +0.3 s, unmount <= +0.1 s, "
          "throughput >= 0.98, obsctl peak RSS <= 40 MiB):")

    def mark(row: dict[str, Any], key: str, met: str, spec: str, prefix: str = "") -> str:
        if key not in row:
            return "n/a"
        val = row[key]
        sign = "+" if prefix == "+" and val >= 0 else ""
        return f"{sign}{format(val, spec)} {'MET' if row[met] else 'NOT MET'}"

    hdr2 = ("variant", "ready delta s", "unmount delta s", "throughput ratio", "peak RSS MiB (max)")
    t2 = [hdr2]
    for row in rows:
        t2.append((row["variant"], mark(row, "ready_delta_s", "ready_aim_met", ".3f", "+"),
                   mark(row, "unmount_delta_s", "unmount_aim_met", ".3f", "+"),
                   mark(row, "throughput_ratio", "throughput_aim_met", ".3f"),
                   mark(row, "rss_peak_mib", "rss_aim_met", ".1f")))
    widths = [max(len(r[i]) for r in t2) for i in range(len(hdr2))]
    for i, r in enumerate(t2):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for note in meta.get("notes", []):
        print(f"note: {note}")


# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="object size in MiB (default 1024)")
    ap.add_argument("--s3fs-size-mib", type=int, default=S3FS_DEFAULT_MIB,
                    help=f"size of the object the s3fs variants read (default: min(--size-mib, "
                         f"{S3FS_DEFAULT_MIB})); moto copies the WHOLE object for every ranged GET and s3fs "
                         "reads with many ~10 MiB ranged GETs, so a 1 GiB read through s3fs takes ~90 s "
                         "against moto. Equal to --size-mib: one object for both drivers")
    ap.add_argument("--runs", type=int, default=5, help="counted runs per variant (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted warm-up rounds (default 1)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between ready and the read/unmount (default 2.0; obsctl's first export "
                         "runs 1 s after ready)")
    ap.add_argument("--block-kib", type=int, default=1024, help="read size in KiB (default 1024)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma list out of {','.join(ALL_VARIANTS)}")
    ap.add_argument("--obsctl", help="obsctl executable (default: the one next to sys.executable, else PATH)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help=f"JSON result path (default {DEFAULT_JSON})")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) after the run")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("mount_overhead.py needs root (FUSE mounts, fusermount3): run it with sudo", file=sys.stderr)
        return 1
    variants = [make_variant(n.strip()) for n in args.variants.split(",") if n.strip()]
    unknown = [v.name for v in variants if v.name not in ALL_VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {ALL_VARIANTS}")
    obsctl = args.obsctl or (str(Path(sys.executable).parent / "obsctl")
                             if (Path(sys.executable).parent / "obsctl").exists() else shutil.which("obsctl"))
    need = {v.driver for v in variants} | {"fusermount3"}
    missing = [b for b in sorted(need) if shutil.which(b) is None]
    if any(v.kind == "obsctl" for v in variants) and not obsctl:
        missing.append("obsctl")
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install rclone s3fs fuse3; pip install -e .)", file=sys.stderr)
        return 1

    workdir = Path(tempfile.mkdtemp(prefix="obsctl-bench-"))
    (workdir / "run").mkdir()
    none_config = workdir / "telemetry-none.toml"
    none_config.write_text('[telemetry]\nmode = "none"\n')
    notes: list[str] = []
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("OTEL_", "RCLONE_", "AWS_ACCESS_KEY", "AWS_SECRET", "AWS_SESSION"))}
    moto = S3Server(auth=False)
    sink = OtlpReceiver()
    try:
        # boto3 over plain http to loopback: the host CA bundle is irrelevant
        os.environ.pop("AWS_CA_BUNDLE", None)
        moto.start()
        s3fs_mib = min(args.size_mib, args.s3fs_size_mib)
        sizes_mib = {"rclone": args.size_mib, "s3fs": s3fs_mib}
        keys = {"rclone": KEY, "s3fs": KEY if s3fs_mib == args.size_mib else S3FS_KEY}
        upload_s: dict[str, float] = {}
        for driver in sorted({v.driver for v in variants}, reverse=True):
            key = keys[driver]
            if key in upload_s:
                continue
            log(f"moto_server on {moto.endpoint}; uploading {key}: {sizes_mib[driver]} MiB "
                "(multipart, boto3 upload_file)")
            upload_s[key] = upload_object(moto, key, sizes_mib[driver], workdir)
            log(f"uploaded in {upload_s[key]:.1f} s ({sizes_mib[driver] / upload_s[key]:.0f} MiB/s)")
        if s3fs_mib < args.size_mib and any(v.driver == "s3fs" for v in variants):
            notes.append(
                f"s3fs variants read a {s3fs_mib} MiB object, not {args.size_mib} MiB: moto_server copies the "
                "whole object for every ranged GET and s3fs reads with many ~10 MiB ranged GETs, so s3fs "
                f"throughput against moto falls with object size (1 GiB: ~11 MiB/s, ~90 s per read); "
                "its MiB/s is a moto figure, only the obsctl/bare ratio matters")
        sink.start()
        otlp = (f"OTLP receiver of tests/support (gRPC on 127.0.0.1:{sink.grpc_port}, http/protobuf on "
                f"127.0.0.1:{sink.http_port} for the '-http' variants)")
        closed_port = free_port()
        ctx = Ctx(otlp_http_port=sink.http_port, workdir=workdir, endpoint=moto.endpoint, obsctl=obsctl or "obsctl", otlp_port=sink.grpc_port,
                  closed_port=closed_port, none_config=none_config, sizes={d: m * MiB for d, m in sizes_mib.items()}, keys=keys,
                  block=args.block_kib * 1024, settle=args.settle, base_env=base_env)
        results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        warm: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        started = time.perf_counter()
        rounds = [("warmup", i) for i in range(args.warmup)] + [("run", i) for i in range(args.runs)]
        for phase, i in rounds:
            for v in variants:
                r = run_once(v, ctx, i if phase == "run" else -1 - i)
                (results if phase == "run" else warm)[v.name].append(r)
                desc = (f"ready {fmt(r.get('ready_s'))} s, unmount {fmt(r.get('unmount_s'))} s"
                        + (f", {fmt(r.get('mib_s'), '.0f')} MiB/s" if 'mib_s' in r else "")
                        + (f", obsctl VmHWM {fmt(r.get('obsctl_hwm_mib'), '.1f')} MiB" if 'obsctl_hwm_mib' in r else ""))
                log(f"{phase} {i + 1} {v.name}: " + (desc if r["ok"] else f"FAILED: {r.get('error')}\n{r.get('log_tail', '')}"))
                time.sleep(0.3)
        total_s = time.perf_counter() - started
        summary = summarize(variants, results)
        rows = overhead(variants, summary)
        if args.size_mib < 1024:
            notes.append(f"object size {args.size_mib} MiB (less than the 1024 MiB default)")
        try:
            import moto as _moto
            moto_version = _moto.__version__
        except Exception:  # noqa: BLE001
            moto_version = "unknown"
        meta = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "moto_version": moto_version,
            "rclone": tool_version(["rclone", "version"]), "s3fs": tool_version(["s3fs", "--version"]),
            "obsctl": tool_version([ctx.obsctl, "--version"]),
            "git_commit": tool_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "size_mib": args.size_mib, "object_mib": sizes_mib, "runs": args.runs, "warmup": args.warmup, "settle_s": args.settle, "block_kib": args.block_kib,
            "upload_s": upload_s, "total_measure_s": total_s, "otlp": otlp,
            "otlp_calls": otlp_calls(sink), "aims": AIMS, "notes": notes,
            "argv": {v.name: command(v, ctx, f"MP-{v.name}")[0] for v in variants},
        }
        print_report(meta, variants, summary, rows)
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "summary": summary, "overhead": rows,
                                   "runs": results, "warmup": warm}, indent=1) + "\n")
        print(f"\nJSON: {out}   (work dir {workdir}{'' if args.keep else ', removed'}); "
              f"measuring took {total_s:.0f} s")
        return 0
    finally:
        sink.stop()
        moto.stop()
        for mp in workdir.glob("mnt-*"):
            force_unmount(str(mp))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
