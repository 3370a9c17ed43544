"""Counting starts with the mount's first request (issue 17, DESIGN section 4).

The test reads every file of the bucket the instant the mount appears in
/proc/self/mountinfo (a tight poll loop, no sleep), long before obsctl says
READY, and compares obsctl's ``read_bytes`` (the state file, from the source
that owns ``fs_bytes``: the kernel's eBPF program on this host) with the
bytes it read. Before the change the kernel source attached after readiness:
rclone ended 1 B to 1.25 MB short, s3fs counted nothing. 5 runs per driver,
each on a fresh mount (empty page cache).
"""

from __future__ import annotations

import os
import time

import pytest

from support.data import unique_bucket_name
from support.obsctl import require_driver, s3_mount_args, status_entry
from support.waiting import wait_until

#: ~4 MB in 5 objects of odd sizes (the issue's run read 4,122,306 bytes).
SIZES = {"a.bin": 1_048_577, "b.bin": 999_983, "c.bin": 1_500_000, "d.bin": 573_745, "e.txt": 1}
RUNS = 5


def _appeared(mountpoint: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(line.split()[4] == mountpoint for line in handle)


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("driver", ["rclone", "s3fs"])
def test_reads_from_the_instant_the_mount_appears_are_counted_exactly(
        driver, run, s3_server, env, tmp_path, start_mount):
    require_driver(driver)
    bucket = unique_bucket_name(f"first-{driver}-{run}")
    s3_server.create_bucket(bucket, {name: os.urandom(size) for name, size in SIZES.items()})
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    mp = str(mountpoint)
    m = start_mount(s3_mount_args(bucket, mountpoint, driver, s3_server.endpoint), env)

    deadline = time.monotonic() + 30
    while not _appeared(mp):
        assert time.monotonic() < deadline and m.proc.poll() is None, f"no mount\n{m.output()}"
    appeared = time.time()
    read = 0
    for name in SIZES:
        with open(os.path.join(mp, name), "rb") as handle:
            while chunk := handle.read(256 * 1024):
                read += len(chunk)
    done = time.time()
    assert read == sum(SIZES.values())
    ready = m.wait_ready(30)

    def counted() -> int:
        entry = status_entry(env, mountpoint) or {}
        return int(entry.get("read_bytes") or 0)

    try:
        wait_until(lambda: counted() == read, 15,
                   lambda: f"read_bytes {counted()} != {read} read from {appeared:.3f} to {done:.3f} "
                           f"(ready {ready:.3f}); sources {(status_entry(env, mountpoint) or {}).get('sources')}")
    finally:
        assert m.stop(30) == 0, m.output()
