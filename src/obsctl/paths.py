"""Where obsctl keeps its files on a host, and which paths it never mounts on: one definition each.

* the runtime directory (state files, :mod:`obsctl.statefile`):
  :data:`DEFAULT_RUNTIME_DIR`, or ``$OBSCTL_RUNTIME_DIR``;
* :func:`mount_key`: the one name of a mountpoint in file and socket names
  (the state file, the mountpoint claim of :mod:`obsctl.claim`), so two
  mountpoints never share one;
* :data:`SYSTEM_TREES` / :data:`SYSTEM_DIRS` and :func:`system_path`: the
  operating system's own directories, refused as mountpoints by the spec rules
  (:class:`obsctl.config.MountSpec`).
"""

from __future__ import annotations

import hashlib
import os

#: Where the per-mount state files live (under ``mounts/``); OBSCTL_RUNTIME_DIR overrides it.
DEFAULT_RUNTIME_DIR = "/run/obsctl"

#: Longest readable part of :func:`mount_key`, in characters. A file name may have 255 bytes
#: (NAME_MAX, <linux/limits.h>); the key adds ``-`` and 16 hex digits, the state file ``.json``:
#: 120 + 17 + 5 stays far below it even when the escapes below make the part grow.
KEY_READABLE_MAX = 120

#: Trees that are never a mountpoint, nor anything below them: the kernel's pseudo file
#: systems (/proc, /sys, /dev: a bucket mounted on /proc/sys hides the kernel's own settings)
#: and the operating system itself (FHS 3.0 sections 3.2-3.4, 3.6, 3.9, 3.12, 3.16, 4:
#: https://refspecs.linuxfoundation.org/FHS_3.0/fhs/index.html).
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/bin", "/sbin",
                "/lib", "/lib32", "/lib64", "/libx32")
#: Directories that are never a mountpoint themselves (a mount there hides everything in
#: them), though a directory below them may be (``/mnt/data``, ``/srv/bucket``, ``/var/lib/x``).
SYSTEM_DIRS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp",
               "/var", "/var/lib", "/var/log", "/var/tmp", "/var/cache", "/var/spool", "/run/obsctl")


def runtime_dir() -> str:
    """``$OBSCTL_RUNTIME_DIR`` or /run/obsctl."""
    return os.environ.get("OBSCTL_RUNTIME_DIR", DEFAULT_RUNTIME_DIR)


def mount_key(mountpoint: str) -> str:
    """The name of ``mountpoint`` in obsctl's file and socket names; two mountpoints never share one.

    The readable part is the path as systemd-escape(1) writes it (``/`` -> ``-``,
    ``-`` -> ``\\x2d``), cut to :data:`KEY_READABLE_MAX` characters; then ``-``
    and the first 16 hex digits of the SHA-256 of the normalised path. The
    escape alone is not one-to-one (``/x/a-b`` and ``/x/a\\x2db`` both give
    ``x-a\\x2db``) and a long path overflows NAME_MAX; the hash makes the key
    unique (a collision needs 2**32 mountpoints on one host by the birthday
    bound of 64 bits) and bounded: at most 137 characters.
    """
    path = os.path.normpath(mountpoint)
    readable = path.strip("/").replace("-", "\\x2d").replace("/", "-") or "-"
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{readable[:KEY_READABLE_MAX]}-{digest}"


def system_path(mountpoint: str) -> str | None:
    """The system directory that forbids ``mountpoint`` (itself in :data:`SYSTEM_DIRS`, or in or
    below one of :data:`SYSTEM_TREES`), or None. ``mountpoint``: absolute, normalised."""
    path = os.path.normpath(mountpoint)
    for tree in SYSTEM_TREES:
        if path == tree or path.startswith(tree + "/"):
            return tree
    return path if path in SYSTEM_DIRS else None
