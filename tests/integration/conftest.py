"""Integration fixtures: real FUSE mounts through ``obsctl mount``.

Tests here need root, /dev/fuse and the driver binaries; without them they
skip with the reason printed (``pytest -ra``). A missing or unfinished obsctl
feature is never a reason to skip: those tests fail.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Callable

import pytest

from support.obsctl import (
    ObsctlMount, force_cleanup, obsctl_env, require_driver, write_telemetry_toml,
)


def fuse_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (FUSE mounts, /proc of other processes)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount/fusermount3 not installed (apt-get install fuse3)"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _fuse_required(request):
    """Skip (with the reason) when this host cannot mount FUSE at all.
    Tests marked ``no_fuse`` (harness self-checks) run anyway."""
    if request.node.get_closest_marker("no_fuse"):
        return
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(params=["rclone", "s3fs"])
def impl(request) -> str:
    """Each S3 test runs once per driver."""
    require_driver(request.param)
    return request.param


@pytest.fixture
def runtime_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def mountpoint(tmp_path) -> Path:
    d = tmp_path / "mnt"
    d.mkdir()
    return d


@pytest.fixture
def env(runtime_dir, s3_server) -> dict[str, str]:
    """obsctl's environment: runtime dir in tmp, the plain server's key."""
    return obsctl_env(runtime_dir, s3_server.access_key, s3_server.secret_key)


@pytest.fixture
def telemetry_toml(tmp_path, otlp) -> Callable[..., Path]:
    """Write a telemetry TOML pointing at this test's receiver (gRPC by
    default); keyword arguments as write_telemetry_toml."""

    def make(name: str = "telemetry.toml", **kw) -> Path:
        protocol = kw.pop("protocol", None)
        base = otlp.http_endpoint if protocol == "http/protobuf" else otlp.grpc_endpoint
        kw.setdefault("metrics_endpoint", base)
        kw.setdefault("traces_endpoint", base)
        return write_telemetry_toml(tmp_path / name, protocol=protocol, **kw)

    return make


@pytest.fixture
def start_mount(tmp_path, mountpoint):
    """Start ``obsctl mount ARGS`` in the background; teardown stops whatever
    is left (SIGTERM, then SIGKILL, then lazy unmount) so a failing test
    never leaves a mount or a driver behind."""
    started: list[ObsctlMount] = []

    def start(args, env, stdin_text: str | None = None) -> ObsctlMount:
        m = ObsctlMount(list(args), env, tmp_path / f"logs{len(started)}",
                        stdin_text=stdin_text).start()
        started.append(m)
        return m

    yield start

    for m in started:
        if m.proc is not None and m.proc.poll() is None:
            m.signal(signal.SIGTERM)
            try:
                m.proc.wait(15)
            except Exception:
                m.kill()
    force_cleanup(mountpoint)
