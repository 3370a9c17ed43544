"""The per-mount state file: one format for ``obsctl mount``, ``obsctl sidecar`` and ``obsctl status``.

One JSON object per mount at ``RUNTIME_DIR/mounts/<key>.json`` (RUNTIME_DIR is
/run/obsctl, or $OBSCTL_RUNTIME_DIR; ``key`` is :func:`obsctl.paths.mount_key`,
unique per mountpoint and at most 137 characters), written atomically
(:func:`obsctl.fileutil.atomic_write`, mode 0640) by the process that runs
the mount. A write that fails (runtime dir full or read-only) is one warning,
then retried quietly at every poll; a line says when it works again; the mount
stays manageable through its claim (:class:`MountClaim`).

The claim: ``RUNTIME_DIR/locks/<key>.lock``, held with ``flock(2)`` (LOCK_EX)
by the one process that runs the mountpoint, from before anything is spawned
until it exits (the kernel drops it when the process dies, even by SIGKILL).
A second ``obsctl mount`` on the same path is refused (exit 2) before it
spawns anything; ``obsctl unmount`` finds the holder's pid in /proc/locks
(proc(5)) when no state file could be written. Lock files are never
deleted (deleting a lock file races with a process that just opened it).

Keys of the state file (all always present; None when unknown):

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
import errno
import fcntl
import json
import logging
import os
from typing import Any

from obsctl import health, mounttable
from obsctl.errors import ConfigError
from obsctl.fileutil import atomic_write
from obsctl.paths import mount_key
from obsctl.procutil import pid_running

log = logging.getLogger("obsctl")

#: Seconds ``obsctl status`` waits for a stat of a dead writer's mountpoint.
STATUS_PROBE_TIMEOUT = 1.0

#: State files whose last write failed (warned once; cleared when a write works again).
_FAILING: set[str] = set()


def state_file_path(runtime_dir: str, mountpoint: str) -> str:
    """``RUNTIME_DIR/mounts/<key>.json``, ``key`` = :func:`obsctl.paths.mount_key` of ``mountpoint``."""
    return os.path.join(runtime_dir, "mounts", mount_key(mountpoint) + ".json")


def write_state(path: str, state: dict[str, Any]) -> bool:
    """Write ``state`` atomically to ``path``; True when written. Never raises.

    The first failure for ``path`` is one warning that says what still works;
    later ones are logged at debug level only (the caller retries at its next
    poll); the first success after a failure says so once.
    """
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        atomic_write(path, json.dumps(state, indent=1) + "\n", 0o640)
    except OSError as exc:
        if path in _FAILING:
            log.debug("cannot write state file %s: %s", path, exc)
        else:
            _FAILING.add(path)
            log.warning("cannot write state file %s: %s; the mount keeps running, `obsctl status` cannot show "
                        "it until a write works (retried at every poll, quietly), `obsctl unmount %s` still "
                        "works", path, exc.strerror or exc, state.get("mountpoint"))
        return False
    if path in _FAILING:
        _FAILING.discard(path)
        log.warning("state file %s written again", path)
    return True


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


def claim_path(runtime_dir: str, mountpoint: str) -> str:
    """``RUNTIME_DIR/locks/<key>.lock``, ``key`` = :func:`obsctl.paths.mount_key` of ``mountpoint``."""
    return os.path.join(runtime_dir, "locks", mount_key(mountpoint) + ".lock")


class ClaimError(ConfigError):
    """The mountpoint is claimed by another live process, or no claim could be made: exit 2."""


class MountClaim:
    """The claim of one mountpoint by this process (see the module docstring).

    Args:
        runtime_dir: obsctl's runtime directory.
        mountpoint: absolute path.
    """

    def __init__(self, runtime_dir: str, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.path = claim_path(runtime_dir, mountpoint)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the claim without waiting.

        Raises:
            ClaimError: another process holds it (the message names its pid), or the
                lock file cannot be created (the message names the runtime dir).
        """
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            raise ClaimError(
                f"cannot claim {self.mountpoint}: cannot create {self.path}: {exc.strerror or exc} "
                "(obsctl's runtime directory must be writable: OBSCTL_RUNTIME_DIR, default /run/obsctl)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ClaimError(f"cannot claim {self.mountpoint}: flock {self.path}: {exc.strerror}") from None
            holder = lock_holder(self.path)
            raise ClaimError(
                f"{self.mountpoint} is claimed by another obsctl (pid {holder if holder else 'unknown'}) "
                f"that is starting or running a mount there; nothing was started. Stop it first with: "
                f"obsctl unmount {self.mountpoint}") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the claim (also done by the kernel when the process exits)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(path: str, locks_path: str = "/proc/locks") -> int | None:
    """The pid holding a ``flock(2)`` lock on ``path``, from /proc/locks (proc(5): ``ID: FLOCK
    ADVISORY WRITE PID MAJ:MIN:INODE START END``, the device numbers in hex), or None."""
    try:
        st = os.stat(path)
        with open(locks_path, encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # "->" lines are waiters, not holders
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return int(fields[4])
        except ValueError:
            continue
    return None


def claim_holder(runtime_dir: str, mountpoint: str) -> int | None:
    """The live process holding the claim of ``mountpoint``, or None (nobody, or it cannot be told)."""
    pid = lock_holder(claim_path(runtime_dir, mountpoint))
    return pid if pid is not None and pid_running(pid) else None


def unlisted_claims(runtime_dir: str, states: list[dict[str, Any]]) -> list[int]:
    """Pids of live claim holders with no state file among ``states``: mounts that run but
    could not write their state (``obsctl status`` names them)."""
    listed = {os.path.basename(str(s.get("state_file") or ""))[:-len(".json")] for s in states}
    try:
        names = os.listdir(os.path.join(runtime_dir, "locks"))
    except OSError:
        return []
    pids = []
    for name in sorted(names):
        if name.endswith(".lock") and name[:-len(".lock")] not in listed:
            pid = lock_holder(os.path.join(runtime_dir, "locks", name))
            if pid is not None and pid_running(pid):
                pids.append(pid)
    return pids


def state_for(runtime_dir: str, mountpoint: str) -> dict[str, Any] | None:
    """The state of the mount at ``mountpoint`` (as :func:`read_states` gives it), or None."""
    target = os.path.normpath(mountpoint)
    for state in read_states(runtime_dir):
        if os.path.normpath(str(state.get("mountpoint") or "")) == target:
            return state
    return None
