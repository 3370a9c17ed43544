# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Shared, private code of the fuse_mount and fuse_mount_info modules.

The modules are thin: they declare their argument spec and call into this
file. Everything that decides (desired state, comparison, rollback) lives
here and takes its side effects (``run`` for commands, ``root`` for the file
system, ``mountinfo_path`` for the mount table) as parameters, so the unit
tests drive it without systemd.

Runs on Ansible targets: Python 3.8 compatible, standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import errno
import os
import re
import stat
import tempfile
import time

from ansible_collections.obsctl.observability.plugins.module_utils import _toml
from ansible_collections.obsctl.observability.plugins.module_utils._mountinfo import (
    MOUNTINFO_PATH,
    FUSECTL_PATH,
    find_mount,
    fuse_mounts,
    fuse_subtype,
    fuse_connection,
    fuse_waiting,
    is_fuse,
    probe_health_within,
    read_mounts,
)

IMPLS = ("rclone", "s3fs", "goofys", "geesefs", "mountpoint-s3", "generic")
STATES = ("mounted", "unmounted", "present", "absent", "remounted")

#: Name of the systemd credential; obsctl reads $CREDENTIALS_DIRECTORY/s3.
CREDENTIAL_NAME = "s3"
UNIT_TEMPLATE = "obsctl-mount@.service"

#: First line of every file this collection writes.
MANAGED_HEADER = "# %s\n" % _toml.MANAGED_HEADER

CONFIG_MODE = 0o640
CREDENTIAL_MODE = 0o600
DROPIN_MODE = 0o644

# A systemd instance name that needs no escaping and is a safe file name.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SRC_RE = re.compile(r"^s3://[A-Za-z0-9][A-Za-z0-9._-]{0,254}(/[^\s]*)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CRED_VALUE_RE = re.compile(r"^[!-~]+$")  # printable ASCII, no space

CREDENTIAL_KEYS = (
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("session_token", "AWS_SESSION_TOKEN"),
)


class FuseError(Exception):
    """A failure to report through fail_json; ``details`` are extra result keys."""

    def __init__(self, msg, **details):
        super(FuseError, self).__init__(msg)
        self.msg = msg
        self.details = details


# --------------------------------------------------------------------------
# Paths


class Layout:
    """Where the desired state of mount ``name`` lives (``root`` for tests)."""

    def __init__(self, name, root="/"):
        self.name = name
        self.root = root
        self.unit = "obsctl-mount@%s.service" % name
        self.config_dir = os.path.join(root, "etc/obsctl/mounts")
        self.config = os.path.join(self.config_dir, name + ".toml")
        self.credential_dir = os.path.join(root, "etc/obsctl/credentials")
        self.credential = os.path.join(self.credential_dir, name + ".cred")
        self.dropin_dir = os.path.join(root, "etc/systemd/system", self.unit + ".d")
        self.dropin = os.path.join(self.dropin_dir, "credentials.conf")

    def host_path(self, path):
        """The path as the target host sees it (strip the test root)."""
        if self.root in ("", "/"):
            return path
        return "/" + os.path.relpath(path, self.root)


# --------------------------------------------------------------------------
# Rendering: the one TOML writer (module_utils/_toml.py, tomlkit)


def render_mount_toml(spec):
    """Render the mount spec: header, then ``key = value`` sorted by key.

    Keys whose value is None are left out. Deterministic, so idempotence can
    compare bytes. The writer is _toml.render_mount_spec (the same code
    ``obsctl systemd install`` uses as obsctl.tomlio).

    Raises:
        _toml.TomlWriteError: tomlkit is missing on the target, or a value has
            no TOML form.
    """
    return _toml.render_mount_spec(spec)


def parse_mount_toml(text):
    """Read back the flat spec this module renders (no tomllib on 3.8).

    Understands ``key = "string"``, ``key = true|false``, ``key = 123`` and
    flat string arrays; other lines are ignored.
    """
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, raw = [part.strip() for part in line.split("=", 1)]
        if raw in ("true", "false"):
            result[key] = raw == "true"
        elif re.match(r"^-?[0-9]+$", raw):
            result[key] = int(raw)
        elif raw.startswith('"'):
            result[key] = _parse_basic_strings(raw)[0] if _parse_basic_strings(raw) else ""
        elif raw.startswith("["):
            result[key] = _parse_basic_strings(raw)
    return result


