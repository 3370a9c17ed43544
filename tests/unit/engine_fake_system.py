"""A fake host for the desired-state engine (obsctl.engine): systemctl, systemd-creds,
journalctl, fusermount3 and umount, a mount table file, and dead FUSE daemons.

Commands are answered from memory; ``calls`` records them in order. The
desired-state files are real files under ``root`` (a pytest tmp_path).
"""

import base64
import errno
import os

import tomllib

BASE_MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
)


class FakeSystem:
    def __init__(self, root):
        self.root = str(root)
        os.makedirs(os.path.join(self.root, "run/systemd/system"))
        self.mountinfo = os.path.join(self.root, "mountinfo")
        self.mounts = {}  # mountpoint -> mountinfo line
        self.dead = set()  # mountpoints whose driver is gone
        self.units = {}
        self.timers = {}
        self.template_installed = True
        self.fail_start = False
        self.calls = []
        self.secrets_seen_in_args = []
        self._next_id = 100
        self._write_mountinfo()

    # -- helpers for tests ---------------------------------------------------

    def unit(self, name):
        return self.units.setdefault(
            "obsctl-mount@%s.service" % name, {"enabled": False, "active": "inactive", "sub": "dead"}
        )

    def kill_driver(self, mountpoint):
        """kill -9 of the driver: the entry stays, stat gives ENOTCONN."""
        self.dead.add(mountpoint)

    def stat(self, path):
        if path in self.dead:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", path)
        return os.stat(path)

    def commands(self, *prefix):
        return [c for c in self.calls if tuple(c[: len(prefix)]) == prefix]

    def mutating_calls(self):
        readonly = ("show", "is-enabled")
        out = []
        for call in self.calls:
            if call[0] == "systemctl" and call[1] in readonly:
                continue
            if call[0] == "systemd-creds" and call[1] == "decrypt":
                continue
            if call[0] == "journalctl":
                continue
            out.append(call)
        return out

    def _write_mountinfo(self):
        with open(self.mountinfo, "w") as handle:
            handle.write(BASE_MOUNTINFO + "".join(self.mounts.values()))

    def _mount(self, mountpoint, source):
        self._next_id += 1
        self.mounts[mountpoint] = (
            "%d 27 0:%d / %s rw,nosuid,nodev,relatime - fuse.rclone %s rw,user_id=0,group_id=0\n"
            % (self._next_id, self._next_id, mountpoint.replace(" ", "\\040"), source)
        )
        self.dead.discard(mountpoint)
        self._write_mountinfo()

    def _unmount(self, mountpoint):
        self.mounts.pop(mountpoint, None)
        self.dead.discard(mountpoint)
        self._write_mountinfo()

    def _spec(self, name):
        path = os.path.join(self.root, "etc/obsctl/mounts/%s.toml" % name)
        with open(path) as handle:
            return tomllib.loads(handle.read())

    # -- the command runner ----------------------------------------------------

    def __call__(self, args, data=None):
        args = list(args)
        self.calls.append(args)
        tool = args[0]
        if tool == "systemctl":
            return self._systemctl(args[1], args[2:])
        if tool == "systemd-creds":
            return self._creds(args, data)
        if tool == "journalctl":
            return 0, "obsctl: starting\nobsctl: driver exited with status 1\n", ""
        if tool in ("umount", "fusermount3"):
            mountpoint = args[-1]
            if mountpoint not in self.mounts:
                return 32, "", "umount: %s: not mounted." % mountpoint
            self._unmount(mountpoint)
            return 0, "", ""
        raise AssertionError("unexpected command %r" % args)

    def _creds(self, args, data):
        if args[1] == "encrypt":
            assert args[2] == "--name=s3" and args[3] == "-"
            assert isinstance(data, bytes), "clear text must go through stdin"
            with open(args[4], "wb") as handle:
                handle.write(b"FAKECRED:" + base64.b64encode(data))
            return 0, "", ""
        if args[1] == "decrypt":
            assert args[2] == "--name=s3" and args[4] == "-"
            with open(args[3], "rb") as handle:
                blob = handle.read()
            if not blob.startswith(b"FAKECRED:"):
                return 1, "", "Failed to decrypt."
            return 0, base64.b64decode(blob[len(b"FAKECRED:"):]).decode(), ""
        raise AssertionError(args)

    def _systemctl(self, verb, rest):
        if verb == "daemon-reload":
            return 0, "", ""
        unit_name = rest[-1]
        if unit_name.endswith(".timer"):
            return self._timer(verb, unit_name)
        name = unit_name[len("obsctl-mount@"):-len(".service")]
        unit = self.unit(name)
        if verb == "show":
            load = "loaded" if self.template_installed else "not-found"
            return 0, "LoadState=%s\nActiveState=%s\nSubState=%s\nMainPID=%d\nResult=success\n" % (
                load, unit["active"], unit["sub"], 4242 if unit["active"] == "active" else 0), ""
        if verb == "is-enabled":
            return (0, "enabled\n", "") if unit["enabled"] else (1, "disabled\n", "")
        if verb == "enable":
            unit["enabled"] = True
            return 0, "", ""
        if verb == "disable":
            unit["enabled"] = False
            return 0, "", ""
        if verb == "reset-failed":
            if unit["active"] == "failed":
                unit["active"], unit["sub"] = "inactive", "dead"
            return 0, "", ""
        if verb in ("start", "restart", "stop"):
            spec = None
            if verb != "stop":
                spec = self._spec(name)
            if unit["active"] == "active" or verb == "stop":
                for mountpoint, line in list(self.mounts.items()):
                    if mountpoint not in self.dead:
                        self._unmount(mountpoint) if self._owned(name, mountpoint) else None
                unit["active"], unit["sub"] = "inactive", "dead"
            if verb == "stop":
                return 0, "", ""
            if self.fail_start:
                unit["active"], unit["sub"] = "failed", "failed"
                return 1, "", "Job for %s failed because the control process exited with error code." % unit_name
            if spec["mountpoint"] in self.mounts:
                # obsctl refuses to mount over a mount (stale included)
                unit["active"], unit["sub"] = "failed", "failed"
                return 1, "", "Job failed: mountpoint busy"
            self._mount(spec["mountpoint"], "obsctl-%s:%s" % (name, spec["source"][len("s3://"):]))
            unit["active"], unit["sub"] = "active", "running"
            return 0, "", ""
        raise AssertionError("systemctl %s %r" % (verb, rest))

    def _timer(self, verb, unit_name):
        """Timers: enable/disable/start/stop/show, no side effect on mounts."""
        timer = self.timers.setdefault(unit_name, {"enabled": False, "active": "inactive", "sub": "dead"})
        if verb == "show":
            load = "loaded" if self.template_installed else "not-found"
            return 0, "LoadState=%s\nActiveState=%s\nSubState=%s\nMainPID=0\n" % (
                load, timer["active"], timer["sub"]), ""
        if verb == "is-enabled":
            return (0, "enabled\n", "") if timer["enabled"] else (1, "disabled\n", "")
        if verb in ("enable", "disable"):
            timer["enabled"] = verb == "enable"
        elif verb in ("start", "stop"):
            timer["active"], timer["sub"] = ("active", "waiting") if verb == "start" else ("inactive", "dead")
        elif verb != "reset-failed":
            raise AssertionError("systemctl %s %s" % (verb, unit_name))
        return 0, "", ""

    def _owned(self, name, mountpoint):
        try:
            return self._spec(name)["mountpoint"] == mountpoint
        except (IOError, OSError):
            return True
