"""Unmount, stop a driver, check a mountpoint before use, recover an orphaned mount.

The shutdown policy (docs/operations.md):

1. ``fusermount3 -u`` (``umount`` without fusermount3). A mount in use
   (an open file, a process's cwd inside: EBUSY) is retried every 0.1 s for
   at most ``busy_wait`` seconds (:data:`BUSY_WAIT`), after one warning that
   names the processes holding it (pid and command, from /proc);
2. still busy after that: lazy detach (``fusermount3 -u -z``): the path is
   free at once; the processes that hold it get errors once the driver stops;
3. the driver is then asked to stop: it exits by itself after a normal
   unmount; otherwise SIGTERM, and SIGKILL :data:`TERM_WAIT` s later.

A mount with other mounts inside it (:func:`nested_mounts`) is never
detached lazily by this policy: a lazy detach takes every mount below it
along (umount(2) MNT_DETACH). :func:`unmount` then answers :data:`NESTED`
and leaves everything mounted; ``obsctl unmount`` refuses such a mount with
a message naming the mounts inside (docs/operations.md "Nested mounts").
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import Any

from obsctl import mounttable
from obsctl.errors import ConfigError
from obsctl.procutil import holders, same_process
from obsctl.statefile import remove_state

log = logging.getLogger("obsctl")

#: Seconds a busy mount is retried with a normal unmount before the lazy detach.
BUSY_WAIT = 3.0
#: Seconds the driver gets to exit by itself after its mount is gone.
EXIT_WAIT = 1.0
#: Seconds between SIGTERM and SIGKILL.
TERM_WAIT = 2.0
#: Interval of the busy retries (s).
RETRY_INTERVAL = 0.1


class MountpointError(ConfigError):
    """The mountpoint cannot be used (missing, not a directory, mounted by someone else): exit 2."""


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _mounted(mountpoint: str, path: str = mounttable.MOUNTINFO_PATH) -> bool:
    try:
        return mounttable.find_mount(mountpoint, path=path) is not None
    except (OSError, ValueError):
        return False


def _run(argv: list[str]) -> None:
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def unmount_argv(mountpoint: str, lazy: bool = False) -> list[str]:
    """The one unmount command of obsctl (supervisor, ``obsctl unmount``, the engine):
    ``fusermount3 -u [-z] MOUNTPOINT``, or ``umount [-l] MOUNTPOINT`` where fusermount3
    (or fusermount) is not installed."""
    fusermount = _fusermount()
    if fusermount:
        return [os.path.basename(fusermount), "-u", *(["-z"] if lazy else []), mountpoint]
    return ["umount", *(["-l"] if lazy else []), mountpoint]


def unmount_once(mountpoint: str, lazy: bool = False, path: str = mounttable.MOUNTINFO_PATH) -> bool:
    """One :func:`unmount_argv`; True when nothing is mounted afterwards.

    ``path`` is the mount table to consult (tests inject one).
    """
    if not _mounted(mountpoint, path):
        return True
    _run(unmount_argv(mountpoint, lazy))
    return not _mounted(mountpoint, path)


def warn(message: str) -> None:
    """One ``obsctl: ...`` line on stderr (the journal under systemd)."""
    print(f"obsctl: {message}", file=sys.stderr, flush=True)


UNMOUNTED, DETACHED, FAILED, NESTED = "unmounted", "detached", "failed", "nested"


def nested_mounts(mountpoint: str, path: str = mounttable.MOUNTINFO_PATH) -> list[str]:
    """Mountpoints strictly below ``mountpoint`` in the mount table ``path``, in table order; [] when
    the table cannot be read."""
    base = os.path.normpath(mountpoint).rstrip("/") + "/"
    try:
        mounts = mounttable.read_mounts(path)
    except (OSError, ValueError):
        return []
    return list(dict.fromkeys(m.mountpoint for m in mounts if m.mountpoint.startswith(base)))


def unmount(mountpoint: str, busy_wait: float = BUSY_WAIT, should_hurry: Any = None,
            path: str = mounttable.MOUNTINFO_PATH) -> str:
    """Unmount ``mountpoint`` by the policy of this module (normal, busy retries, lazy detach).

    Args:
        mountpoint: absolute path.
        busy_wait: seconds of normal-unmount retries while the mount is busy.
        should_hurry: optional callable; when it returns True the retries stop
            early (e.g. a second SIGTERM).
        path: the mount table to consult (tests inject one).

    Returns:
        ``"unmounted"`` (a normal unmount, or nothing was mounted),
        ``"detached"`` (lazily, after the busy wait), ``"nested"`` (other
        mounts are inside it: nothing was detached, everything is still
        mounted; a warning names them) or ``"failed"`` (still mounted).
    """
    if unmount_once(mountpoint, path=path):
        return UNMOUNTED
    inside = nested_mounts(mountpoint, path)
    if inside:
        warn(f"{mountpoint} has other mounts inside it ({', '.join(inside)}); not detaching it, which would "
             "detach them too: unmount those first")
        return NESTED
    held = holders(mountpoint)
    who = ", ".join(str(h) for h in held) if held else "no process found in /proc (a bind mount or another namespace?)"
    warn(f"{mountpoint} is busy, held by: {who}; retrying for {busy_wait:g} s, then detaching it lazily")
    deadline = time.monotonic() + busy_wait
    while time.monotonic() < deadline and not (should_hurry and should_hurry()):
        time.sleep(RETRY_INTERVAL)
        if unmount_once(mountpoint, path=path):
            return UNMOUNTED
    if unmount_once(mountpoint, lazy=True, path=path):
        warn(f"{mountpoint} detached lazily; processes still using it get errors from now on")
        return DETACHED
    return FAILED


def stop_process(proc: subprocess.Popen[bytes] | None, exit_wait: float = EXIT_WAIT,
                 term_wait: float = TERM_WAIT) -> None:
    """Wait ``exit_wait`` s for ``proc`` to exit, then SIGTERM, ``term_wait`` s later SIGKILL; reaps it."""
    if proc is None:
        return
    for sig, wait in ((None, exit_wait), (signal.SIGTERM, term_wait), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        if sig is not None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def abort(proc: subprocess.Popen[bytes] | None, mountpoint: str, path: str = mounttable.MOUNTINFO_PATH) -> None:
    """Stop a driver that never became ready, then clear its mount: bounded by about a second.

    The driver goes first (SIGTERM, SIGKILL 0.5 s later): a driver stuck in
    its start-up (s3fs retrying its bucket check) would make an unmount
    block; once it is gone the unmount of its mount cannot block.
    """
    stop_process(proc, exit_wait=0.0, term_wait=0.5)
    if not unmount_once(mountpoint, path=path):
        unmount_once(mountpoint, lazy=True, path=path)


def kill_pid(pid: int, started: int | None, term_wait: float = TERM_WAIT) -> bool:
    """SIGTERM then SIGKILL a process that is not our child (an orphaned driver).

    Only when ``pid`` still is the process that started at ``started``
    (clock ticks, :func:`obsctl.procutil.start_time`). Returns True when it
    is gone (or was never there).
    """
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 2.0)):
        if not same_process(pid, started):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and same_process(pid, started):
            time.sleep(0.05)
    return not same_process(pid, started)


def recover_orphan(state: dict[str, Any], busy_wait: float = BUSY_WAIT) -> list[str]:
    """Clean up after a mount whose supervisor died (``state`` from :func:`obsctl.statefile.read_states`).

    A driver it recorded that still runs (checked by pid and start time, so
    a recycled pid is never signalled) is still serving: its mount is
    unmounted by the policy above, then the driver is stopped. Without a
    driver the mount is dead: it is detached at once (the busy warning still
    names who holds it). Then the state file is removed. Returns what was
    done, one phrase per action.

    Raises:
        RuntimeError: something is still mounted afterwards.
    """
    mountpoint = str(state.get("mountpoint") or "")
    done = []
    driver_pid, driver_start = state.get("driver_pid"), state.get("driver_start")
    if isinstance(driver_pid, int) and same_process(driver_pid, driver_start):
        # An orphaned driver still serves: the busy policy applies, then it is stopped.
        if _mounted(mountpoint):
            if unmount(mountpoint, busy_wait) in (FAILED, NESTED):
                raise RuntimeError(f"{mountpoint} is still mounted; try: fusermount3 -u -z {mountpoint}")
            done.append(f"unmounted {mountpoint}")
        kill_pid(driver_pid, driver_start)
        done.append(f"stopped its driver (pid {driver_pid})")
    elif _mounted(mountpoint):
        # The driver is gone: the mount is dead and nobody's I/O can finish; no wait.
        if unmount(mountpoint, busy_wait=0.0) in (FAILED, NESTED):
            raise RuntimeError(f"{mountpoint} is still mounted; try: fusermount3 -u -z {mountpoint}")
        done.append(f"unmounted {mountpoint}")
    if state.get("state_file"):
        remove_state(str(state["state_file"]))
    done.append("removed its state file")
    return done


def preflight(mountpoint: str, path: str = mounttable.MOUNTINFO_PATH, allow_non_empty: bool = False) -> None:
    """Check the mountpoint before anything is spawned (``path``: the mount table).

    The rules (README "Mount spec", docs/operations.md): an existing directory,
    named by its canonical path (a symlink anywhere in it is refused, with the
    path to use: the kernel mounts on the target, and the mount table, the state
    file and every check name the target), nothing mounted on it, no entries in
    it unless ``allow_non_empty`` (rclone's ``--allow-non-empty``). System
    directories are the spec's rule (:func:`obsctl.paths.system_path`).

    Raises:
        MountpointError: missing, a symlink, not a directory, a dead FUSE mount,
            already a mount point, or not empty (each with what to do about it).
    """
    table, path = path, mountpoint
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountpointError(f"mountpoint {path} does not exist; create it first (mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno in mounttable.STALE_ERRNOS:
            raise MountpointError(
                f"mountpoint {path} is a dead FUSE mount (Transport endpoint is not connected) that obsctl "
                f"did not start; clear it with: fusermount3 -u -z {path}") from None
        raise MountpointError(f"mountpoint {path}: {exc.strerror}") from None
    resolved = os.path.realpath(path)
    if resolved != os.path.normpath(path):
        raise MountpointError(
            f"mountpoint {path} goes through a symlink (it resolves to {resolved}); obsctl does not follow "
            f"symlinks in a mountpoint: give the resolved path ({resolved}) instead")
    if not stat.S_ISDIR(st.st_mode):
        raise MountpointError(f"mountpoint {path} is not a directory; a FUSE mount needs an empty directory")
    existing = mounttable.find_mount(mountpoint, path=table)
    if existing is not None:
        raise MountpointError(
            f"{path} is already a mount point ({existing.fstype} from {existing.source}); "
            f"unmount it first (obsctl unmount {path}, or fusermount3 -u {path} if obsctl did not start it)")
    if not allow_non_empty:
        check_empty(path)


def check_empty(path: str) -> None:
    """Refuse a mountpoint directory that has entries: the mount would hide them (the rule of
    :func:`preflight` without ``allow_non_empty``; the engine applies it before it writes anything).

    Raises:
        MountpointError: ``path`` has an entry (the message names one, and the option that allows
            it: ``--allow-non-empty``, ``allow_non_empty = true``), or cannot be listed.
    """
    try:
        with os.scandir(path) as entries:
            first = next(entries, None)
    except OSError as exc:
        raise MountpointError(f"mountpoint {path}: {exc.strerror}") from None
    if first is not None:
        raise MountpointError(
            f"mountpoint {path} is not empty (it has {first.name!r} ...): the mount would hide its "
            "entries. Use an empty directory, or allow it on purpose: --allow-non-empty "
            "(mount spec: allow_non_empty = true; fuse_mount module and fuse_mounts role: allow_non_empty: true)")


def ensure_fusectl(sys_path: str = "/sys") -> None:
    """Mount fusectl on /sys/fs/fuse/connections if it is not (needs root); never raises."""
    target = os.path.join(sys_path, "fs/fuse/connections")
    try:
        if not os.path.isdir(target) or os.listdir(target) or mounttable.find_mount(target) is not None:
            return
    except (OSError, ValueError):
        return
    _run(["mount", "-t", "fusectl", "none", target])