_BASIC_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _parse_basic_strings(raw):
    out = []
    for match in _BASIC_STRING.finditer(raw):
        out.append(re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), match.group(1)))
    return out


def render_credentials(credentials):
    """The clear text of the systemd credential: env-file lines, sorted."""
    lines = []
    for option, env in CREDENTIAL_KEYS:
        value = credentials.get(option)
        if value:
            lines.append("%s=%s\n" % (env, value))
    return "".join(lines)


def parse_credentials(text):
    """Env-file lines back to a dict {ENV_NAME: value} (for comparison)."""
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        result[key.strip()] = value.strip()
    return result


def render_dropin(layout):
    return "%s[Service]\nLoadCredentialEncrypted=%s:%s\n" % (
        MANAGED_HEADER,
        CREDENTIAL_NAME,
        layout.host_path(layout.credential),
    )


def redacted_credentials(before, after):
    """Diff text for credentials: names only, values never shown.

    ``before``/``after`` are dicts {ENV_NAME: value} or None (no credential).
    A value that changes is marked, so the diff shows which line changed.
    """

    def text(this, other, marker):
        if this is None:
            return ""
        lines = []
        for _option, env in CREDENTIAL_KEYS:
            if env in this:
                changed = other is not None and other.get(env) != this[env]
                lines.append("%s=<redacted%s>\n" % (env, marker if changed else ""))
        return "".join(lines)

    return text(before, after, ", old"), text(after, before, ", new")


# --------------------------------------------------------------------------
# Parameters -> desired spec


def validate(params):
    """Check the module parameters; return a list of error strings."""
    errors = []
    name = params.get("name")
    if not _NAME_RE.match(name or ""):
        errors.append(
            "name %r: use 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
            " (it names the unit obsctl-mount@NAME.service and /etc/obsctl/mounts/NAME.toml)" % name
        )
    src = params.get("src")
    if src is not None and not _SRC_RE.match(src):
        errors.append("src %r: expected s3://BUCKET or s3://BUCKET/PREFIX" % src)
    path = params.get("path")
    if path is not None and (not path.startswith("/") or os.path.normpath(path) == "/"):
        errors.append("path %r: expected an absolute path other than /" % path)
    for key in ("src", "path", "endpoint", "region", "profile", "cache_mode", "telemetry_config"):
        value = params.get(key)
        if value is not None and _CONTROL_RE.search(value):
            errors.append("%s: control characters are not allowed" % key)
    for key in ("options", "command"):
        for option in params.get(key) or []:
            if _CONTROL_RE.search(option):
                errors.append("%s: control characters are not allowed (%r)" % (key, option))
    if params.get("impl") == "generic" and not params.get("command") and params.get("state") in (
            "mounted", "present", "remounted"):
        errors.append("impl generic needs command (the FUSE daemon's argv, run in the foreground)")
    endpoint = params.get("endpoint")
    if endpoint and not re.match(r"^https?://[^\s/]+", endpoint):
        errors.append("endpoint %r: expected http://HOST[:PORT] or https://HOST[:PORT]" % endpoint)
    credentials = params.get("credentials")
    if credentials is not None:
        for option, _env in CREDENTIAL_KEYS:
            value = credentials.get(option)
            if value is not None and not _CRED_VALUE_RE.match(value):
                # Never echo the value: it is a secret.
                errors.append("credentials.%s: printable ASCII without spaces expected" % option)
    if params.get("ready_timeout") is not None and params["ready_timeout"] < 1:
        errors.append("ready_timeout: at least 1 second")
    return errors


def desired_spec(params):
    """The mount spec dict (TOML keys) from the module parameters."""
    if params.get("credentials"):
        credentials_from = "systemd"
    elif params.get("profile"):
        credentials_from = "profile"
    else:
        credentials_from = "env"
    return {
        "name": params["name"],
        "source": params["src"],
        "mountpoint": os.path.normpath(params["path"]),
        "impl": params.get("impl") or "rclone",
        "endpoint": params.get("endpoint"),
        "region": params.get("region"),
        "profile": params.get("profile"),
        "credentials_from": credentials_from,
        "read_only": bool(params.get("read_only")),
        "allow_other": bool(params.get("allow_other")),
        "cache_mode": params.get("cache_mode"),
        "options": list(params.get("options") or []),
        "command": list(params.get("command") or []) or None,
        "ready_timeout_seconds": int(params.get("ready_timeout") or 30),
        "telemetry_config": params.get("telemetry_config"),
    }


