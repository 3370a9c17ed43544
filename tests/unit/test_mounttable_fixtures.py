"""Table-driven tests of the mountinfo parser over real captured mount tables.

The fixtures tests/fixtures/mountinfo/capture_*.txt were captured from real
rclone, s3fs and bindfs mounts (see README-captures.md there), including a
stale bindfs whose daemon was killed with SIGKILL. Fixtures captured by
tests/fixtures/capture.sh (tests/fixtures/mountinfo/*.txt) are parsed too.
"""

import errno
import glob
import os

import pytest

from obsctl import health
from obsctl import mounttable as mi

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "mountinfo")


def fixture(name):
    return os.path.join(FIXTURES, "capture_" + name)


# (fixture, [(mountpoint, fstype, subtype, source, connection, read-only)])
CASES = [
    ("rclone.txt", [
        ("/tmp/cap/mnt/rclone", "fuse.rclone", "rclone", "s3remote{cNaBs}:fixture-bucket/prefix", "40", False),
    ]),
    ("s3fs.txt", [
        ("/tmp/cap/mnt/s3fs", "fuse.s3fs", "s3fs", "s3fs", "41", False),
    ]),
    ("bindfs.txt", [
        ("/tmp/cap/mnt/bind fs", "fuse", "", "/tmp/cap/src", "42", False),
    ]),
    ("bindfs_stale.txt", [
        ("/tmp/cap/mnt/stale", "fuse", "", "/tmp/cap/src", "43", True),
    ]),
    ("mixed.txt", [
        ("/tmp/cap/mnt/rclone", "fuse.rclone", "rclone", "s3remote{cNaBs}:fixture-bucket/prefix", "40", False),
        ("/tmp/cap/mnt/s3fs", "fuse.s3fs", "s3fs", "s3fs", "41", False),
        ("/tmp/cap/mnt/bind fs", "fuse", "", "/tmp/cap/src", "42", False),
        ("/tmp/cap/mnt/stale", "fuse", "", "/tmp/cap/src", "43", True),
    ]),
]


@pytest.mark.parametrize("name,expected", CASES, ids=[case[0] for case in CASES])
def test_fuse_entries(name, expected):
    mounts = mi.read_mounts(fixture(name))
    got = [
        (e.mountpoint, e.fstype, mi.fuse_subtype(e), e.source, mi.fuse_connection(e),
         "ro" in e.mount_options.split(","))
        for e in mi.fuse_mounts(mounts)
    ]
    assert got == expected
    # fusectl is not FUSE; the root file system is not either
    assert not any(e.fstype == "fusectl" for e in mi.fuse_mounts(mounts))
    assert mi.find_mount("/", mounts=mounts).fstype == "ext4"


class _Stat:
    """os.stat stand-in: ENOTCONN for the mountpoints whose daemon is dead."""

    def __init__(self, dead):
        self.dead = set(dead)

    def __call__(self, path):
        if path in self.dead:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", path)
        return os.stat_result((0o40755, 0, 0, 1, 0, 0, 0, 0, 0, 0))


# (fixture, mountpoint, dead daemons, expected health)
HEALTH = [
    ("rclone.txt", "/tmp/cap/mnt/rclone", [], "ok"),
    ("s3fs.txt", "/tmp/cap/mnt/s3fs", [], "ok"),
    ("bindfs.txt", "/tmp/cap/mnt/bind fs", [], "ok"),
    ("bindfs_stale.txt", "/tmp/cap/mnt/stale", ["/tmp/cap/mnt/stale"], "stale"),
    ("mixed.txt", "/tmp/cap/mnt/stale", ["/tmp/cap/mnt/stale"], "stale"),
    ("mixed.txt", "/tmp/cap/mnt/rclone", ["/tmp/cap/mnt/stale"], "ok"),
    ("rclone.txt", "/tmp/cap/mnt/s3fs", [], "missing"),
    ("mixed.txt", "/tmp/cap/mnt/rclone/", [], "ok"),
]


