"""One scrape endpoint per host (issue 17, DESIGN section 3): three real mounts
(bindfs under ``--impl generic``) share one telemetry.toml with a bind_address.

All three come up (before: the second and third failed with EADDRINUSE), a
real Prometheus scraping the address sees ``obsctl_mount_up 1`` of all three,
each told apart by its ``mountpoint`` label; when the holder of the port
stops, another mount's obsctl serves the endpoint within a few polls and
Prometheus sees the two left.
"""

from __future__ import annotations

import os
import time

import pytest

from support.net import free_port
from support.obsctl import force_cleanup, obsctl_env, require_driver, status_json, write_telemetry_toml
from support.prometheus import Prometheus, prometheus_binary
from support.waiting import wait_until


def test_three_mounts_one_bind_address_all_scraped_and_the_endpoint_survives_its_holder(
        tmp_path, runtime_dir, start_mount):
    require_driver("generic")
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    address = f"127.0.0.1:{free_port()}"
    tel = write_telemetry_toml(tmp_path / "telemetry.toml", mode="remote", bind_address=address)
    env = obsctl_env(runtime_dir)
    mounts, points = [], []
    try:
        for n in range(3):
            src, mnt = tmp_path / f"src{n}", tmp_path / f"mnt{n}"
            src.mkdir()
            mnt.mkdir()
            (src / "f.txt").write_text(f"mount {n}\n")
            points.append(str(mnt))
            mounts.append(start_mount([f"local-{n}", str(mnt), "--impl", "generic", "--telemetry-config", str(tel),
                                       "--ready-timeout", "20", "--", "bindfs", "-f", str(src), str(mnt)], env))
        for m in mounts:
            m.wait_ready(30)
        assert all(m.proc.poll() is None for m in mounts), [m.output() for m in mounts]
        states = status_json(env)
        assert sorted(s["mountpoint"] for s in states) == points and all(s["state"] == "ready" for s in states)
        serving = [s for s in states if (s.get("prometheus") or {}).get("serving")]
        assert len(serving) == 1, states
        holder_pid = serving[0]["pid"]

        with Prometheus(address, scrape_interval="1s") as prom:
            result = prom.wait_for_query(
                "obsctl_mount_up == 1", lambda r: sorted(s["metric"]["mountpoint"] for s in r) == points, 30)
            assert {s["metric"]["instance"] for s in result} == {address}
            # one target_info per mount, no duplicate series made the scrape fail
            prom.wait_for_query("count(target_info)", lambda r: r and prom.values(r) == [3.0], 15)

            holder = next(m for m in mounts if m.pid == holder_pid)
            assert holder.stop(30) == 0, holder.output()
            stopped = time.monotonic()
            left = sorted(p for p, m in zip(points, mounts) if m is not holder)
            wait_until(lambda: any((s.get("prometheus") or {}).get("serving") for s in status_json(env)), 15,
                       lambda: f"nobody took the port over: {status_json(env)}")
            took = time.monotonic() - stopped
            assert took < 10, f"the endpoint came back after {took:.1f} s (poll interval 2 s)"
            prom.wait_for_query(
                "obsctl_mount_up == 1",
                lambda r: sorted(s["metric"]["mountpoint"] for s in r) == left
                and prom.query("up") and prom.values(prom.query("up")) == [1.0], 30)
        for m in mounts:
            if m.proc.poll() is None:
                assert m.stop(30) == 0, m.output()
        assert not os.listdir(runtime_dir / "metrics")  # every publication removed on exit
    finally:
        for p in points:
            force_cleanup(p)
