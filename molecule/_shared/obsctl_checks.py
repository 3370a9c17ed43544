"""Checks shared by the molecule scenarios' testinfra verifiers.

``host`` is testinfra's host fixture (the container); everything else runs on
the controller (the host), where the OTLP receiver writes what it got to
``$OBSCTL_OTLP_STATE/received.json`` (molecule/_shared/otlp_sink.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# The polling helper of the repository's tests (tests/support/waiting.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support.waiting import wait_until  # noqa: E402  pylint: disable=wrong-import-position

#: The secret access key the scenarios configure; it must never appear in a
#: file, a command line or the journal of the target.
SECRET = "molecule-secret-7f3c9a0e51"

#: Directories searched for the secret (not /proc, /sys, /dev, nor the FUSE mounts).
SEARCHED = ["/etc", "/opt", "/var", "/root", "/tmp", "/run", "/home", "/srv", "/usr/local"]


def otlp_state() -> dict:
    path = Path(os.environ["OBSCTL_OTLP_STATE"]) / "received.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"requests": {"metrics": 0, "traces": 0}, "metric_names": [], "series": [], "spans": []}


def otlp_value(name: str, **attrs: str):
    """Latest value of the series ``name`` whose attributes include ``attrs``; None if none."""
    for s in otlp_state()["series"]:
        if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attrs.items()):
            return s["value"]
    return None


def wait_for(predicate, timeout: float, what: str):
    """:func:`support.waiting.wait_until`, showing what the OTLP receiver got when it times out."""
    return wait_until(predicate, timeout,
                      lambda: f"{what}; the OTLP receiver got: " + json.dumps(otlp_state(), indent=1)[:3000],
                      interval=0.5)


def mount_fstype(host, mountpoint: str) -> str | None:
    """fstype of the top mount at ``mountpoint`` in the container's mount table."""
    out = host.check_output("cat /proc/self/mountinfo")
    found = None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == mountpoint:
            found = fields[fields.index("-") + 1]
    return found


#: Runs in the container. The secret arrives hex-encoded so that neither this
#: command line nor the log line Ansible writes for it contains the secret.
SECRET_SCAN = r'''
import os, subprocess, sys
secret = bytes.fromhex(sys.argv[1])
roots = sys.argv[2:]
files = []
for root in roots:
    for d, dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            try:
                if not os.path.isfile(p) or os.path.islink(p):
                    continue
                with open(p, "rb") as f:
                    if secret in f.read():
                        files.append(p)
            except OSError:
                pass
argv = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            if secret in f.read():
                argv.append(pid)
    except OSError:
        pass
journal = subprocess.run(["journalctl", "--no-pager", "-o", "cat"], capture_output=True).stdout.count(secret)
print("FILE", *files)
print("ARGV", *argv)
print("JOURNAL", journal)
'''


def assert_no_secret(host, secret: str = SECRET) -> None:
    out = host.check_output("python3 -c %s %s " + " ".join(SEARCHED), SECRET_SCAN, secret.encode().hex())
    lines = {line.split(" ", 1)[0]: line.split()[1:] for line in out.splitlines()}
    files = lines["FILE"]
    # /run/credentials/UNIT/ is where systemd puts a unit's decrypted
    # LoadCredentialEncrypted= credential: an in-memory file system (ramfs),
    # readable by that unit only, gone when it stops. Anything else is a leak.
    in_memory = [f for f in files if f.startswith("/run/credentials/")]
    assert [f for f in files if f not in in_memory] == [], f"the secret is in these files: {files}"
    for f in in_memory:
        unit_dir = "/".join(f.split("/")[:4])
        fstype = host.check_output("findmnt -n -o FSTYPE --target %s", unit_dir)
        assert fstype in ("ramfs", "tmpfs"), f"{unit_dir} is on {fstype}, not in memory"
        assert host.file(f).mode & 0o077 == 0, f"{f} is readable by others"
    cmdlines = [host.run("tr '\\0' ' ' </proc/%s/cmdline", pid).stdout[:200] for pid in lines["ARGV"]]
    assert lines["ARGV"] == [], f"the secret is on a command line: {lines['ARGV']}"
    assert lines["JOURNAL"] == ["0"], "the secret is in the journal"


LISTENERS = r'''
import os, re
inodes = {}
for proto in ("tcp", "tcp6", "udp", "udp6"):
    try:
        lines = open("/proc/net/" + proto).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if proto.startswith("tcp") and f[3] != "0A":
            continue
        inodes[f[9]] = (proto, f[1])
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        comm = open("/proc/%s/comm" % pid).read().strip()
        fds = os.listdir("/proc/%s/fd" % pid)
    except OSError:
        continue
    for fd in fds:
        try:
            link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m and m.group(1) in inodes:
            print(pid, comm, *inodes[m.group(1)])
'''


def listeners(host) -> list[tuple[str, str, str, str]]:
    """(pid, comm, proto, local hex address) of every listening socket a process of the container holds."""
    out = host.check_output("python3 -c %s", LISTENERS)
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def is_loopback(hex_addr: str) -> bool:
    """``0100007F:1F90`` (127.0.0.1) or the IPv6 ::1 form."""
    addr = hex_addr.split(":")[0]
    if len(addr) == 8:
        return addr.endswith("7F")
    return addr == "00000000000000000000000001000000"