@pytest.mark.parametrize("name,mountpoint,dead,expected", HEALTH)
def test_health(name, mountpoint, dead, expected):
    mounts = mi.read_mounts(fixture(name))
    assert mi.probe_health(os.path.normpath(mountpoint), mounts=mounts, stat=_Stat(dead)) == expected
    assert health.probe(os.path.normpath(mountpoint), 2, fixture(name), stat=_Stat(dead)) == expected
    assert health.probe(os.path.normpath(mountpoint), 2, mounts=mounts, stat=_Stat(dead)) == expected


def test_probe_that_does_not_answer_is_hung():
    """The one bounded probe: no answer within the timeout is ``hung`` (alive, not answering), never
    ``stale`` (driver gone): the word obsctl status, status --all, the engine and the check unit share."""
    import threading
    gate = threading.Event()
    mounts = mi.read_mounts(fixture("rclone.txt"))

    def hung(_path):
        gate.wait(5)

    try:
        assert health.probe("/tmp/cap/mnt/rclone", 0.2, mounts=mounts, stat=hung) == health.HUNG
    finally:
        gate.set()


def test_probe_other_errors_count_as_answer():
    mounts = mi.read_mounts(fixture("rclone.txt"))

    def denied(path):
        raise OSError(errno.EACCES, "Permission denied", path)

    assert mi.probe_health("/tmp/cap/mnt/rclone", mounts=mounts, stat=denied) == "ok"


def test_fuse_waiting(tmp_path):
    mounts = mi.read_mounts(fixture("rclone.txt"))
    entry = mi.fuse_mounts(mounts)[0]
    assert mi.fuse_waiting(entry, root=str(tmp_path)) is None
    (tmp_path / "40").mkdir()
    (tmp_path / "40" / "waiting").write_text("3\n")
    assert mi.fuse_waiting(entry, root=str(tmp_path)) == 3


SHARED_DIR = FIXTURES


def _is_mount_table(path):
    with open(path) as handle:
        first = handle.readline()
    return bool(first) and first.split(" ", 1)[0].isdigit()


SHARED = sorted(p for p in glob.glob(os.path.join(SHARED_DIR, "*.txt")) if _is_mount_table(p))


@pytest.mark.skipif(not SHARED, reason="no tests/fixtures/mountinfo/*.txt captured yet")
@pytest.mark.parametrize("path", SHARED, ids=[os.path.basename(p) for p in SHARED])
def test_shared_fixtures_parse(path):
    mounts = mi.read_mounts(path)
    assert mounts, "empty fixture"
    for entry in mi.fuse_mounts(mounts):
        assert entry.mountpoint.startswith("/")
        assert mi.fuse_connection(entry).isdigit()


def _listed(name):
    path = os.path.join(SHARED_DIR, name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.split(None, 1) for line in handle if line.strip()]


@pytest.mark.skipif(not _listed("mountpoints.txt") or not os.path.exists(os.path.join(SHARED_DIR, "live.txt")),
                    reason="tests/fixtures/mountinfo/{live,mountpoints}.txt not captured yet")
@pytest.mark.parametrize("driver,mountpoint", [tuple(x) for x in _listed("mountpoints.txt")] or [("", "")])
def test_shared_live_fixture(driver, mountpoint):
    mounts = mi.read_mounts(os.path.join(SHARED_DIR, "live.txt"))
    entry = mi.find_mount(mountpoint.strip(), mounts=mounts)
    assert entry is not None and mi.is_fuse(entry)
    assert mi.fuse_subtype(entry) in (driver, "")  # bindfs sets no subtype


def test_every_health_probe_uses_statvfs_by_default():
    """One probe rule (mounttable.HEALTH_PROBE = statvfs: FUSE_STATFS reaches the driver, a
    stat may come from the attribute cache after it died) for the side-car's gauge, obsctl
    status, the engine (fuse_mount, obsctl systemd install/check) and obsctl status --all."""
    import inspect

    from obsctl import engine
    from obsctl.collectors.probe import MountProbe

    assert mi.HEALTH_PROBE is os.statvfs
    for function, parameter in ((mi.probe_health, "stat"), (health.probe, "stat"), (health.Probe.__init__, "stat"),
                                (MountProbe.__init__, "stat"), (engine.mount_facts, "stat_fn"),
                                (engine.Engine.__init__, "stat_fn")):
        assert inspect.signature(function).parameters[parameter].default is mi.HEALTH_PROBE, function
