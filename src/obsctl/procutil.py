"""Process helpers shared by the supervisor, the side-car, ``obsctl status`` and ``obsctl unmount``.

Everything here reads /proc (proc(5)) and needs no privilege for the
caller's own processes; other users' /proc/PID/fd is readable only by root,
and what cannot be read is skipped, never reported as an error.
"""

from __future__ import annotations

import os
import signal
from typing import NamedTuple


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)`` field (field 3 = index 0), or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (state ``Z``/``X`` in /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (proc(5) stat field 22), or None.

    A pid and its start time together name one process: a recycled pid has
    another start time. Used to never signal a stranger whose pid was reused.
    """
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 = index 22 - 3
    except (IndexError, ValueError):
        return None


def same_process(pid: int | None, started: int | None) -> bool:
    """True when ``pid`` runs and, if ``started`` is known, started at that tick."""
    if not isinstance(pid, int) or pid <= 0 or not pid_running(pid):
        return False
    return started is None or start_time(pid) == started


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` / ``was killed by SIGKILL`` from a Popen returncode."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Holder(NamedTuple):
    """A process that keeps a mount busy: its pid, its ``comm`` and how (``cwd``, ``root``, ``fd 3``)."""

    pid: int
    comm: str
    how: str

    def __str__(self) -> str:
        return f"{self.comm}[{self.pid}] ({self.how})"


def _inside(path: str, mountpoint: str) -> bool:
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def holders(mountpoint: str, proc: str = "/proc", limit: int = 20) -> list[Holder]:
    """Processes with a cwd, root or open file under ``mountpoint`` (at most ``limit``).

    Reads the links /proc/PID/cwd, /proc/PID/root and /proc/PID/fd/* with
    readlink(2), which never enters the FUSE mount, so it cannot hang on a
    dead or hung driver. Links that cannot be read (other users' processes
    when not root, processes that just exited) are skipped. Paths of files
    deleted while open carry `` (deleted)``; they still count.
    """
    mountpoint = os.path.normpath(mountpoint)
    found: list[Holder] = []
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return found
    me = os.getpid()
    for pid in pids:
        if pid == me or len(found) >= limit:
            continue
        how = None
        for link in ("cwd", "root"):
            try:
                if _inside(os.readlink(f"{proc}/{pid}/{link}"), mountpoint) and (
                        link == "cwd" or mountpoint != "/"):
                    how = link
                    break
            except OSError:
                continue
        if how is None:
            try:
                fds = os.listdir(f"{proc}/{pid}/fd")
            except OSError:
                fds = []
            for fd in fds:
                try:
                    target = os.readlink(f"{proc}/{pid}/fd/{fd}")
                except OSError:
                    continue
                if _inside(target.removesuffix(" (deleted)"), mountpoint):
                    how = f"fd {fd}"
                    break
        if how is not None:
            try:
                with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as handle:
                    comm = handle.read().strip()
            except OSError:
                comm = "?"
            found.append(Holder(pid, comm, how))
    return found
