"""obsctl.inventory (obsctl status --all, the fuse_mount_info module) over captured
mount tables and a /proc tree built like the kernel's."""

import errno
import os

from obsctl import inventory, mounttable, tomlio

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "mountinfo")


def fake_proc(tmp_path, pid, argv, comm, cgroup, fuse=True, cwd="/"):
    base = tmp_path / "proc" / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (base / "comm").write_text(comm + "\n")
    (base / "cgroup").write_text(cgroup)
    os.symlink(cwd, str(base / "cwd"))
    os.symlink("/dev/null", str(base / "fd" / "0"))
    if fuse:
        os.symlink("/dev/fuse", str(base / "fd" / "3"))


def probe(dead):
    def _probe(mountpoint, timeout, mounts=None):
        return "stale" if mountpoint in dead else "ok"
    return _probe


def test_mixed(tmp_path):
    fake_proc(tmp_path, 4001, ["rclone", "mount", "s3remote:fixture-bucket/prefix", "/tmp/cap/mnt/rclone"],
              "rclone", "0::/system.slice/obsctl-mount@data.service\n")
    fake_proc(tmp_path, 4002, ["s3fs", "fixture-bucket", "/tmp/cap/mnt/s3fs", "-o", "url=x"], "s3fs",
              "12:pids:/docker/abc/system.slice/s3fs.service\n1:name=systemd:/docker/abc/system.slice/s3fs.service\n")
    # relative mountpoint argument, resolved against the process's cwd
    fake_proc(tmp_path, 4003, ["bindfs", "src", "mnt/bind fs"], "bindfs",
              "0::/user.slice/user-0.slice/session-3.scope\n", cwd="/tmp/cap")
    # holds no /dev/fuse: not a driver even though its argv names the mountpoint
    fake_proc(tmp_path, 4004, ["ls", "/tmp/cap/mnt/rclone"], "ls", "0::/\n", fuse=False)
    fusectl = tmp_path / "fusectl"
    (fusectl / "40").mkdir(parents=True)
    (fusectl / "40" / "waiting").write_text("2\n")
    root = tmp_path / "root"
    (root / "etc/obsctl/mounts").mkdir(parents=True)
    (root / "etc/obsctl/mounts/data.toml").write_text(tomlio.render_mount_spec(
        {"name": "data", "source": "s3://fixture-bucket/prefix", "mountpoint": "/tmp/cap/mnt/rclone", "impl": "rclone"}))
    (root / "etc/obsctl/mounts/gone.toml").write_text(tomlio.render_mount_spec(
        {"name": "gone", "source": "s3://b", "mountpoint": "/mnt/gone", "impl": "s3fs", "read_only": True}))

    mounts = inventory.fuse_mount_info(
        mountinfo_path=os.path.join(FIXTURES, "capture_mixed.txt"), root=str(root), proc=str(tmp_path / "proc"),
        fusectl=str(fusectl), probe=probe({"/tmp/cap/mnt/stale"}))
    table = [(m["mountpoint"], m["driver"], m["pid"], m["unit"], m["name"], m["health"], m["waiting"], m["read_only"])
             for m in mounts]
    assert table == [
        ("/tmp/cap/mnt/rclone", "rclone", 4001, "obsctl-mount@data.service", "data", "ok", 2, False),
        ("/tmp/cap/mnt/s3fs", "s3fs", 4002, "s3fs.service", None, "ok", None, False),
        ("/tmp/cap/mnt/bind fs", "bindfs", 4003, "session-3.scope", None, "ok", None, False),
        ("/tmp/cap/mnt/stale", "fuse", None, None, None, "stale", None, True),
        ("/mnt/gone", "s3fs", None, "obsctl-mount@gone.service", "gone", "missing", None, True),
    ]
    assert mounts[0]["fstype"] == "fuse.rclone"
    assert mounts[0]["source"] == "s3remote{cNaBs}:fixture-bucket/prefix"
    assert mounts[0]["connection"] == 40
    assert mounts[-1]["source"] == "s3://b"


def test_real_probe_on_a_stale_fixture(tmp_path):
    """The default probe stats the mountpoint; a path that does not exist here
    answers ENOENT, which is an answer (ok); only ENOTCONN is stale."""
    mounts = inventory.fuse_mount_info(mountinfo_path=os.path.join(FIXTURES, "capture_bindfs_stale.txt"),
                                       root=str(tmp_path), proc=str(tmp_path), fusectl=str(tmp_path))
    assert [m["health"] for m in mounts] == ["ok"]
    assert errno.ENOTCONN in mounttable.STALE_ERRNOS


def test_unit_from_cgroup():
    assert inventory.unit_from_cgroup("0::/system.slice/obsctl-mount@a.service\n") == "obsctl-mount@a.service"
    assert inventory.unit_from_cgroup("0::/\n") is None
    v1 = "4:cpu:/docker/x\n1:name=systemd:/docker/x/system.slice/obsctl-mount@b.service\n"
    assert inventory.unit_from_cgroup(v1) == "obsctl-mount@b.service"
