"""What the driver's debug log costs the driver: s3fs and rclone, old vs new log level.

Run as root from the venv that has obsctl, moto[server] and boto3 (about 1-2 min)::

    sudo .venv/bin/python bench/s3fs_log_level.py [--files 200] [--read-mib 32] [--runs 2]

Where the kernel gives every FUSE quantity (eBPF, or tracefs pairing on
6.18+), obsctl runs s3fs at ``-o dbglevel=warn -o curldbg`` instead of
``dbglevel=dbg`` (src/obsctl/drivers/s3fs.py) and rclone at ``--log-level
INFO`` instead of ``DEBUG`` (src/obsctl/drivers/rclone.py). This mounts the
bare driver on a moto_server bucket (127.0.0.1) with each level, interleaved
``--runs`` times, and runs the same workload through it: ``--files`` files of
64 bytes created, stat'ed and unlinked, a ``--read-mib`` MiB object read
with 1 MiB reads after dropping the page cache, and a ``--write-mib`` MiB
file written 4 KiB per write(2) (what an application writing small records
does: one FUSE WRITE each, so one ``s3fs_write`` log group each at ``dbg``;
s3fs only: rclone 1.60 without a VFS cache answered EIO to that write
against moto here). The driver's stdout and
stderr are read and discarded by this process (as obsctl's log pump reads
them). Printed per driver and level (minimum of the runs): the driver's CPU
seconds over the workload (utime + stime of /proc/PID/stat, fields 14 and
15), log bytes, and the ratio new / old.

Writes bench/results/s3fs_log_level-latest.json. Never fails on a number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from _common import log, remove_work, write_results  # noqa: E402  (bench/_common.py)
import fuse_trace as ft  # noqa: E402  (bench/fuse_trace.py: workloads, mount helpers, proc_cpu)


def s3fs_argv(level: str, bucket: str, mp: str, endpoint: str) -> list[str]:
    return ["s3fs", bucket, mp, "-f", "-o", f"dbglevel={level}", "-o", "curldbg", "-o", f"url={endpoint}",
            "-o", "use_path_request_style"]


def rclone_argv(level: str, bucket: str, mp: str, _endpoint: str) -> list[str]:
    return ["rclone", "mount", f"obsctl:{bucket}", mp, "--config", "", "--use-json-log", "--log-level", level]


def write_small(path: str, mib: int) -> None:
    block = os.urandom(4096)
    with open(path, "wb", buffering=0) as fh:
        for _block in range(mib * 256):
            fh.write(block)


def one_run(argv: list[str], env: dict, mp: str, files: int, write_mib: int = 0) -> dict:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    logged = [0]

    def drain() -> None:
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            logged[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        ft.wait_mounted(mp)
        cpu0, log0 = ft.proc_cpu(proc.pid), logged[0]
        ft.meta(mp, files, 1)
        ft.seqread(os.path.join(mp, "read.bin"))
        if write_mib:
            write_small(os.path.join(mp, "written.bin"), write_mib)
            os.unlink(os.path.join(mp, "written.bin"))
        cpu = ft.proc_cpu(proc.pid) - cpu0
        log_bytes = logged[0] - log0
    finally:
        subprocess.run(["fusermount3", "-u", mp], capture_output=True, check=False)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(5)
    return {"cpu_s": cpu, "log_bytes": log_bytes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--read-mib", type=int, default=32)
    ap.add_argument("--write-mib", type=int, default=16)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("run as root (FUSE mounts)")
        return 1
    from obsctl.drivers.s3fs import LOG_LEVEL_KERNEL, LOG_LEVEL_LOG
    from support.s3server import S3Server

    results: dict = {"kernel": os.uname().release, "cpus": os.cpu_count(), "args": vars(args)}
    work = tempfile.mkdtemp(prefix="obsctl-bench-log-level-")
    try:
        with S3Server(auth=False) as s3:
            s3.create_bucket("bench", {"read.bin": os.urandom(args.read_mib << 20)})
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_CA")}
            env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                       RCLONE_CONFIG_OBSCTL_TYPE="s3", RCLONE_CONFIG_OBSCTL_PROVIDER="Other",
                       RCLONE_CONFIG_OBSCTL_ENV_AUTH="false", RCLONE_CONFIG_OBSCTL_ENDPOINT=s3.endpoint,
                       RCLONE_CONFIG_OBSCTL_ACCESS_KEY_ID=s3.access_key,
                       RCLONE_CONFIG_OBSCTL_SECRET_ACCESS_KEY=s3.secret_key)
            drivers = {"s3fs": (s3fs_argv, LOG_LEVEL_LOG, LOG_LEVEL_KERNEL),
                       "rclone": (rclone_argv, "DEBUG", "INFO")}
            for name, (argv_of, old, new) in drivers.items():
                if not shutil.which(name):
                    log(f"{name}: not installed, skipped")
                    continue
                rows: dict = {old: [], new: []}
                mp = os.path.join(work, name)
                os.makedirs(mp)
                one_run(argv_of(new, "bench", mp, s3.endpoint), env, mp, 10)  # warm-up (moto, caches)
                for _run in range(args.runs):
                    for level in (old, new):
                        rows[level].append(one_run(argv_of(level, "bench", mp, s3.endpoint), env, mp, args.files,
                                                   args.write_mib if name == "s3fs" else 0))
                cpu_old = min(r["cpu_s"] for r in rows[old])
                cpu_new = min(r["cpu_s"] for r in rows[new])
                log_old = min(r["log_bytes"] for r in rows[old])
                log_new = min(r["log_bytes"] for r in rows[new])
                ratio = cpu_new / cpu_old if cpu_old else None
                results[name] = {"old": old, "new": new, "runs": rows, "cpu_ratio_new_old": ratio}
                log(f"{name:6} {old:>5}: cpu {cpu_old:6.2f} s, log {log_old / 1e6:7.2f} MB | {new:>5}: cpu "
                    f"{cpu_new:6.2f} s, log {log_new / 1e6:7.3f} MB | cpu new/old {ratio or 0:5.2f} "
                    f"({args.files} create/stat/unlink + {args.read_mib} MiB read"
                    + (f" + {args.write_mib} MiB in 4 KiB writes)" if name == "s3fs" else ")"))
    finally:
        remove_work(work)
    write_results("s3fs_log_level", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
