"""Parse /proc/self/mountinfo and tell a live FUSE mount from a stale one.

The one implementation of mountinfo parsing in this repository (the Ansible
modules read the mount table through ``obsctl status --all --json``, which
uses this module).

Format (proc(5), "/proc/[pid]/mountinfo")::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)     (10)         (11)

(7) is zero or more optional fields ended by the separator ``-``. Paths are
octal-escaped (``\\040`` for a space, ``\\011`` tab, ``\\012`` newline,
``\\134`` backslash).

Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import errno
import logging
import os
import re
from collections import namedtuple

#: Default source of the mount table.
MOUNTINFO_PATH = "/proc/self/mountinfo"

_log = logging.getLogger("obsctl.mounttable")
#: Malformed lines already reported (each is logged once per process; bounded).
_REPORTED = set()
_MAX_REPORTED = 64

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

MountInfo = namedtuple(
    "MountInfo",
    [
        "mount_id",  # int, field (1)
        "parent_id",  # int, field (2)
        "major_minor",  # str "MAJOR:MINOR", field (3); for FUSE the minor is the
        # connection number in /sys/fs/fuse/connections/
        "root",  # str, field (4), unescaped
        "mountpoint",  # str, field (5), unescaped
        "mount_options",  # str, field (6)
        "optional_fields",  # tuple of str, field (7)
        "fstype",  # str, field (9), e.g. "fuse.rclone"
        "source",  # str, field (10), unescaped, e.g. "s3remote:bucket"
        "super_options",  # str, field (11)
    ],
)


def unescape(field):
    """Undo the kernel's octal escaping of a mountinfo path field."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_line(line):
    """Parse one mountinfo line into a :class:`MountInfo`.

    Raises:
        ValueError: the line does not have the mountinfo shape (no ``-``
            separator after the six fixed fields, nothing after it, mount
            ids that are not numbers, a device that is not ``MAJOR:MINOR``);
            the message says which and quotes the line.
    """
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise ValueError("not a mountinfo line (no ' - ' separator after 6 fields): %r" % line)
    if len(fields) < sep + 3:
        raise ValueError("not a mountinfo line (no file system type and source after ' - '): %r" % line)
    if not (fields[0].isdigit() and fields[1].isdigit()):
        raise ValueError("not a mountinfo line (mount ids are not numbers): %r" % line)
    if fields[2].count(":") != 1:
        raise ValueError("not a mountinfo line (device is not MAJOR:MINOR): %r" % line)
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major_minor=fields[2],
        root=unescape(fields[3]),
        mountpoint=unescape(fields[4]),
        mount_options=fields[5],
        optional_fields=tuple(fields[6:sep]),
        fstype=fields[sep + 1],
        source=unescape(fields[sep + 2]),
        super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
    )


def parse(text):
    """Parse the whole mountinfo text; return a list of :class:`MountInfo`.

    Blank lines are skipped. A malformed line (see :func:`parse_line`) is
    skipped too, with one warning per distinct line and process on the
    ``obsctl.mounttable`` logger: one bad line (a truncated read, a kernel
    or test fixture oddity) must not hide every other mount or end in a
    traceback.

    Raises:
        ValueError: there are lines and not one of them is a mountinfo line
            (the file is not a mount table at all; every real one lists ``/``).
    """
    entries = []
    first_error = None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(parse_line(line))
        except ValueError as exc:
            first_error = first_error or exc
            if line not in _REPORTED and len(_REPORTED) < _MAX_REPORTED:
                _REPORTED.add(line)
                _log.warning("mount table: skipped a malformed line: %s", exc)
    if first_error is not None and not entries:
        raise ValueError("not a mount table: no line has the mountinfo shape (%s)" % first_error)
    return entries


def read_mounts(path=MOUNTINFO_PATH):
    """Read and parse the mount table at ``path`` (default /proc/self/mountinfo)."""
    with open(path, "r") as handle:
        return parse(handle.read())


