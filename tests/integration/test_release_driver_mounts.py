"""goofys, geesefs and mountpoint-s3 under obsctl.

The missing-binary test runs everywhere: it is the real ``obsctl mount``
failing before anything starts. The mount tests need the release binaries,
which this build machine cannot download (github.com / s3.amazonaws.com are
out of reach): they skip with that reason here and run on a host where
roles/fuse_driver installed them.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from support.data import BUCKET_OBJECTS
from support.obsctl import is_mounted, mount_entry, obsctl_env, run_obsctl, s3_mount_args

# impl -> (program, mount type in /proc/self/mountinfo)
RELEASE = {
    "goofys": ("goofys", "fuse.goofys"),
    "geesefs": ("geesefs", "fuse.geesefs"),
    "mountpoint-s3": ("mount-s3", "fuse"),
}
CANNOT_FETCH = ("goofys/geesefs/mount-s3 are release downloads that cannot be fetched on this machine "
                "(roles/fuse_driver installs {binary} on a real host)")


@pytest.mark.no_fuse
@pytest.mark.parametrize("impl", list(RELEASE))
def test_missing_binary_fails_before_anything_starts(impl, tmp_path):
    """PATH holds only an empty directory: the driver cannot be found. obsctl
    exits 1 naming the program and the role variable, reads no credentials
    (none are set), starts no process and mounts nothing."""
    binary = RELEASE[impl][0]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    empty = tmp_path / "empty-path"
    empty.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = obsctl_env(run_dir, extra={"PATH": str(empty)})
    res = run_obsctl("mount", "s3://some-bucket", str(mnt), "--impl", impl,
                     "--endpoint", "http://127.0.0.1:9", env=env, timeout=30)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert f"{binary}: not found on PATH ({empty})" in res.stderr, res.stderr
    assert f"fuse_driver_release_drivers: [{impl}]" in res.stderr, res.stderr
    assert f"nothing is mounted at {mnt}" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not is_mounted(mnt)
    assert list(run_dir.iterdir()) == [], "no state file for a mount that never started"


def _installed(impl: str):
    binary = RELEASE[impl][0]
    return pytest.param(impl, marks=pytest.mark.skipif(shutil.which(binary) is None,
                                                       reason=CANNOT_FETCH.format(binary=binary)))


@pytest.mark.parametrize("impl", [_installed(impl) for impl in RELEASE])
def test_release_driver_mount_read_write_stop(impl, bucket, s3_server, mountpoint, env, telemetry_toml,
                                              start_mount):
    """A real mount of the loopback S3 server: the mount type is the driver's,
    objects read back, a write lands in the bucket, SIGTERM unmounts and exits 0."""
    fstype = RELEASE[impl][1]
    tel = telemetry_toml(export_interval_seconds=2)
    m = start_mount(s3_mount_args(bucket, mountpoint, impl, s3_server.endpoint, tel), env)
    m.wait_ready(30)
    entry = mount_entry(mountpoint)
    assert entry is not None and entry["fstype"] == fstype, (entry, m.output())
    assert (mountpoint / "hello.txt").read_bytes() == BUCKET_OBJECTS["hello.txt"]
    extra = os.urandom(1000)
    (mountpoint / "new-object.bin").write_bytes(extra)  # a new object, written sequentially (mount-s3 needs that)
    assert s3_server.get_object(bucket, "new-object.bin") == extra
    m.signal(signal.SIGTERM)
    assert m.wait(30) == 0, m.output()
    assert not is_mounted(mountpoint)