# --------------------------------------------------------------------------
# Files


def read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def file_mode(path):
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_dir(path, mode):
    """mkdir -p with ``mode`` for the directories it creates."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        ensure_dir(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    os.chmod(path, mode)


def atomic_write(path, data, mode):
    """Write ``data`` (bytes) to ``path`` atomically with ``mode``.

    A temporary file in the same directory, fsync, rename, fsync of the
    directory: readers see the old or the new file, never half of one.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.rename(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def remove_file(path):
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False
    _fsync_dir(os.path.dirname(path))
    return True


def encrypt_credential(run, path, cleartext):
    """``systemd-creds encrypt --name=s3 - PATH`` with the clear text on stdin.

    systemd-creds writes a temporary file next to ``path`` (created under
    umask 077) which is renamed over ``path``: atomic, and the clear text
    never touches the disk.
    """
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    remove_file(tmp)
    old_umask = os.umask(0o077)
    try:
        rc, _out, err = run(
            ["systemd-creds", "encrypt", "--name=%s" % CREDENTIAL_NAME, "-", tmp],
            data=cleartext.encode("utf-8"),
            binary_data=True,
        )
    finally:
        os.umask(old_umask)
    if rc != 0:
        remove_file(tmp)
        raise FuseError("systemd-creds encrypt failed (rc=%d): %s" % (rc, err.strip()))
    os.chmod(tmp, CREDENTIAL_MODE)
    os.rename(tmp, path)
    _fsync_dir(directory)


def decrypt_credential(run, path):
    """Decrypt ``path`` into memory; a dict {ENV_NAME: value}, or None if unreadable."""
    rc, out, _err = run(["systemd-creds", "decrypt", "--name=%s" % CREDENTIAL_NAME, path, "-"])
    if rc != 0:
        return None
    return parse_credentials(out)


# --------------------------------------------------------------------------
# systemd


def systemd_running(root="/"):
    return os.path.isdir(os.path.join(root, "run/systemd/system"))


def unit_state(run, unit):
    """LoadState, ActiveState, SubState, MainPID and enablement of ``unit``."""
    rc, out, err = run(
        ["systemctl", "show", "--property=LoadState,ActiveState,SubState,MainPID,Result", unit]
    )
    if rc != 0:
        raise FuseError("systemctl show %s failed: %s" % (unit, err.strip()))
    props = {}
    for line in out.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            props[key] = value
    rc, out, _err = run(["systemctl", "is-enabled", unit])
    enabled_state = out.strip() or "unknown"
    return {
        "load_state": props.get("LoadState", "unknown"),
        "active_state": props.get("ActiveState", "unknown"),
        "sub_state": props.get("SubState", "unknown"),
        "main_pid": int(props.get("MainPID") or 0),
        "result": props.get("Result", ""),
        "enabled": rc == 0 and enabled_state in ("enabled", "enabled-runtime", "alias"),
        "unit_file_state": enabled_state,
    }


def journal_tail(run, unit, lines=20):
    rc, out, _err = run(["journalctl", "--unit", unit, "--lines", str(lines), "--no-pager", "--output", "cat"])
    if rc != 0:
        return []
    return out.splitlines()[-lines:]


# --------------------------------------------------------------------------
# Live mount


def mount_facts(mountpoint, mountinfo_path=MOUNTINFO_PATH, stat_timeout=5.0, stat_fn=os.stat):
    """What is mounted at ``mountpoint`` and whether it answers."""
    mounts = read_mounts(mountinfo_path)
    entry = find_mount(mountpoint, mounts=mounts)
    if entry is None:
        return {"mountpoint": mountpoint, "health": "missing", "source": None, "fstype": None, "fuse": False}
    return {
        "mountpoint": mountpoint,
        "health": probe_health_within(mountpoint, stat_timeout, mounts=mounts, stat=stat_fn),
        "source": entry.source,
        "fstype": entry.fstype,
        "fuse": is_fuse(entry),
    }


def lazy_unmount(run, mountpoint):
    """Detach ``mountpoint`` even when its daemon is dead (umount -l)."""
    rc, _out, err = run(["umount", "--lazy", mountpoint])
    if rc == 0:
        return
    rc2, _out, err2 = run(["fusermount3", "-u", "-z", mountpoint])
    if rc2 != 0:
        raise FuseError("could not unmount %s: %s / %s" % (mountpoint, err.strip(), err2.strip()))


def proc_driver_pid(mountpoint, proc="/proc"):
    """PID of the FUSE daemon serving ``mountpoint``, or None.

    The daemon holds /dev/fuse open and has the mountpoint among its
    arguments (rclone mount, s3fs, bindfs, goofys, geesefs, mount-s3 all do).
    When several processes match, the oldest (lowest PID) wins.
    """
    target = os.path.normpath(mountpoint)
    found = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        base = os.path.join(proc, pid)
        try:
            fds = os.listdir(os.path.join(base, "fd"))
        except OSError:
            continue
        holds_fuse = False
        for fd in fds:
            try:
                if os.readlink(os.path.join(base, "fd", fd)) == "/dev/fuse":
                    holds_fuse = True
                    break
            except OSError:
                continue
        if not holds_fuse:
            continue
        try:
            with open(os.path.join(base, "cmdline"), "rb") as handle:
                argv = handle.read().decode("utf-8", "replace").split("\0")
        except (IOError, OSError):
            continue
        try:
            cwd = os.readlink(os.path.join(base, "cwd"))
        except OSError:
            cwd = "/"
        if any(arg and os.path.normpath(os.path.join(cwd, arg)) == target for arg in argv[1:]):
            found.append(int(pid))
    return min(found) if found else None


def proc_comm(pid, proc="/proc"):
    """The process name of ``pid`` (bindfs sets no FUSE subtype, its comm says it)."""
    if not pid:
        return None
    try:
        with open(os.path.join(proc, str(pid), "comm"), "r") as handle:
            return handle.read().strip() or None
    except (IOError, OSError):
        return None


def proc_unit(pid, proc="/proc"):
    """The systemd unit (service or scope) whose cgroup holds ``pid``, or None."""
    if not pid:
        return None
    try:
        with open(os.path.join(proc, str(pid), "cgroup"), "r") as handle:
            text = handle.read()
    except (IOError, OSError):
        return None
    return unit_from_cgroup(text)


def unit_from_cgroup(text):
    """Last ``*.service`` / ``*.scope`` path element in /proc/PID/cgroup text."""
    best = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        # cgroup v1 has many hierarchies; the named systemd one is authoritative.
        if parts[1] not in ("", "name=systemd"):
            continue
        for element in parts[2].split("/"):
            if element.endswith(".service") or element.endswith(".scope"):
                best = element
    return best


def configured_mounts(root="/"):
    """{mountpoint: spec} for every /etc/obsctl/mounts/*.toml on the host."""
    directory = os.path.join(root, "etc/obsctl/mounts")
    result = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return result
    for filename in names:
        if not filename.endswith(".toml"):
            continue
        try:
            with open(os.path.join(directory, filename), "r") as handle:
                spec = parse_mount_toml(handle.read())
        except (IOError, OSError, UnicodeDecodeError):
            continue
        spec.setdefault("name", filename[: -len(".toml")])
        if spec.get("mountpoint"):
            result[os.path.normpath(spec["mountpoint"])] = spec
    return result


def fuse_mount_info(
    mountinfo_path=MOUNTINFO_PATH,
    stat_timeout=5.0,
    root="/",
    proc="/proc",
    fusectl=FUSECTL_PATH,
    probe=probe_health_within,
):
    """Every FUSE mount on the host, plus obsctl mounts configured but missing."""
    mounts = read_mounts(mountinfo_path)
    configured = configured_mounts(root)
    result = []
    seen = set()
    for entry in fuse_mounts(mounts):
        if entry.mountpoint in seen:
            continue  # stacked mounts: report the visible (last) one only
        visible = find_mount(entry.mountpoint, mounts=mounts)
        seen.add(entry.mountpoint)
        spec = configured.get(entry.mountpoint)
        health = probe(entry.mountpoint, stat_timeout, mounts=mounts)
        pid = proc_driver_pid(entry.mountpoint, proc=proc)
        unit = proc_unit(pid, proc=proc)
        if spec is not None and (unit is None or unit.endswith(".scope")):
            unit = "obsctl-mount@%s.service" % spec["name"]
        result.append(
            {
                "mountpoint": visible.mountpoint,
                "source": visible.source,
                "fstype": visible.fstype,
                "driver": fuse_subtype(visible) or proc_comm(pid, proc=proc) or visible.fstype,
                "connection": int(fuse_connection(visible)),
                "read_only": "ro" in visible.mount_options.split(","),
                "pid": pid,
                "unit": unit,
                "name": spec["name"] if spec else None,
                "health": health,
                "waiting": fuse_waiting(visible, root=fusectl),
            }
        )
    for mountpoint in sorted(configured):
        if mountpoint in seen:
            continue
        spec = configured[mountpoint]
        result.append(
            {
                "mountpoint": mountpoint,
                "source": spec.get("source"),
                "fstype": None,
                "driver": spec.get("impl"),
                "connection": None,
                "read_only": bool(spec.get("read_only")),
                "pid": None,
                "unit": "obsctl-mount@%s.service" % spec["name"],
                "name": spec["name"],
                "health": "missing",
                "waiting": None,
            }
        )
    return result


# --------------------------------------------------------------------------
# The fuse_mount state machine


class Manager:
    """Converge one mount to ``state``; used by the fuse_mount module.

    ``run(args, data=None, binary_data=False) -> (rc, stdout, stderr)`` runs a
    command (AnsibleModule.run_command); ``warn(msg)`` reports a warning.
    """

    def __init__(self, params, run, check_mode=False, warn=None, root="/",
                 mountinfo_path=MOUNTINFO_PATH, sleep=time.sleep, stat_timeout=5.0, stat_fn=os.stat):
        self.params = params
        self.run = run
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.root = root
        self.mountinfo_path = mountinfo_path
        self.sleep = sleep
        self.stat_timeout = stat_timeout
        self.stat_fn = stat_fn
        self.layout = Layout(params["name"], root=root)
        self.actions = []
        self.diff = []
        self.changed = False
        # What this run changed, to undo on a failed start.
        self._undo_files = []  # (path, old bytes or None, old mode)
        self._undo_dirs = []  # directories this run created
        self._daemon_reload_needed = False
        self._before_unit = None

    # -- helpers ----------------------------------------------------------

    def _act(self, description):
        self.actions.append(description)
        self.changed = True

    def _systemctl(self, *args):
        rc, out, err = self.run(["systemctl"] + list(args))
        if rc != 0:
            raise FuseError(
                "systemctl %s failed (rc=%d): %s" % (" ".join(args), rc, (err or out).strip()),
                journal=journal_tail(self.run, self.layout.unit),
            )
        return out

    def _remember(self, path):
        self._undo_files.append((path, read_bytes(path), file_mode(path)))

    def _ensure_dir(self, path, mode):
        missing = []
        current = path
        while current and current != "/" and not os.path.isdir(current):
            missing.append(current)
            current = os.path.dirname(current)
        ensure_dir(path, mode)
        self._undo_dirs.extend(missing)  # deepest first

    def _write(self, path, data, mode, parent_mode):
        if self.check_mode:
            return
        self._ensure_dir(os.path.dirname(path), parent_mode)
        self._remember(path)
        atomic_write(path, data, mode)

    def _remove(self, path):
        if self.check_mode:
            return
        self._remember(path)
        remove_file(path)

    def _mountpoint(self):
        """The mountpoint: the ``path`` option, else the one in the existing config."""
        if self.params.get("path"):
            return os.path.normpath(self.params["path"])
        data = read_bytes(self.layout.config)
        if data is not None:
            return parse_mount_toml(data.decode("utf-8", "replace")).get("mountpoint")
        return None

    def _mount(self, mountpoint):
        if not mountpoint:
            return {"mountpoint": None, "health": "missing", "source": None, "fstype": None, "fuse": False}
        return mount_facts(mountpoint, self.mountinfo_path, self.stat_timeout, self.stat_fn)

    # -- desired files ------------------------------------------------------

    def sync_files(self, want_files):
        """Bring config, credential and drop-in to the desired state.

        ``want_files`` False removes them (state absent). Returns whether a
        content changed (a running mount must restart to see it).
        """
        layout = self.layout
        params = self.params
        content_changed = False
        # Config
        before_cfg = read_bytes(layout.config)
        before_text = before_cfg.decode("utf-8", "replace") if before_cfg is not None else ""
        after_text = ""
        if want_files:
            try:
                after_text = render_mount_toml(desired_spec(params))
            except _toml.TomlWriteError as exc:
                if not self.check_mode:
                    raise FuseError(str(exc))
                # Check mode on a host not prepared yet (the obsctl role installs
                # python3-tomlkit): predict a change instead of failing.
                self.warn("%s; check mode predicts that the spec file changes" % exc)
                after_text = None
        cfg_path = layout.host_path(layout.config)
        if want_files:
            if before_cfg is None or after_text is None or before_text != after_text:
                content_changed = True
                self._act("write %s" % cfg_path)
                self._write(layout.config, (after_text or "").encode("utf-8"), CONFIG_MODE, 0o755)
            elif file_mode(layout.config) != CONFIG_MODE:
                self._act("chmod %o %s" % (CONFIG_MODE, cfg_path))
                if not self.check_mode:
                    self._remember(layout.config)
                    os.chmod(layout.config, CONFIG_MODE)
        elif before_cfg is not None:
            self._act("remove %s" % cfg_path)
            self._remove(layout.config)
        self.diff.append({
            "before_header": cfg_path, "after_header": cfg_path,
            "before": before_text,
            "after": after_text if after_text is not None else "(not rendered: tomlkit is missing here)\n",
        })

        # Credential + drop-in
        credentials = params.get("credentials") if want_files else None
        cred_path = layout.host_path(layout.credential)
        have_cred_file = os.path.exists(layout.credential)
        before_creds = decrypt_credential(self.run, layout.credential) if have_cred_file else None
        if have_cred_file and before_creds is None:
            # Unreadable (other host key, damaged): it will be replaced or removed.
            before_creds = {}
        after_creds = parse_credentials(render_credentials(credentials)) if credentials else None
        if after_creds is not None:
            if before_creds != after_creds:
                content_changed = True
                self._act("encrypt credential %s" % cred_path)
                if not self.check_mode:
                    self._ensure_dir(layout.credential_dir, 0o700)
                    self._remember(layout.credential)
                    encrypt_credential(self.run, layout.credential, render_credentials(credentials))
            elif file_mode(layout.credential) != CREDENTIAL_MODE:
                self._act("chmod %o %s" % (CREDENTIAL_MODE, cred_path))
                if not self.check_mode:
                    self._remember(layout.credential)
                    os.chmod(layout.credential, CREDENTIAL_MODE)
        elif have_cred_file:
            content_changed = True
            self._act("remove %s" % cred_path)
            self._remove(layout.credential)
        red_before, red_after = redacted_credentials(before_creds, after_creds)
        self.diff.append({
            "before_header": cred_path + " (decrypted, values redacted)",
            "after_header": cred_path + " (decrypted, values redacted)",
            "before": red_before, "after": red_after,
        })

        dropin_before = read_bytes(layout.dropin)
        dropin_after = render_dropin(layout).encode("utf-8") if after_creds is not None else None
        dropin_path = layout.host_path(layout.dropin)
        if dropin_after is not None and dropin_before != dropin_after:
            content_changed = True
            self._act("write %s" % dropin_path)
            self._write(layout.dropin, dropin_after, DROPIN_MODE, 0o755)
            self._daemon_reload_needed = True
        elif dropin_after is None and dropin_before is not None:
            self._act("remove %s" % dropin_path)
            self._remove(layout.dropin)
            self._daemon_reload_needed = True
        if dropin_after is None and os.path.isdir(layout.dropin_dir) and not self.check_mode:
            try:
                os.rmdir(layout.dropin_dir)  # only when empty: other drop-ins stay
            except OSError:
                pass
        return content_changed

    # -- states -----------------------------------------------------------

    def run_state(self):
        state = self.params["state"]
        if state in ("mounted", "present", "remounted"):
            missing = [key for key in ("src", "path") if not self.params.get(key)]
            if missing:
                raise FuseError("state is %s but all of the following are missing: %s" % (state, ", ".join(missing)))
        errors = validate(self.params)
        if errors:
            raise FuseError("; ".join(errors))
        if not systemd_running(self.root):
            raise FuseError("systemd is not running on this host (no /run/systemd/system): "
                            "obsctl mounts run as obsctl-mount@NAME.service units")
        unit = self.layout.unit
        self._before_unit = before = unit_state(self.run, unit)
        if state not in ("absent", "unmounted") and before["load_state"] == "not-found":
            msg = ("%s is not installed on this host: install it first "
                   "(role obsctl.observability.obsctl)" % UNIT_TEMPLATE)
            if not self.check_mode:
                raise FuseError(msg)
            self.warn(msg + "; check mode continues as if it were")

        mountpoint = self._mountpoint()
        before_mount = self._mount(mountpoint)
        getattr(self, "_state_" + state)(before, before_mount, mountpoint)
        after_unit = before if self.check_mode else unit_state(self.run, unit)
        after_mount = before_mount if self.check_mode else self._mount(mountpoint)
        self.diff.append({
            "before_header": unit, "after_header": unit,
            "before": _unit_text(before, before_mount),
            "after": _unit_text(after_unit, after_mount) if not self.check_mode
            else _predicted_unit_text(state, before, before_mount),
        })
        return {
            "changed": self.changed,
            "name": self.params["name"],
            "state": state,
            "unit": unit,
            "config_path": self.layout.host_path(self.layout.config),
            "credential_path": self.layout.host_path(self.layout.credential)
            if (self.params.get("credentials") and state != "absent") else None,
            "actions": self.actions,
            "mount": _public_mount(after_mount),
            "unit_state": _public_unit(after_unit),
        }

    def _daemon_reload(self):
        if self._daemon_reload_needed:
            self._act("systemctl daemon-reload")
            if not self.check_mode:
                self._systemctl("daemon-reload")
            self._daemon_reload_needed = False

    def _enable(self, before):
        if not before["enabled"]:
            self._act("enable %s" % self.layout.unit)
            if not self.check_mode:
                self._systemctl("enable", self.layout.unit)

    def _state_present(self, before, before_mount, mountpoint):
        self.sync_files(True)
        self._daemon_reload()
        self._enable(before)

    def _state_mounted(self, before, before_mount, mountpoint, force=False):
        files_changed = self.sync_files(True)
        self._daemon_reload()
        self._enable(before)
        active = before["active_state"] in ("active", "activating", "reloading")
        health = before_mount["health"]
        if health == "ok" and not active:
            raise FuseError("%s is already mounted by something else (%s, %s) and %s is not running:"
                            " not taking it over" % (mountpoint, before_mount["fstype"],
                                                     before_mount["source"], self.layout.unit))
        if health == "stale":
            self._act("lazy unmount of the stale mount at %s (transport endpoint is not connected)" % mountpoint)
            if not self.check_mode:
                lazy_unmount(self.run, mountpoint)
        if not self.check_mode:
            self._ensure_mountpoint(mountpoint)
        elif health == "missing" and not os.path.isdir(mountpoint):
            self._act("create directory %s" % mountpoint)
        if active and health == "ok" and not files_changed and not force:
            return
        verb = "restart" if active else "start"
        self._act("%s %s" % (verb, self.layout.unit))
        if self.check_mode:
            return
        self._start(verb, mountpoint)

    def _state_remounted(self, before, before_mount, mountpoint):
        self._state_mounted(before, before_mount, mountpoint, force=True)

    def _ensure_mountpoint(self, mountpoint):
        try:
            st = os.stat(mountpoint)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise FuseError("cannot use mountpoint %s: %s" % (mountpoint, exc))
            self._act("create directory %s" % mountpoint)
            self._ensure_dir(mountpoint, 0o755)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise FuseError("mountpoint %s exists and is not a directory" % mountpoint)

    def _start(self, verb, mountpoint):
        unit = self.layout.unit
        rc, out, err = self.run(["systemctl", verb, unit])
        health = "missing"
        if rc == 0:
            # READY=1 comes after the mount is in the table; allow a short lag anyway.
            deadline = time.time() + 10
            while True:
                health = self._mount(mountpoint)["health"]
                if health == "ok" or time.time() >= deadline:
                    break
                self.sleep(0.5)
        if rc == 0 and health == "ok":
            return
        journal = journal_tail(self.run, unit)
        problem = ("systemctl %s %s failed (rc=%d): %s" % (verb, unit, rc, (err or out).strip())
                   if rc != 0 else "%s started but %s is %s" % (unit, mountpoint, health))
        rollback_errors = self.rollback(mountpoint)
        self.changed = bool(rollback_errors)
        msg = "%s; rolled back the changes of this run" % problem
        if rollback_errors:
            msg += " (rollback problems: %s)" % "; ".join(rollback_errors)
        msg += ". Last log lines of %s:\n%s" % (unit, "\n".join(journal) or "(none)")
        raise FuseError(msg, journal=journal, rolled_back=True)

    def rollback(self, mountpoint):
        """Undo this run's changes: files, enablement, and the running state."""
        errors = []
        unit = self.layout.unit
        before = self._before_unit or {}
        reload_needed = False
        for path, data, mode in reversed(self._undo_files):
            try:
                if data is None:
                    remove_file(path)
                else:
                    atomic_write(path, data, mode if mode is not None else 0o600)
                if path == self.layout.dropin:
                    reload_needed = True
            except (IOError, OSError) as exc:
                errors.append("restore %s: %s" % (path, exc))
        commands = []
        if reload_needed:
            commands.append(["daemon-reload"])
        was_active = before.get("active_state") == "active"
        if not was_active:
            commands.append(["stop", unit])
        if not before.get("enabled"):
            commands.append(["disable", unit])
        if was_active:
            commands.append(["restart", unit])
        else:
            commands.append(["reset-failed", unit])
        for args in commands:
            rc, _out, err = self.run(["systemctl"] + args)
            if rc != 0 and args[0] != "reset-failed":
                errors.append("systemctl %s: %s" % (" ".join(args), err.strip()))
        if not was_active and mountpoint:
            facts = self._mount(mountpoint)
            if facts["health"] == "stale":
                try:
                    lazy_unmount(self.run, mountpoint)
                except FuseError as exc:
                    errors.append(exc.msg)
        for directory in self._undo_dirs:  # deepest first; only when empty
            try:
                os.rmdir(directory)
            except OSError:
                pass
        return errors

    def _state_unmounted(self, before, before_mount, mountpoint):
        if before["active_state"] in ("active", "activating", "reloading", "deactivating"):
            self._act("stop %s" % self.layout.unit)
            if not self.check_mode:
                self._systemctl("stop", self.layout.unit)
        if mountpoint and not self.check_mode:
            now = self._mount(mountpoint)
            if now["fuse"] and now["health"] != "missing":
                self._act("lazy unmount of %s" % mountpoint)
                lazy_unmount(self.run, mountpoint)
        elif mountpoint and before_mount["fuse"] and before_mount["health"] == "stale":
            self._act("lazy unmount of the stale mount at %s" % mountpoint)
        if before["active_state"] == "failed":
            # A failed instance would linger in `systemctl list-units`.
            if not self.check_mode:
                self.run(["systemctl", "reset-failed", self.layout.unit])

    def _state_absent(self, before, before_mount, mountpoint):
        self._state_unmounted(before, before_mount, mountpoint)
        if before["enabled"]:
            self._act("disable %s" % self.layout.unit)
            if not self.check_mode:
                self._systemctl("disable", self.layout.unit)
        self.sync_files(False)
        self._daemon_reload()
        if not self.check_mode and before["load_state"] != "not-found":
            self.run(["systemctl", "reset-failed", self.layout.unit])


def _public_mount(facts):
    return {
        "mountpoint": facts.get("mountpoint"),
        "source": facts.get("source"),
        "fstype": facts.get("fstype"),
        "health": facts.get("health"),
    }


def _public_unit(unit):
    return {
        "active_state": unit["active_state"],
        "sub_state": unit["sub_state"],
        "enabled": unit["enabled"],
    }


def _unit_text(unit, mount):
    return "enabled: %s\nactive: %s\nmount: %s\n" % (
        "yes" if unit["enabled"] else "no", unit["active_state"], mount.get("health"))


def _predicted_unit_text(state, unit, mount):
    if state in ("mounted", "remounted"):
        return "enabled: yes\nactive: active\nmount: ok\n"
    if state == "present":
        return "enabled: yes\nactive: %s\nmount: %s\n" % (unit["active_state"], mount.get("health"))
    if state == "unmounted":
        return "enabled: %s\nactive: inactive\nmount: missing\n" % ("yes" if unit["enabled"] else "no")
    return "enabled: no\nactive: inactive\nmount: missing\n"