def is_fuse(entry):
    """True for FUSE mounts: fstype ``fuse``, ``fuse.*`` or ``fuseblk``."""
    return entry.fstype == "fuse" or entry.fstype.startswith("fuse.") or entry.fstype == "fuseblk"


def fuse_subtype(entry):
    """The FUSE subtype (``rclone``, ``s3fs``, ``bindfs`` ...) or ``""``."""
    if entry.fstype.startswith("fuse."):
        return entry.fstype[len("fuse."):]
    return ""


def fuse_connection(entry):
    """The FUSE connection number (the device minor), as a string.

    It names the directory /sys/fs/fuse/connections/N of the mount.
    """
    return entry.major_minor.split(":", 1)[1]


def find_mount(mountpoint, path=MOUNTINFO_PATH, mounts=None):
    """Return the top-most :class:`MountInfo` at ``mountpoint`` or None.

    When several mounts stack on one path the last line is the visible one.
    """
    target = os.path.normpath(mountpoint)
    found = None
    for entry in mounts if mounts is not None else read_mounts(path):
        if entry.mountpoint == target:
            found = entry
    return found


def fuse_connection_at(mountpoint, path=MOUNTINFO_PATH):
    """The FUSE connection number (a string, as :func:`fuse_connection`) of the
    mount visible at ``mountpoint``, or None.

    None when nothing is mounted there, when the visible mount is not FUSE, or
    when the mount table ``path`` cannot be read or parsed (OSError,
    ValueError): a poller asks again on its next round.
    """
    try:
        entry = find_mount(mountpoint, path=path)
    except (OSError, ValueError):
        return None
    return fuse_connection(entry) if entry is not None and is_fuse(entry) else None


#: errno values that mean "a FUSE mount is there but nobody answers it":
#: ENOTCONN ("Transport endpoint is not connected": the daemon died),
#: ECONNABORTED (the connection was aborted via /sys/fs/fuse/connections/N/abort).
STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)

#: The health probe call: ``statvfs(2)``. FUSE_STATFS always reaches the driver,
#: where a ``stat`` of the root can be answered from the kernel's attribute cache
#: (rclone: ``--attr-timeout`` 1 s) for a while after the driver died.
HEALTH_PROBE = os.statvfs


def probe_health(mountpoint, path=MOUNTINFO_PATH, mounts=None, stat=HEALTH_PROBE):
    """Health of the mount at ``mountpoint``: ``ok``, ``stale`` or ``missing``.

    ``missing``: no entry in the mount table at that path. ``stale``: the entry
    is there but the probe (``stat``, default :data:`HEALTH_PROBE`) fails with
    ENOTCONN/ECONNABORTED (the driver is gone). ``ok``: the entry is there and
    the probe answers. Any other error (EACCES
    for a mount without allow_other seen by another user) counts as ``ok``
    because the daemon did answer.

    This stat can block on a hung (not dead) daemon: every caller goes through
    :class:`obsctl.health.Probe`, which bounds it in time (``hung``).
    """
    if find_mount(mountpoint, path=path, mounts=mounts) is None:
        return "missing"
    try:
        stat(mountpoint)
    except OSError as exc:
        if exc.errno in STALE_ERRNOS:
            return "stale"
    return "ok"


def fuse_mounts(mounts):
    """Only the FUSE entries of a parsed mount table, in table order."""
    return [entry for entry in mounts if is_fuse(entry)]


#: Where fusectl exposes one directory per FUSE connection.
FUSECTL_PATH = "/sys/fs/fuse/connections"


def fuse_waiting(entry, root=FUSECTL_PATH):
    """Requests waiting on the mount's FUSE connection, or None.

    Reads ``ROOT/N/waiting`` (N = the device minor). None when fusectl is not
    mounted or the connection is gone.
    """
    try:
        with open(os.path.join(root, fuse_connection(entry), "waiting"), "r") as handle:
            return int(handle.read().strip())
    except (IOError, OSError, ValueError, IndexError):
        return None
