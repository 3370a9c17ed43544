"""Compressed soak: a few minutes of an rclone mount of moto under mixed reads
and writes, with the OTLP receiver flapping and one driver kill.

Marked ``soak`` (about 3 min; ``OBSCTL_SOAK_SECONDS`` changes it; deselect
with ``-m 'not soak'``). Asserts:

* no ``Traceback`` in obsctl's stdout/stderr, nor a receiver decode error;
* RSS flat: VmRSS of the obsctl supervisor (/proc/PID/status, kB) is sampled
  every 2 s; the least-squares slope over the second half of the run (after
  warm-up, the driver restart and the first flaps) must be under
  :data:`MAX_RSS_SLOPE_KIB_PER_MIN`;
* the last export equals the final counters: once I/O stops, the read/write
  byte totals of ``obsctl status --json`` and of the Prometheus endpoint are
  read, then SIGTERM; the last OTLP export the receiver got (the final export
  at shutdown) carries the same values.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import requests

from support.net import free_port
from support.obsctl import children_of, pid_alive, s3_mount_args, status_json, write_telemetry_toml

SECONDS = float(os.environ.get("OBSCTL_SOAK_SECONDS", "180"))
#: A leak of 1 KiB per operation at this load grows several MiB/min; the
#: bound leaves room for allocator noise (figures printed with -s).
MAX_RSS_SLOPE_KIB_PER_MIN = 512.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def slope_per_min(samples: list[tuple[float, int]]) -> float:
    n = len(samples)
    mean_t = sum(t for t, _v in samples) / n
    mean_v = sum(v for _t, v in samples) / n
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    var = sum((t - mean_t) ** 2 for t, _v in samples)
    return cov / var * 60.0


def prom_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.soak
def test_compressed_soak(bucket, s3_server, mountpoint, env, otlp, tmp_path, start_mount):
    prom_port = free_port()
    tel = write_telemetry_toml(tmp_path / "telemetry.toml", metrics_endpoint=otlp.grpc_endpoint,
                               traces_endpoint=otlp.grpc_endpoint, export_interval_seconds=2,
                               bind_address=f"127.0.0.1:{prom_port}")
    # --cache-mode writes: rclone's documented mode for files opened for writing and rewritten
    m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint, tel, "--cache-mode", "writes"), env)
    m.wait_ready(30)
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.choice((1024, 65536, 300000))) for _i in range(8)]
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    next_sample = next_flap = started
    receiver_up, killed, ops = True, False, 0
    while time.monotonic() - started < SECONDS:
        now = time.monotonic()
        if now >= next_sample:
            samples.append((now - started, rss_kib(m.pid)))
            next_sample = now + 2
        if now >= next_flap:  # receiver down 8 s, up 12 s
            (otlp.stop if receiver_up else otlp.start)()
            receiver_up = not receiver_up
            next_flap = now + (8 if not receiver_up else 12)
        if not killed and now - started > SECONDS * 0.2:
            drivers = [p for p in children_of(m.pid) if "rclone" in open(f"/proc/{p}/cmdline").read()]
            assert drivers, "no rclone child"
            os.kill(drivers[0], signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = status_json(env)
                if st and st[0].get("restarts") == 1 and st[0].get("state") in ("ready", "running", "mounted") \
                        and pid_alive(st[0].get("driver_pid")) and os.path.ismount(mountpoint):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"driver not restarted within 60 s: {status_json(env)}")
            continue
        name = mountpoint / f"f{ops % 16}.bin"
        try:
            if ops % 3 == 0:
                name.write_bytes(payloads[ops % len(payloads)])
            elif name.exists():
                name.read_bytes()
            else:
                os.listdir(mountpoint)
        except OSError as exc:
            raise AssertionError(f"I/O failed at op {ops} ({time.monotonic() - started:.0f} s): {exc}")
        ops += 1
    if not receiver_up:
        otlp.start()
    time.sleep(5)  # let rclone's write-back and the collectors settle; exports land

    st = status_json(env)[0]
    prom = requests.get(f"http://127.0.0.1:{prom_port}/metrics", timeout=5, proxies={"http": None, "https": None}).text
    assert prom_value(prom, "obsctl_fs_read_bytes_total") == st["read_bytes"]
    assert prom_value(prom, "obsctl_fs_write_bytes_total") == st["write_bytes"]
    assert m.stop(30) == 0
    last_read = otlp.latest_sum("obsctl_fs_read_bytes", bucket=bucket)
    last_write = otlp.latest_sum("obsctl_fs_write_bytes", bucket=bucket)
    assert (last_read, last_write) == (st["read_bytes"], st["write_bytes"]), (last_read, last_write, st)
    assert st["read_bytes"] > 0 and st["write_bytes"] > 0

    output = m.output()
    assert "Traceback" not in output, output[-3000:]
    assert not otlp.decode_errors
    steady = [s for s in samples if s[0] >= SECONDS / 2]
    slope = slope_per_min(steady)
    print(f"soak: {ops} ops in {SECONDS:.0f} s, restarts 1, RSS {samples[0][1]} -> {samples[-1][1]} KiB, "
          f"max {max(v for _t, v in samples)} KiB, steady slope {slope:+.1f} KiB/min over {len(steady)} samples")
    assert slope < MAX_RSS_SLOPE_KIB_PER_MIN, (slope, steady)
