"""The per-mount state file: one format for ``obsctl mount``, ``obsctl sidecar`` and ``obsctl status``.

One JSON object per mount at ``RUNTIME_DIR/mounts/<escaped mountpoint>.json``
(RUNTIME_DIR is /run/obsctl, or $OBSCTL_RUNTIME_DIR), written atomically
(:func:`obsctl.fileutil.atomic_write`, mode 0640) by the process that runs
the mount. Keys (all always present; None when unknown):

* ``name``, ``mountpoint``, ``source``, ``bucket``, ``impl``;
* ``state``: ``ready`` | ``restarting`` | ``stopping`` | ``failed`` |
  ``observing`` (side-car), as written; :func:`read_states` turns it into
  ``dead`` when the writer (``pid``) no longer runs;
* ``health``: the mount's health as its writer last saw it (a word of
  :mod:`obsctl.health`, the same value ``obsctl_mount_up`` is computed from,
  see :class:`obsctl.collectors.probe.MountProbe`); for a dead writer
  :func:`read_states` replaces it with what the mount is now:
  ``orphaned`` (still mounted and answering, nobody supervises it),
  ``stale`` (mounted, ENOTCONN), ``hung`` (no answer) or ``missing`` (gone);
* ``pid`` (the writer), ``driver_pid`` and ``driver_start`` (the driver's
  start time in clock ticks, so a recycled pid is never taken for it);
* counters and telemetry fields the writer adds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from obsctl import health, mounttable
from obsctl.fileutil import atomic_write
from obsctl.procutil import pid_running

log = logging.getLogger("obsctl")

#: Seconds ``obsctl status`` waits for a stat of a dead writer's mountpoint.
STATUS_PROBE_TIMEOUT = 1.0


def state_file_path(runtime_dir: str, mountpoint: str) -> str:
    """``RUNTIME_DIR/mounts/<mountpoint, / as ->.json`` (``-`` escaped as ``\\x2d``, like systemd-escape)."""
    name = os.path.normpath(mountpoint).strip("/").replace("-", "\\x2d").replace("/", "-") or "-"
    return os.path.join(runtime_dir, "mounts", name + ".json")


def write_state(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``path``; an OSError is logged as a warning, never raised."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        atomic_write(path, json.dumps(state, indent=1) + "\n", 0o640)
    except OSError as exc:
        log.warning("cannot write state file %s: %s", path, exc)


def remove_state(path: str) -> None:
    """Delete the state file at ``path`` if it exists."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def current_health(mountpoint: str, mountinfo_path: str | None = None) -> str:
    """What a mount nobody supervises is now: ``orphaned`` (answers), or the probe's
    ``stale`` / ``hung`` / ``missing`` / ``error`` (:func:`obsctl.health.probe`, within
    :data:`STATUS_PROBE_TIMEOUT` s).

    ``mountinfo_path``: the mount table, default :data:`obsctl.mounttable.MOUNTINFO_PATH`
    as it is when called (tests inject a fixture there).
    """
    word = health.probe(mountpoint, STATUS_PROBE_TIMEOUT, mountinfo_path or mounttable.MOUNTINFO_PATH)
    return health.ORPHANED if word == health.OK else word


def read_states(runtime_dir: str, strict: bool = False) -> list[dict[str, Any]]:
    """Every state file under ``RUNTIME_DIR/mounts``, sorted by file name.

    A state whose writer ``pid`` no longer runs gets ``state = "dead"``
    (``last_state``: what it wrote; ``observing`` means a side-car, whose
    mount obsctl did not start and never recovers) and ``health`` = :func:`current_health` of its mountpoint, so a mount whose
    supervisor was killed never shows ``ok``. Each entry carries
    ``state_file`` (its path). Unreadable or malformed files are skipped.

    Raises:
        OSError: only with ``strict``: the directory exists but cannot be
            listed (not a directory, no permission); a missing one is no mounts.
    """
    base = os.path.join(runtime_dir, "mounts")
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    except OSError:
        if strict:
            raise
        return []
    states = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(base, name)
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict):
            continue
        state["state_file"] = path
        if not isinstance(state.get("pid"), int) or not pid_running(state["pid"]):
            state["last_state"] = state.get("state")
            state["state"] = "dead"
            state["health"] = current_health(str(state.get("mountpoint") or ""))
        states.append(state)
    return states


def state_for(runtime_dir: str, mountpoint: str) -> dict[str, Any] | None:
    """The state of the mount at ``mountpoint`` (as :func:`read_states` gives it), or None."""
    target = os.path.normpath(mountpoint)
    for state in read_states(runtime_dir):
        if os.path.normpath(str(state.get("mountpoint") or "")) == target:
            return state
    return None
