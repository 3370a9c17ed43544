"""bindfs under ``obsctl mount`` for the kernel-source tests: the set-up and
the workload both kernel sources (tracefs: tests/integration/test_fuse_trace.py,
eBPF: tests/integration/test_fuse_bpf.py) are checked against.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from support.obsctl import obsctl_env, require_driver

#: bytes of ``read.bin`` in the bindfs source directory
READ_SIZE = 1_000_000


def start_bindfs(tmp_path: Path, mountpoint: Path, runtime_dir: Any, telemetry_toml: Callable[..., Path],
                 start_mount: Callable[..., Any]) -> tuple[Path, dict[str, str], Any]:
    """bindfs of ``tmp_path/src`` on ``mountpoint`` under ``obsctl mount --impl generic``,
    exporting every second, ready.

    The source holds ``read.bin`` (:data:`READ_SIZE` random bytes) and ``locked``
    (mode 000). The daemon runs without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH:
    root's open of the mode-000 file passes the kernel's check and fails in
    bindfs (EACCES from the daemon, see :func:`daemon_errors`).

    Returns (the source directory, the obsctl environment, the mount's handle
    from the ``start_mount`` fixture). Skips without bindfs (``require_driver``).
    """
    require_driver("generic")
    src = tmp_path / "src"
    src.mkdir()
    (src / "read.bin").write_bytes(os.urandom(READ_SIZE))
    (src / "locked").write_text("x")
    (src / "locked").chmod(0)
    env = obsctl_env(runtime_dir)
    tel = telemetry_toml(export_interval_seconds=1)
    m = start_mount([str(src), str(mountpoint), "--impl", "generic", "--telemetry-config", str(tel),
                     "--ready-timeout", "20", "--", "setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                     "bindfs", "-f", str(src), str(mountpoint)], env)
    m.wait_ready(30)
    return src, env, m


def workload(mnt: Path, read_name: str, write_size: int) -> dict:
    """lookup/getattr (stat of a missing name and of a file), create+write,
    open+read, unlink. Returns what was moved: ``{"read": bytes, "write": bytes}``."""
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "no-such-file")
    with open(mnt / "new.bin", "wb") as fh:
        fh.write(os.urandom(write_size))
    os.stat(mnt / "new.bin")
    with open(mnt / read_name, "rb") as fh:
        data = fh.read()
    os.unlink(mnt / "new.bin")
    return {"read": len(data), "write": write_size}


def daemon_errors(src: Path, mountpoint: Path) -> None:
    """One EACCES and one ENOENT answered by bindfs itself (not the kernel) on OPEN.

    EACCES: the mode-000 ``locked`` of :func:`start_bindfs`. ENOENT: the
    kernel's dentry is cached, the file is gone underneath, the open reaches
    bindfs (not a lookup miss)."""
    with pytest.raises(PermissionError):
        open(mountpoint / "locked", "rb").close()
    (src / "gone").write_text("x")
    os.stat(mountpoint / "gone")
    os.unlink(src / "gone")
    with pytest.raises(FileNotFoundError):
        open(mountpoint / "gone", "rb").close()
