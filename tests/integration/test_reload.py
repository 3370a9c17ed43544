"""SIGHUP reloads telemetry without a remount (issue 17, DESIGN section 3).

A real rclone mount of a moto bucket exports to one OTLP receiver; a file is
held open on the mount; telemetry.toml is rewritten to point at a second
receiver and obsctl gets SIGHUP. The driver pid stays, the held file still
reads, the second receiver gets the mount's metrics. An invalid file on the
next SIGHUP keeps the settings in force and says why in one line.

``obsctl sidecar`` reloads the same way (the one implementation,
obsctl.observer.MountObserver.reload_from): a bindfs mount that something else
started, observed by the side-car, whose telemetry.toml is switched to a second
receiver; the side-car keeps running and observing the same driver, nothing is
unmounted.
"""

from __future__ import annotations

import signal
import subprocess
import time

from support.data import BUCKET_OBJECTS
from support.obsctl import (
    force_cleanup, is_mounted, obsctl_command, obsctl_env, require_driver, s3_mount_args, status_entry,
    write_telemetry_toml,
)
from support.otlp_receiver import OtlpReceiver
from support.waiting import wait_until


def test_sighup_switches_the_otlp_endpoint_keeping_driver_and_open_files(
        tmp_path, bucket, s3_server, env, mountpoint, start_mount):
    require_driver("rclone")
    second = OtlpReceiver().start()
    first = OtlpReceiver().start()
    try:
        tel = write_telemetry_toml(tmp_path / "telemetry.toml", metrics_endpoint=first.grpc_endpoint,
                                   traces_endpoint=first.grpc_endpoint, export_interval_seconds=1)
        m = start_mount(s3_mount_args(bucket, mountpoint, "rclone", s3_server.endpoint, tel), env)
        m.wait_ready(30)
        mp = str(mountpoint)
        first.wait_for(lambda: first.latest("obsctl_mount_up", mountpoint=mp) == 1, 15, "mount_up on receiver 1")
        driver_pid = status_entry(env, mountpoint)["driver_pid"]
        name, body = next(iter(BUCKET_OBJECTS.items()))
        held = open(mountpoint / name, "rb")  # noqa: SIM115 - held across the reload on purpose
        try:
            assert held.read(10) == body[:10]
            write_telemetry_toml(tel, metrics_endpoint=second.grpc_endpoint, traces_endpoint=second.grpc_endpoint,
                                 export_interval_seconds=1)
            m.signal(signal.SIGHUP)
            wait_until(lambda: "reloaded telemetry" in m.stderr, 15, lambda: f"no reload line:\n{m.output()}")
            second.wait_for(lambda: second.latest("obsctl_mount_up", mountpoint=mp) == 1, 15,
                            "mount_up on receiver 2 after SIGHUP")
            assert m.proc.poll() is None, m.output()
            entry = status_entry(env, mountpoint)
            assert entry["driver_pid"] == driver_pid and entry["state"] == "ready", entry
            assert held.read() == body[10:]  # the file opened before the reload still reads
            # the first receiver hears nothing after the switch (its final export came at the reload)
            first.clear()
            time.sleep(3)
            assert not first.requests("metrics"), first.summary()

            # an invalid file: one line saying why, the second receiver keeps receiving
            tel.write_text("[telemetry]\nmode = \"remote\"\nenabled = true\n")
            m.signal(signal.SIGHUP)
            wait_until(lambda: "reload refused" in m.stderr, 15, lambda: f"no refusal:\n{m.output()}")
            refusal = [line for line in m.stderr.splitlines() if "reload refused" in line]
            assert len(refusal) == 1 and "keeping the previous telemetry settings" in refusal[0], refusal
            since = time.time()
            second.wait_for(lambda: second.points("obsctl_mount_up", since=since), 10, "exports after a refusal")
            assert status_entry(env, mountpoint)["driver_pid"] == driver_pid
        finally:
            held.close()
        assert m.stop(30) == 0, m.output()
    finally:
        first.stop()
        second.stop()


def test_sidecar_reloads_on_sighup_keeping_the_observed_driver(tmp_path, mountpoint, runtime_dir):
    require_driver("generic")
    source = tmp_path / "src"
    source.mkdir()
    (source / "one.txt").write_text("one\n")
    env = obsctl_env(runtime_dir)
    first, second = OtlpReceiver().start(), OtlpReceiver().start()
    bindfs = subprocess.Popen(["bindfs", "-f", str(source), str(mountpoint)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = None
    err_path = tmp_path / "sidecar.stderr"
    try:
        wait_until(lambda: is_mounted(mountpoint), 10, "bindfs mounted")
        tel = write_telemetry_toml(tmp_path / "telemetry.toml", metrics_endpoint=first.grpc_endpoint,
                                   traces_endpoint=first.grpc_endpoint, export_interval_seconds=1)
        with open(err_path, "w") as err:
            sidecar = subprocess.Popen(
                [*obsctl_command(), "sidecar", "--pid", str(bindfs.pid), "--mountpoint", str(mountpoint),
                 "--impl", "bindfs", "--source", "local-src", "--telemetry-config", str(tel)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        mp = str(mountpoint)
        first.wait_for(lambda: first.latest("obsctl_mount_up", mountpoint=mp) == 1, 15, "mount_up on receiver 1")

        write_telemetry_toml(tel, metrics_endpoint=second.grpc_endpoint, traces_endpoint=second.grpc_endpoint,
                             export_interval_seconds=1)
        sidecar.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded telemetry" in err_path.read_text(), 15,
                   lambda: f"no reload line:\n{err_path.read_text()}")
        assert f"driver pid {bindfs.pid} and the mount untouched" in err_path.read_text()
        second.wait_for(lambda: second.latest("obsctl_mount_up", mountpoint=mp) == 1, 15,
                        "mount_up on receiver 2 after SIGHUP")
        assert sidecar.poll() is None, err_path.read_text()
        entry = status_entry(env, mountpoint)
        assert entry["state"] == "observing" and entry["driver_pid"] == bindfs.pid, entry
        assert (mountpoint / "one.txt").read_text() == "one\n"
        first.clear()
        time.sleep(3)
        assert not first.requests("metrics"), first.summary()

        # an invalid file: one line saying why, the second receiver keeps receiving
        tel.write_text("[telemetry]\nmode = \"remote\"\nenabled = true\n")
        sidecar.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in err_path.read_text(), 15,
                   lambda: f"no refusal:\n{err_path.read_text()}")
        refusal = [line for line in err_path.read_text().splitlines() if "reload refused" in line]
        assert len(refusal) == 1 and "keeping the previous telemetry settings" in refusal[0], refusal
        since = time.time()
        second.wait_for(lambda: second.points("obsctl_mount_up", since=since), 10, "exports after a refusal")

        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(15) == 0, err_path.read_text()
        assert is_mounted(mountpoint) and bindfs.poll() is None  # the side-car never unmounts
    finally:
        for proc in (sidecar, bindfs):
            if proc is not None and proc.poll() is None:
                proc.kill()
        force_cleanup(mountpoint)
        first.stop()
        second.stop()
