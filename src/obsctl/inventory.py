"""Every FUSE mount on the host, as the engine sees it: ``obsctl status --all``.

The ``fuse_mount_info`` module prints this list (through ``obsctl status --all
--json``); nothing else scans /proc for FUSE daemons.

Sources, per mount:

* the mount table (``/proc/self/mountinfo``, read once): mountpoint, source,
  fstype, read-only flag, FUSE connection number (the minor device number);
* the serving process: the one pass over ``/proc/PID`` that finds every
  process holding ``/dev/fuse`` open and naming the mountpoint in its argv
  (rclone mount, s3fs, bindfs, goofys, geesefs, mount-s3 all do; the lowest
  PID wins), its ``comm`` and the systemd unit of its cgroup
  (``/proc/PID/cgroup``);
* health: the one bounded probe (:func:`obsctl.health.probe`: a ``statvfs`` of the
  mountpoint within ``stat_timeout`` seconds): ``ok``, ``stale``, ``hung``;
* ``waiting``: ``/sys/fs/fuse/connections/N/waiting``;
* the obsctl mount name: ``/etc/obsctl/mounts/NAME.toml`` whose mountpoint it is.
  Configured mounts that are not mounted are listed with health ``missing``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from obsctl import health, mounttable, tomlio


def unit_from_cgroup(text: str) -> str | None:
    """The last ``*.service`` / ``*.scope`` path element of ``/proc/PID/cgroup`` text
    (cgroup v2, or the named ``systemd`` hierarchy of v1), or None."""
    best = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[1] not in ("", "name=systemd"):
            continue
        for element in parts[2].split("/"):
            if element.endswith((".service", ".scope")):
                best = element
    return best


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return None


def fuse_daemons(proc: str = "/proc") -> dict[str, int]:
    """``{mountpoint argument: pid}`` of every process holding ``/dev/fuse`` open, in one pass.

    Each argument of a daemon's argv (resolved against its cwd) is a key; where
    several processes name the same path the lowest PID wins.
    """
    found: dict[str, int] = {}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return found
    for pid in pids:
        base = Path(proc, str(pid))
        try:
            fds = os.listdir(base / "fd")
        except OSError:
            continue
        holds_fuse = False
        for fd in fds:
            try:
                if os.readlink(base / "fd" / fd) == "/dev/fuse":
                    holds_fuse = True
                    break
            except OSError:
                continue
        if not holds_fuse:
            continue
        try:
            argv = (base / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        try:
            cwd = os.readlink(base / "cwd")
        except OSError:
            cwd = "/"
        for arg in argv[1:]:
            if arg:
                found.setdefault(os.path.normpath(os.path.join(cwd, arg)), pid)
    return found


def configured_mounts(root: str = "/") -> dict[str, dict[str, Any]]:
    """``{mountpoint: spec}`` of every ``/etc/obsctl/mounts/*.toml`` (unreadable files skipped)."""
    directory = Path(root, "etc/obsctl/mounts")
    result: dict[str, dict[str, Any]] = {}
    try:
        files = sorted(directory.glob("*.toml"))
    except OSError:
        return result
    for path in files:
        text = _read(path)
        if text is None:
            continue
        try:
            spec = dict(tomlio.parse(text, str(path)))
        except ValueError:
            continue
        spec.setdefault("name", path.stem)
        if spec.get("mountpoint"):
            result[os.path.normpath(str(spec["mountpoint"]))] = spec
    return result


def fuse_mount_info(mountinfo_path: str = mounttable.MOUNTINFO_PATH, stat_timeout: float = 5.0,
                    root: str = "/", proc: str = "/proc", fusectl: str = mounttable.FUSECTL_PATH,
                    probe: Callable[..., str] = health.probe) -> list[dict[str, Any]]:
    """Every FUSE mount on the host, then the configured obsctl mounts that are missing.

    Each entry: ``{mountpoint, source, fstype, driver, connection, read_only, pid, unit,
    name, health: ok|stale|hung|missing (:mod:`obsctl.health`), waiting}`` (see the module docstring for the sources;
    ``stat_timeout`` in seconds).

    Raises:
        OSError: the mount table cannot be read.
    """
    mounts = mounttable.read_mounts(mountinfo_path)
    configured = configured_mounts(root)
    daemons = fuse_daemons(proc)
    result = []
    seen = set()
    for entry in mounttable.fuse_mounts(mounts):
        if entry.mountpoint in seen:
            continue  # stacked mounts: report the visible (last) one only
        visible = mounttable.find_mount(entry.mountpoint, mounts=mounts)
        seen.add(entry.mountpoint)
        spec = configured.get(entry.mountpoint)
        pid = daemons.get(entry.mountpoint)
        cgroup = _read(Path(proc, str(pid), "cgroup")) if pid else None
        unit = unit_from_cgroup(cgroup) if cgroup else None
        if spec is not None and (unit is None or unit.endswith(".scope")):
            unit = f"obsctl-mount@{spec['name']}.service"
        comm = (_read(Path(proc, str(pid), "comm")) or "").strip() if pid else ""
        result.append({
            "mountpoint": visible.mountpoint,
            "source": visible.source,
            "fstype": visible.fstype,
            "driver": mounttable.fuse_subtype(visible) or comm or visible.fstype,
            "connection": int(mounttable.fuse_connection(visible)),
            "read_only": "ro" in visible.mount_options.split(","),
            "pid": pid,
            "unit": unit,
            "name": spec["name"] if spec else None,
            "health": probe(entry.mountpoint, stat_timeout, mounts=mounts),
            "waiting": mounttable.fuse_waiting(visible, root=fusectl),
        })
    for mountpoint in sorted(set(configured) - seen):
        spec = configured[mountpoint]
        result.append({
            "mountpoint": mountpoint, "source": spec.get("source"), "fstype": None,
            "driver": spec.get("impl"), "connection": None, "read_only": bool(spec.get("read_only")),
            "pid": None, "unit": f"obsctl-mount@{spec['name']}.service", "name": spec["name"],
            "health": health.MISSING, "waiting": None,
        })
    return result
