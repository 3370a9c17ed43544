"""The desired state of one mount, computed and applied once.

One engine, reached three ways: the ``fuse_mount`` Ansible module (through
``obsctl systemd apply --json``, JSON on stdin and stdout), ``obsctl systemd
install | uninstall`` and install.sh (through the roles, which call the
module). What it owns, for mount ``NAME``:

* ``/etc/obsctl/mounts/NAME.toml`` (0640, no secret), validated by the same
  rules ``obsctl mount`` reads it with (:func:`obsctl.mountspec.build_mount_spec`)
  and written by the one TOML writer (:func:`obsctl.tomlio.render_mount_spec`);
* with credentials: ``/etc/obsctl/credentials/NAME.cred`` (0600, encrypted by
  ``systemd-creds encrypt --name=s3 - FILE`` fed on stdin: the clear text
  never touches the disk) and the drop-in
  ``obsctl-mount@NAME.service.d/credentials.conf`` (``LoadCredentialEncrypted=``);
* optionally ``/etc/obsctl/telemetry.d/NAME.toml`` (``obsctl systemd install
  --otel-endpoint``) and the unit templates (``obsctl systemd install`` on a
  host the obsctl role did not prepare);
* the unit ``obsctl-mount@NAME.service`` (enabled, started, stopped) and,
  when asked, its health-check timer ``obsctl-mount@NAME.timer``.

States (as ansible.posix.mount): ``mounted`` (files + enabled + running and
answering; a stale mount -- driver gone, "Transport endpoint is not
connected" -- is detached and mounted again), ``remounted`` (as mounted, and
always restarts), ``present`` (files + enabled, not started), ``unmounted``
(stopped, files kept), ``absent`` (stopped, disabled, files removed).

Check mode computes the same actions and diff and changes nothing. Every file
is written atomically (temporary file, fsync, rename, fsync of the directory);
when a start fails, what this run changed is undone (files restored, the unit
enabled / running as it was) and :class:`EngineError` says so. Secrets are
never in a result, an action, a diff or an error: the credential diff names
the variables and marks which value changed.

Facts come from: ``/proc/self/mountinfo`` (what is mounted, :mod:`obsctl.mounttable`),
a ``stat`` of the mountpoint with a timeout (ok / stale / missing),
``systemctl show`` (LoadState, ActiveState, SubState) and ``systemctl
is-enabled``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec

from obsctl import credentials as creds_mod
from obsctl import health, mounttable, tomlio
from obsctl.config import ConfigError, MountSpec
from obsctl.drivers import DRIVERS, get_driver
from obsctl.mountspec import build_mount_spec
from obsctl.fileutil import atomic_write, fsync_dir
from obsctl.unmount import check_empty, unmount_argv

STATES = ("mounted", "unmounted", "present", "absent", "remounted")
#: What runs a mount: a systemd unit, or (no systemd) obsctl mount in the background.
SERVICE_MANAGERS = ("systemd", "none")

#: Name of the systemd credential; obsctl reads ``$CREDENTIALS_DIRECTORY/s3``.
CREDENTIAL_NAME = creds_mod.SYSTEMD_CREDENTIAL_NAME
UNIT_TEMPLATE = "obsctl-mount@.service"
CONFIG_MODE, CREDENTIAL_MODE, UNIT_MODE = 0o640, 0o600, 0o644

#: First line of every file the engine writes in full.
MANAGED_HEADER = f"# {tomlio.MANAGED_HEADER}\n"
#: Marks the unit templates ``obsctl systemd install`` wrote (``ansible_managed``
#: of its render): an existing template without it belongs to the obsctl role and is kept.
MANAGED_BY = "Managed by obsctl systemd install: changes here are overwritten."

#: The unit templates: (file name under /etc/systemd/system, template name under templates/).
UNIT_TEMPLATES = (
    ("obsctl-mount@.service", "obsctl-mount@.service.j2"),
    ("obsctl-mount@.timer", "obsctl-mount@.timer.j2"),
    ("obsctl-mount-check@.service", "obsctl-mount-check@.service.j2"),
)

#: A mount name: a systemd instance name that needs no escaping and a safe file name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CRED_VALUE_RE = re.compile(r"^[!-~]+$")  # printable ASCII, no space

#: The request keys of the S3 credentials (the order of :data:`obsctl.credentials.ENV_KEYS`).
CREDENTIAL_KEYS = ("access_key_id", "secret_access_key", "session_token")


def credential_request_key(variable: str) -> str:
    """Where a request (the fuse_mount module's ``credentials``) gives the variable ``variable`` of a
    driver's credential shape: ``AWS_ACCESS_KEY_ID`` -> ``access_key_id`` (the S3 keys, in the order of
    :data:`CREDENTIAL_KEYS`), any other -> ``variables.NAME`` (juicefs's ``variables.META_PASSWORD``)."""
    if variable in creds_mod.ENV_KEYS:
        return CREDENTIAL_KEYS[creds_mod.ENV_KEYS.index(variable)]
    return f"variables.{variable}"


#: Every variable of every registered driver's credential shape (kept out of systemctl's environment).
CREDENTIAL_ENV = tuple(dict.fromkeys(
    name for cls in DRIVERS.values() if cls.credentials is not None for name in cls.credentials.names))

#: The keys of a mount spec file, in the order the writer sorts them anyway.
SPEC_KEYS = ("name", "source", "mountpoint", "impl", "endpoint", "region", "profile",
             "credentials_from", "read_only", "allow_other", "allow_non_empty", "cache_mode", "options",
             "command", "ready_timeout_seconds", "stall_timeout_seconds", "telemetry_config", "max_restarts")
#: Keys written only when they differ from obsctl's default (:class:`obsctl.config.MountSpec`), so a
#: spec written before the key existed keeps its bytes (no change, no restart on upgrade).
_SPEC_DEFAULTS_LEFT_OUT = ("command", "max_restarts", "allow_non_empty", "stall_timeout_seconds")

#: Seconds the engine waits, after ``systemctl start`` returned, for the mount to answer
#: (the one value of :mod:`obsctl.health`, also ``obsctl systemd check``'s).
SETTLE_SECONDS = health.SETTLE_SECONDS


class EngineError(Exception):
    """A step failed (exit 1). ``msg`` never holds a secret; ``details`` are extra result keys
    (``journal``: the unit's last log lines, ``rolled_back``: bool)."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class Credentials(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request's credentials (values are secrets: never logged, never returned): the S3 key
    pair, and the other variables of the driver's credential shape by name (``variables``:
    juicefs's ``{"META_PASSWORD": ...}``)."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    variables: dict[str, str] = msgspec.field(default_factory=dict)

    def as_credentials(self, shape: creds_mod.CredentialShape | None = creds_mod.S3_CREDENTIALS,
                       origin: str = "credentials") -> creds_mod.Credentials:
        """The :class:`obsctl.credentials.Credentials` of the driver's ``shape`` (what obsctl mount
        reads back from the systemd credential).

        Raises:
            ConfigError: the driver takes no credentials (``shape`` None), a variable is not of
                its shape, or a required one is missing.
        """
        if shape is None:
            raise ConfigError(f"{origin}: this driver takes no credentials; leave credentials out")
        unknown = sorted(set(self.variables) - set(shape.names) | set(self.variables) & set(creds_mod.ENV_KEYS))
        if unknown:
            raise ConfigError(f"{origin}: variables {', '.join(unknown)}: not for this driver "
                              f"(it takes {shape.describe()}; the S3 keys go in access_key_id / secret_access_key)")
        values = dict(zip(creds_mod.ENV_KEYS, (self.access_key_id or "", self.secret_access_key or "",
                                               self.session_token or "")))
        return creds_mod.from_mapping({**values, **self.variables}, origin, shape)


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the caller wants for mount ``name``: the fuse_mount module's options, and the
    extras ``obsctl systemd install`` sets.

    The JSON of ``obsctl systemd apply --json`` (stdin) decodes into this; an
    unknown key or a wrong type is a :class:`obsctl.config.ConfigError`.
    """

    name: str
    state: str = "mounted"
    src: str | None = None
    path: str | None = None
    impl: str | None = None
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    options: list[str] = msgspec.field(default_factory=list)
    cache_mode: str | None = None
    command: list[str] | None = None
    credentials: Credentials | None = None
    #: ``credentials_from`` of the spec when no credentials are given: env (default) or profile.
    credentials_from: str | None = None
    read_only: bool = False
    allow_other: bool = False
    #: Mount over a directory that has entries (the spec's ``allow_non_empty``); without it a
    #: non-empty mountpoint is refused before anything is written (:func:`check_mountpoint`).
    allow_non_empty: bool = False
    #: Seconds obsctl waits for the mount to appear (the spec's ``ready_timeout_seconds``).
    ready_timeout: float = 30
    #: Seconds FUSE requests may wait unanswered before the mount is ``stalled`` (the spec's
    #: ``stall_timeout_seconds``; None: obsctl's default, :data:`obsctl.config.DEFAULT_STALL_SECONDS`).
    stall_timeout: float | None = None
    #: Restarts of a crashed driver before obsctl gives up (the spec's ``max_restarts``; None: 3).
    max_restarts: int | None = None
    telemetry_config: str | None = None
    #: A telemetry table (keys of :func:`obsctl.tomlio.render_telemetry`) written to
    #: ``/etc/obsctl/telemetry.d/NAME.toml`` and named by the spec; None: no such file.
    telemetry: dict[str, Any] | None = None
    #: Write the unit templates when missing (or when an earlier ``obsctl systemd install``
    #: wrote them); the obsctl role's own templates are never replaced.
    install_units: bool = False
    #: The health-check timer ``obsctl-mount@NAME.timer``: True enabled (and started with
    #: state mounted / remounted; stopped and disabled with unmounted), False stopped and
    #: disabled, None left as it is. State absent always stops and disables it.
    health_timer: bool | None = None
    #: What runs the mount: ``systemd`` (the unit) or ``none`` (hosts without systemd:
    #: ``obsctl mount`` in the background from the same spec, :mod:`obsctl.background`).
    service_manager: str = "systemd"


# --------------------------------------------------------------------------
# Paths


@dataclass(frozen=True)
class Layout:
    """Where mount ``name`` lives under ``root`` (``/`` on a host, a temporary directory in tests)."""

    name: str
    root: Path = Path("/")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def unit(self) -> str:
        return f"obsctl-mount@{self.name}.service"

    @property
    def timer(self) -> str:
        return f"obsctl-mount@{self.name}.timer"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    @property
    def spec(self) -> Path:
        return self.root / "etc/obsctl/mounts" / f"{self.name}.toml"

    @property
    def credential(self) -> Path:
        return self.root / "etc/obsctl/credentials" / f"{self.name}.cred"

    @property
    def dropin(self) -> Path:
        return self.unit_dir / f"{self.unit}.d" / "credentials.conf"

    @property
    def telemetry(self) -> Path:
        return self.root / "etc/obsctl/telemetry.d" / f"{self.name}.toml"

    def host(self, path: Path | str) -> str:
        """``path`` as the host sees it (without the test root)."""
        path = Path(path)
        return "/" + str(path.relative_to(self.root)) if self.root != Path("/") else str(path)


def check_name(name: str | None) -> str:
    """``name`` when it is a valid mount name.

    Raises:
        ConfigError: it is not (the message gives the rule).
    """
    if not name or not NAME_RE.match(name):
        raise ConfigError(f"name {name!r}: use {NAME_RULE} (it names the unit "
                          "obsctl-mount@NAME.service and /etc/obsctl/mounts/NAME.toml)")
    return name


# --------------------------------------------------------------------------
# Templates (the same files the obsctl role renders)


def templates_dir() -> Path:
    """The Jinja2 templates shipped with the package (``templates/`` of the repository).

    Raises:
        EngineError: the package was installed without its templates.
    """
    here = Path(__file__).resolve().parent / "templates"
    if not (here / UNIT_TEMPLATES[0][1]).is_file():
        raise EngineError(f"{here}: the obsctl templates are missing (broken installation)")
    return here


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` as Ansible's template module would.

    Ansible's ``comment`` filter and ``ansible_managed`` (:data:`MANAGED_BY`)
    are provided, so the unit templates render to the same units as the obsctl role's.
    """
    import jinja2  # start-up cost: only commands that render unit files load jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
        autoescape=False)
    env.filters["comment"] = lambda text: "\n".join(f"# {line}".rstrip() for line in str(text).splitlines())
    context.setdefault("ansible_managed", MANAGED_BY)
    return env.get_template(template).render(**context)


def obsctl_bin() -> str:
    """The obsctl executable the units run: next to this Python, else on PATH.

    Raises:
        EngineError: neither exists.
    """
    candidate = Path(sys.executable).parent / "obsctl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("obsctl")
    if found:
        return found
    raise EngineError("cannot find the obsctl executable (not next to Python, not on PATH)")


# --------------------------------------------------------------------------
# Request -> spec


def _check_request(req: Request) -> list[str]:
    """The problems of ``req`` that the spec's own rules do not cover (name, states,
    control characters, credential values). Never echoes a secret."""
    errors = []
    try:
        check_name(req.name)
    except ConfigError as exc:
        errors.append(str(exc))
    if req.state not in STATES:
        errors.append(f"state {req.state!r}: use one of {', '.join(STATES)}")
    if req.state in ("mounted", "present", "remounted"):
        missing = [key for key in ("src", "path") if not getattr(req, key)]
        if missing:
            errors.append(f"state is {req.state} but all of the following are missing: {', '.join(missing)}")
    if req.path is not None and (not req.path.startswith("/") or os.path.normpath(req.path) == "/"):
        errors.append(f"path {req.path!r}: expected an absolute path other than /")
    for key in ("src", "path", "endpoint", "region", "profile", "cache_mode", "telemetry_config"):
        value = getattr(req, key)
        if value is not None and _CONTROL_RE.search(value):
            errors.append(f"{key}: control characters are not allowed")
    for key in ("options", "command"):
        for option in getattr(req, key) or []:
            if _CONTROL_RE.search(option):
                errors.append(f"{key}: control characters are not allowed ({option!r})")
    if req.credentials is not None:
        values = [(f"credentials.{key}", getattr(req.credentials, key)) for key in CREDENTIAL_KEYS]
        values += [(f"credentials.variables.{key}", value) for key, value in req.credentials.variables.items()]
        for key, value in values:
            if value is not None and not _CRED_VALUE_RE.match(value):
                errors.append(f"{key}: printable ASCII without spaces expected")
    if req.credentials_from not in (None, "env", "profile"):
        errors.append(f"credentials_from {req.credentials_from!r}: use env or profile "
                      "(give credentials to store them as a systemd credential)")
    if req.ready_timeout < 1:
        errors.append("ready_timeout: at least 1 second")
    if req.service_manager not in SERVICE_MANAGERS:
        errors.append(f"service_manager {req.service_manager!r}: use one of {', '.join(SERVICE_MANAGERS)}")
    return errors


def spec_dict(spec: Any) -> dict[str, Any]:
    """The flat TOML keys of a validated :class:`obsctl.config.MountSpec`.

    Defaults that are never written (:data:`_SPEC_DEFAULTS_LEFT_OUT`: ``command``
    empty, ``max_restarts`` 3, ``allow_non_empty`` false, ``stall_timeout_seconds``
    60) are None (left out), so every caller writes the same bytes for the same mount.
    """
    data = spec.model_dump()
    out = {key: data.get(key) for key in SPEC_KEYS}
    for info in msgspec.structs.fields(MountSpec):
        if info.name in _SPEC_DEFAULTS_LEFT_OUT:
            default = info.default_factory() if info.default is msgspec.NODEFAULT else info.default
            if out[info.name] == default:
                out[info.name] = None
    for key in ("ready_timeout_seconds", "stall_timeout_seconds"):
        if isinstance(out[key], float) and out[key].is_integer():
            out[key] = int(out[key])
    return out


def desired_spec(req: Request, layout: Layout) -> dict[str, Any]:
    """The spec file's keys for ``req``, validated by the rules ``obsctl mount`` reads it with.

    Raises:
        ConfigError: the spec is invalid (``obsctl mount``'s own message: bucket
            name, driver, endpoint, driver options, ...).
    """
    if req.credentials is not None:
        credentials_from = "systemd"
    else:
        credentials_from = req.credentials_from or ("profile" if req.profile else "env")
    telemetry_config = req.telemetry_config
    if req.telemetry is not None:
        telemetry_config = layout.host(layout.telemetry)
    data = {
        "name": req.name, "source": req.src, "mountpoint": os.path.normpath(req.path or ""),
        "impl": req.impl or "rclone", "endpoint": req.endpoint, "region": req.region,
        "profile": req.profile, "credentials_from": credentials_from,
        "read_only": req.read_only, "allow_other": req.allow_other, "cache_mode": req.cache_mode,
        "options": list(req.options), "command": list(req.command or []),
        "allow_non_empty": req.allow_non_empty,
        "ready_timeout_seconds": req.ready_timeout, "stall_timeout_seconds": req.stall_timeout,
        "telemetry_config": telemetry_config, "max_restarts": req.max_restarts,
    }
    spec = build_mount_spec({k: v for k, v in data.items() if v is not None}, origin=f"mount {req.name}")
    request_credentials(req, spec.impl)  # the driver's credential shape (raises before anything is written)
    return spec_dict(spec)


def request_credentials(req: Request, impl: str) -> creds_mod.Credentials | None:
    """The request's credentials in the shape of driver ``impl`` (:attr:`obsctl.drivers.Driver.credentials`),
    or None without credentials.

    Raises:
        ConfigError: credentials that do not fit the driver (:meth:`Credentials.as_credentials`).
    """
    if req.credentials is None:
        return None
    return req.credentials.as_credentials(get_driver(impl).credentials, f"mount {req.name}: credentials")


def decode_request(raw: bytes | str) -> Request:
    """The JSON of ``obsctl systemd apply --json`` as a :class:`Request`.

    Raises:
        ConfigError: not JSON, an unknown key or a wrong type (which key, what was expected).
    """
    try:
        return msgspec.json.decode(raw, type=Request)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid request (expected one JSON object on stdin): {exc}") from None


# --------------------------------------------------------------------------
# Commands

#: ``run(argv, data=None) -> (returncode, stdout, stderr)``; ``data`` (bytes) goes to stdin.
Runner = Callable[..., "tuple[int, str, str]"]


def run_command(argv: list[str], data: bytes | None = None) -> tuple[int, str, str]:
    """Run ``argv`` with ``data`` on stdin, C locale, no pager, no AWS_* variables
    (a credential never reaches systemctl's environment). Never raises on a non-zero status."""
    env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C", LANG="C")
    for var in CREDENTIAL_ENV:
        env.pop(var, None)
    try:
        proc = subprocess.run(list(argv), input=data if data is not None else b"", capture_output=True,
                              env=env, check=False)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def redacted_credentials(before: dict[str, str] | None, after: dict[str, str] | None) -> tuple[str, str]:
    """Diff texts for a credential: variable names only, a value that changes is marked.

    ``before`` / ``after``: ``{ENV_NAME: value}`` or None (no credential).
    """
    def text(this: dict[str, str] | None, other: dict[str, str] | None, marker: str) -> str:
        if this is None:
            return ""
        lines = []
        for env in this:
            changed = other is not None and other.get(env) != this[env]
            lines.append(f"{env}=<redacted{marker if changed else ''}>\n")
        return "".join(lines)

    return text(before, after, ", old"), text(after, before, ", new")


def decrypt_credential(run: Runner, path: Path) -> dict[str, str] | None:
    """``systemd-creds decrypt`` of ``path`` into memory, read as obsctl mount reads it
    (:func:`obsctl.credentials.parse_env_lines`): ``{ENV_NAME: value}``, or None when it
    cannot be decrypted or read."""
    rc, out, _err = run(["systemd-creds", "decrypt", f"--name={CREDENTIAL_NAME}", str(path), "-"])
    if rc != 0:
        return None
    try:
        return {key: value for key, value in creds_mod.env_lines(out, str(path)).items() if value}
    except ConfigError:
        return None


def unit_state(run: Runner, unit: str) -> dict[str, Any]:
    """``systemctl show`` + ``is-enabled`` of ``unit``.

    Returns ``{load_state, active_state, sub_state, main_pid, enabled: bool, unit_file_state}``.

    Raises:
        EngineError: systemctl show failed.
    """
    rc, out, err = run(["systemctl", "show", "--property=LoadState,ActiveState,SubState,MainPID,Result", unit])
    if rc != 0:
        raise EngineError(f"systemctl show {unit} failed: {err.strip()}")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    rc, out, _err = run(["systemctl", "is-enabled", unit])
    enabled_state = out.strip() or "unknown"
    return {
        "load_state": props.get("LoadState", "unknown"),
        "active_state": props.get("ActiveState", "unknown"),
        "sub_state": props.get("SubState", "unknown"),
        "main_pid": int(props.get("MainPID") or 0),
        "enabled": rc == 0 and enabled_state in ("enabled", "enabled-runtime", "alias"),
        "unit_file_state": enabled_state,
    }


def journal_tail(run: Runner, unit: str, lines: int = 20) -> list[str]:
    """The last ``lines`` lines ``unit`` logged (``journalctl --output cat``); [] when unreadable."""
    rc, out, _err = run(["journalctl", "--unit", unit, "--lines", str(lines), "--no-pager", "--output", "cat"])
    return out.splitlines()[-lines:] if rc == 0 else []


def lazy_unmount(run: Runner, mountpoint: str) -> None:
    """Detach ``mountpoint`` even when its driver is dead: obsctl's one lazy unmount
    command (:func:`obsctl.unmount.unmount_argv`).

    Raises:
        EngineError: it failed (its message).
    """
    rc, out, err = run(unmount_argv(mountpoint, lazy=True))
    if rc != 0:
        raise EngineError(f"could not unmount {mountpoint}: {(err or out).strip()}")


def mount_facts(mountpoint: str | None, mountinfo_path: str = mounttable.MOUNTINFO_PATH,
                stat_timeout: float = 5.0,
                stat_fn: Callable[..., Any] = mounttable.HEALTH_PROBE) -> dict[str, Any]:
    """What is mounted at ``mountpoint`` (``/proc/self/mountinfo``) and whether it answers.

    Returns ``{mountpoint, health, source, fstype, fuse: bool}``; ``health`` is
    :func:`obsctl.health.probe`'s word (``ok``, ``stale``: the driver is gone, ``hung``:
    the probe, ``stat_fn``, did not answer within ``stat_timeout`` seconds, ``missing``).
    """
    if not mountpoint:
        return {"mountpoint": None, "health": "missing", "source": None, "fstype": None, "fuse": False}
    mounts = mounttable.read_mounts(mountinfo_path)
    entry = mounttable.find_mount(mountpoint, mounts=mounts)
    if entry is None:
        return {"mountpoint": mountpoint, "health": "missing", "source": None, "fstype": None, "fuse": False}
    return {
        "mountpoint": mountpoint,
        "health": health.probe(mountpoint, stat_timeout, mountinfo_path, mounts=mounts, stat=stat_fn),
        "source": entry.source, "fstype": entry.fstype, "fuse": mounttable.is_fuse(entry),
    }


def check_mountpoint(req: Request, mountpoint: str | None, mount: dict[str, Any]) -> None:
    """Refuse, before anything is written (check mode too), what ``obsctl mount`` would refuse at
    start about the mountpoint's content: a directory with entries without ``allow_non_empty``
    (the one rule, :func:`obsctl.unmount.check_empty`).

    Applies to states that start the mount now or at the next start (mounted, remounted,
    present) when nothing is mounted there (``mount``: :func:`mount_facts`); a missing
    directory is created empty, a mounted one is the mount's own content.

    Raises:
        ConfigError: (:class:`obsctl.unmount.MountpointError`) the directory has entries; the
            message names one and the option that allows it.
    """
    if (req.state not in ("mounted", "remounted", "present") or req.allow_non_empty or not mountpoint
            or mount["health"] != health.MISSING or not os.path.isdir(mountpoint)):
        return
    check_empty(mountpoint)


# --------------------------------------------------------------------------
# Files, with undo


def _file_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@dataclass
class Transaction:
    """The file changes of one run: recorded as actions, skipped in check mode, undone on failure."""

    check_mode: bool = False
    files: list[tuple[Path, bytes | None, int | None]] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)

    def remember(self, path: Path) -> None:
        """Keep ``path``'s bytes and mode (or its absence) for :meth:`undo`."""
        self.files.append((path, _read(path), _file_mode(path)))

    def ensure_dir(self, path: Path, mode: int) -> None:
        """mkdir -p; the last directory gets ``mode``, its missing parents 0755."""
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        if self.check_mode:
            return
        for d in reversed(missing):
            d.mkdir(mode=0o755)
            self.dirs.append(d)
        if path in missing:
            os.chmod(path, mode)

    def write(self, path: Path, data: bytes, mode: int, dir_mode: int = 0o755) -> None:
        if self.check_mode:
            return
        self.ensure_dir(path.parent, dir_mode)
        self.remember(path)
        atomic_write(path, data, mode)

    def chmod(self, path: Path, mode: int) -> None:
        if not self.check_mode:
            self.remember(path)
            os.chmod(path, mode)

    def remove(self, path: Path) -> None:
        if self.check_mode:
            return
        self.remember(path)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def encrypt(self, run: Runner, path: Path, cleartext: str) -> None:
        """``systemd-creds encrypt --name=s3 - TMP`` with the clear text on stdin, renamed over ``path``.

        Raises:
            EngineError: systemd-creds failed (its message; the clear text is not in it).
        """
        if self.check_mode:
            return
        self.ensure_dir(path.parent, 0o700)
        self.remember(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        old_umask = os.umask(0o077)
        try:
            rc, _out, err = run(["systemd-creds", "encrypt", f"--name={CREDENTIAL_NAME}", "-", str(tmp)],
                                data=cleartext.encode("utf-8"))
        finally:
            os.umask(old_umask)
        if rc != 0:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"systemd-creds encrypt failed (rc={rc}): {err.strip()}")
        os.chmod(tmp, CREDENTIAL_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def undo(self) -> list[str]:
        """Restore every remembered file, remove the directories this run created (when empty).
        Returns the problems (empty when clean)."""
        problems = []
        for path, data, mode in reversed(self.files):
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write(path, data, mode if mode is not None else 0o600)
            except OSError as exc:
                problems.append(f"restore {path}: {exc}")
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        return problems


# --------------------------------------------------------------------------
# The engine


class Engine:
    """Converge mount ``req.name`` to ``req.state``; :meth:`apply` returns the result.

    ``run`` runs commands (:data:`Runner`), ``root`` is the file system root
    (tests use a temporary directory), ``mountinfo_path`` / ``stat_fn`` /
    ``stat_timeout`` (seconds) what the mount facts read, ``sleep`` how it
    waits, ``settle_seconds`` how long a started mount has to answer.
    Warnings are returned in the result (``warnings``).
    """

    def __init__(self, req: Request, run: Runner = run_command, check_mode: bool = False,
                 root: Path | str = "/", mountinfo_path: str = mounttable.MOUNTINFO_PATH,
                 sleep: Callable[[float], None] = time.sleep, stat_timeout: float = 5.0,
                 stat_fn: Callable[..., Any] = mounttable.HEALTH_PROBE,
                 settle_seconds: float = SETTLE_SECONDS) -> None:
        self.req = req
        self.run = run
        self.check_mode = check_mode
        self.root = Path(root)
        self.mountinfo_path = mountinfo_path
        self.sleep = sleep
        self.stat_timeout = stat_timeout
        self.stat_fn = stat_fn
        self.settle_seconds = settle_seconds
        self.layout = Layout(req.name, self.root)
        self.tx = Transaction(check_mode)
        self.actions: list[str] = []
        self.diff: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.changed = False
        self._reload_needed = False
        self._templates_changed = False  # a running mount restarts to run the new unit
        self._before_unit: dict[str, Any] = {}
        self._before_timer: dict[str, Any] | None = None

    # -- helpers ----------------------------------------------------------

    def _act(self, description: str) -> None:
        self.actions.append(description)
        self.changed = True

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    def _systemctl(self, *args: str) -> str:
        rc, out, err = self.run(["systemctl", *args])
        if rc != 0:
            raise EngineError(f"systemctl {' '.join(args)} failed (rc={rc}): {(err or out).strip()}",
                              journal=journal_tail(self.run, self.layout.unit))
        return out

    def _mount(self, mountpoint: str | None) -> dict[str, Any]:
        return mount_facts(mountpoint, self.mountinfo_path, self.stat_timeout, self.stat_fn)

    def _mountpoint(self) -> str | None:
        """The request's ``path``, else the mountpoint of the existing spec file."""
        if self.req.path:
            return os.path.normpath(self.req.path)
        data = _read(self.layout.spec)
        if data is None:
            return None
        try:
            return tomlio.parse(data.decode("utf-8", "replace"), str(self.layout.spec)).get("mountpoint")
        except ValueError:
            return None

    def _file(self, path: Path, after: bytes | None, mode: int, dir_mode: int = 0o755,
              diff: bool = True) -> bool:
        """Bring ``path`` to ``after`` (None: absent) with ``mode``. True when its content changed."""
        before = _read(path)
        shown = self.layout.host(path)
        if diff:
            self.diff.append({"before_header": shown, "after_header": shown,
                              "before": (before or b"").decode("utf-8", "replace"),
                              "after": (after or b"").decode("utf-8", "replace")})
        if after is None:
            if before is None:
                return False
            self._act(f"remove {shown}")
            self.tx.remove(path)
            return True
        if before != after:
            self._act(f"write {shown}")
            self.tx.write(path, after, mode, dir_mode)
            return True
        if _file_mode(path) != mode:
            self._act(f"chmod {mode:o} {shown}")
            self.tx.chmod(path, mode)
        return False

    # -- desired files ------------------------------------------------------

    def _unit_templates(self) -> None:
        """The unit templates (``install_units``): written when missing or ours, never the role's."""
        context = {"obsctl_bin": obsctl_bin()}
        for filename, template in UNIT_TEMPLATES:
            path = self.layout.unit_dir / filename
            current = _read(path)
            if current is not None and MANAGED_BY.encode() not in current:
                continue  # installed by the obsctl role: keep it
            if self._file(path, render(template, **context).encode("utf-8"), UNIT_MODE, diff=False):
                self._reload_needed = True
                self._templates_changed = True

    def sync_files(self, want: bool, spec: dict[str, Any] | None) -> bool:
        """Spec, telemetry file, credential and drop-in to the desired state (``want`` False:
        removed). Returns whether a content changed (a running mount must restart to see it)."""
        layout, req = self.layout, self.req
        changed = False
        if want and req.telemetry is not None:
            text = tomlio.render_telemetry(req.telemetry)
            changed |= self._file(layout.telemetry, text.encode("utf-8"), CONFIG_MODE)
        elif not want:
            changed |= self._file(layout.telemetry, None, CONFIG_MODE, diff=layout.telemetry.exists())
        after = tomlio.render_mount_spec(spec).encode("utf-8") if want else None
        changed |= self._file(layout.spec, after, CONFIG_MODE)

        # Credential (compared by decrypting it in memory) + drop-in
        shown = layout.host(layout.credential)
        have = layout.credential.exists()
        before_creds = decrypt_credential(self.run, layout.credential) if have else None
        if have and before_creds is None:
            before_creds = {}  # unreadable (another host's key, damaged): replaced or removed
        creds = request_credentials(req, spec["impl"]) if (want and spec is not None) else None
        after_creds = creds.as_env() if creds is not None else None
        if after_creds is not None:
            if before_creds != after_creds:
                changed = True
                self._act(f"encrypt credential {shown}")
                self.tx.encrypt(self.run, layout.credential, creds.env_text())
            elif _file_mode(layout.credential) != CREDENTIAL_MODE:
                self._act(f"chmod {CREDENTIAL_MODE:o} {shown}")
                self.tx.chmod(layout.credential, CREDENTIAL_MODE)
        elif have:
            changed = True
            self._act(f"remove {shown}")
            self.tx.remove(layout.credential)
        red_before, red_after = redacted_credentials(before_creds, after_creds)
        self.diff.append({"before_header": f"{shown} (decrypted, values redacted)",
                          "after_header": f"{shown} (decrypted, values redacted)",
                          "before": red_before, "after": red_after})
        dropin = None
        if after_creds is not None:
            dropin = (f"{MANAGED_HEADER}[Service]\n"
                      f"LoadCredentialEncrypted={CREDENTIAL_NAME}:{shown}\n").encode("utf-8")
        if self._file(layout.dropin, dropin, UNIT_MODE, diff=False):
            changed = True
            self._reload_needed = True
        if dropin is None and layout.dropin.parent.is_dir() and not self.check_mode:
            try:
                layout.dropin.parent.rmdir()  # only when empty: other drop-ins stay
            except OSError:
                pass
        return changed

    # -- the run ------------------------------------------------------------

    def apply(self) -> dict[str, Any]:
        """Converge; returns the result (``changed``, ``actions``, ``diff``, ``mount``,
        ``unit_state``, ``warnings``, paths). Secrets are never in it.

        Raises:
            ConfigError: invalid request (nothing was changed).
            EngineError: a step failed; a failed start rolled this run's changes back.
        """
        req, layout = self.req, self.layout
        errors = _check_request(req)
        if errors:
            raise ConfigError("; ".join(errors))
        spec = desired_spec(req, layout) if req.state in ("mounted", "present", "remounted") else None
        if not (self.root / "run/systemd/system").is_dir():
            raise EngineError("systemd is not running on this host (no /run/systemd/system): "
                              "obsctl mounts run as obsctl-mount@NAME.service units")
        mountpoint = self._mountpoint()
        before_mount = self._mount(mountpoint)
        check_mountpoint(req, mountpoint, before_mount)
        if req.install_units:
            self._unit_templates()
            self._daemon_reload()
        self._before_unit = before = unit_state(self.run, layout.unit)
        if req.state not in ("absent", "unmounted") and before["load_state"] == "not-found":
            msg = (f"{UNIT_TEMPLATE} is not installed on this host: install it first "
                   "(role obsctl.observability.obsctl, or obsctl systemd install)")
            if not self.check_mode:
                raise EngineError(msg)
            self._warn(msg + "; check mode continues as if it were")
        getattr(self, "_state_" + req.state)(before, before_mount, mountpoint, spec)
        self._timer()
        after_unit = before if self.check_mode else unit_state(self.run, layout.unit)
        after_mount = before_mount if self.check_mode else self._mount(mountpoint)
        self.diff.append({
            "before_header": layout.unit, "after_header": layout.unit,
            "before": _unit_text(before, before_mount),
            "after": _predicted_unit_text(req.state, before, before_mount) if self.check_mode
            else _unit_text(after_unit, after_mount),
        })
        return {
            "changed": self.changed,
            "name": req.name,
            "state": req.state,
            "unit": layout.unit,
            "config_path": layout.host(layout.spec),
            "credential_path": layout.host(layout.credential)
            if (req.credentials is not None and req.state != "absent") else None,
            "actions": self.actions,
            "mount": {k: after_mount.get(k) for k in ("mountpoint", "source", "fstype", "health")},
            "unit_state": {k: after_unit[k] for k in ("active_state", "sub_state", "enabled")},
            "diff": self.diff,
            "warnings": self.warnings,
        }

    def _daemon_reload(self) -> None:
        if self._reload_needed:
            self._act("systemctl daemon-reload")
            if not self.check_mode:
                self._systemctl("daemon-reload")
            self._reload_needed = False

    def _enable(self, before: dict[str, Any]) -> None:
        if not before["enabled"]:
            self._act(f"enable {self.layout.unit}")
            if not self.check_mode:
                self._systemctl("enable", self.layout.unit)

    def _state_present(self, before, before_mount, mountpoint, spec) -> None:
        self.sync_files(True, spec)
        self._daemon_reload()
        self._enable(before)

    def _state_mounted(self, before, before_mount, mountpoint, spec, force: bool = False) -> None:
        files_changed = self.sync_files(True, spec) or self._templates_changed
        self._daemon_reload()
        self._enable(before)
        active = before["active_state"] in ("active", "activating", "reloading")
        word = before_mount["health"]
        if word == health.OK and not active:
            raise EngineError(f"{mountpoint} is already mounted by something else ({before_mount['fstype']}, "
                              f"{before_mount['source']}) and {self.layout.unit} is not running: "
                              "not taking it over")
        if word in health.UNANSWERED:
            self._act(f"lazy unmount of the {word} mount at {mountpoint} (it does not answer)")
            if not self.check_mode:
                lazy_unmount(self.run, mountpoint)
        self._ensure_mountpoint(mountpoint)
        if active and word == health.OK and not files_changed and not force:
            return
        verb = "restart" if active else "start"
        self._act(f"{verb} {self.layout.unit}")
        if not self.check_mode:
            self._start(verb, mountpoint)

    def _state_remounted(self, before, before_mount, mountpoint, spec) -> None:
        self._state_mounted(before, before_mount, mountpoint, spec, force=True)

    def _ensure_mountpoint(self, mountpoint: str) -> None:
        path = Path(mountpoint)
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTCONN, errno.ECONNABORTED):
                raise EngineError(f"cannot use mountpoint {mountpoint}: {exc}") from None
            if exc.errno == errno.ENOENT:
                self._act(f"create directory {mountpoint}")
                self.tx.ensure_dir(path, 0o755)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise EngineError(f"mountpoint {mountpoint} exists and is not a directory")

    def _start(self, verb: str, mountpoint: str) -> None:
        unit = self.layout.unit
        rc, out, err = self.run(["systemctl", verb, unit])
        word = health.MISSING
        if rc == 0:
            # READY=1 comes after the mount is in the table; allow a short lag anyway.
            word = health.wait_until_ok(lambda: self._mount(mountpoint)["health"], self.settle_seconds, self.sleep)
        if rc == 0 and word == health.OK:
            return
        journal = journal_tail(self.run, unit)
        problem = (f"systemctl {verb} {unit} failed (rc={rc}): {(err or out).strip()}" if rc != 0
                   else f"{unit} started but {mountpoint} is {word}")
        rollback_errors = self.rollback(mountpoint)
        self.changed = bool(rollback_errors)
        msg = f"{problem}; rolled back the changes of this run"
        if rollback_errors:
            msg += f" (rollback problems: {'; '.join(rollback_errors)})"
        msg += f". Last log lines of {unit}:\n" + ("\n".join(journal) or "(none)")
        raise EngineError(msg, journal=journal, rolled_back=True)

    def rollback(self, mountpoint: str | None) -> list[str]:
        """Undo this run: files, enablement and the running state of the unit (and timer).
        Returns the problems (empty when clean)."""
        unit = self.layout.unit
        before = self._before_unit
        reload_needed = any(path.suffix in (".conf", ".service", ".timer") for path, _d, _m in self.tx.files)
        errors = self.tx.undo()
        commands: list[list[str]] = [["daemon-reload"]] if reload_needed else []
        was_active = before.get("active_state") == "active"
        if not was_active:
            commands.append(["stop", unit])
        if not before.get("enabled"):
            commands.append(["disable", unit])
        commands.append(["restart", unit] if was_active else ["reset-failed", unit])
        if self._before_timer is not None:
            if self._before_timer.get("active_state") != "active":
                commands.append(["stop", self.layout.timer])
            if not self._before_timer.get("enabled"):
                commands.append(["disable", self.layout.timer])
        for args in commands:
            rc, _out, err = self.run(["systemctl", *args])
            if rc != 0 and args[0] != "reset-failed":
                errors.append(f"systemctl {' '.join(args)}: {err.strip()}")
        if not was_active and mountpoint and self._mount(mountpoint)["health"] in health.UNANSWERED:
            try:
                lazy_unmount(self.run, mountpoint)
            except EngineError as exc:
                errors.append(exc.msg)
        return errors

    def _state_unmounted(self, before, before_mount, mountpoint, spec) -> None:
        if before["active_state"] in ("active", "activating", "reloading", "deactivating"):
            self._act(f"stop {self.layout.unit}")
            if not self.check_mode:
                self._systemctl("stop", self.layout.unit)
        if mountpoint and not self.check_mode:
            now = self._mount(mountpoint)
            if now["fuse"] and now["health"] != "missing":
                self._act(f"lazy unmount of {mountpoint}")
                lazy_unmount(self.run, mountpoint)
        elif mountpoint and before_mount["fuse"] and before_mount["health"] in health.UNANSWERED:
            self._act(f"lazy unmount of the {before_mount['health']} mount at {mountpoint}")
        if before["active_state"] == "failed" and not self.check_mode:
            self.run(["systemctl", "reset-failed", self.layout.unit])  # a failed instance would linger

    def _state_absent(self, before, before_mount, mountpoint, spec) -> None:
        self._state_unmounted(before, before_mount, mountpoint, spec)
        if before["enabled"]:
            self._act(f"disable {self.layout.unit}")
            if not self.check_mode:
                self._systemctl("disable", self.layout.unit)
        self.sync_files(False, None)
        self._daemon_reload()
        if not self.check_mode and before["load_state"] != "not-found":
            self.run(["systemctl", "reset-failed", self.layout.unit])

    def _timer(self) -> None:
        """The health-check timer as ``req.health_timer`` asks (absent: always stopped + disabled)."""
        want = self.req.health_timer
        if self.req.state == "absent" or (want and self.req.state == "unmounted"):
            want = False  # a mount stopped on purpose is not health-checked
        if want is None:
            return
        timer = self.layout.timer
        self._before_timer = state = unit_state(self.run, timer)
        if state["load_state"] == "not-found":
            if want:
                self._warn(f"{timer} is not installed (role obsctl.observability.obsctl): no health check")
            return
        run_it = want and self.req.state in ("mounted", "remounted")
        steps = []
        if want and not state["enabled"]:
            steps.append("enable")
        if not want and state["enabled"]:
            steps.append("disable")
        if run_it and state["active_state"] != "active":
            steps.append("start")
        if not run_it and state["active_state"] in ("active", "activating"):
            steps.append("stop")
        for verb in steps:
            self._act(f"{verb} {timer}")
            if not self.check_mode:
                self._systemctl(verb, timer)


def _unit_text(unit: dict[str, Any], mount: dict[str, Any]) -> str:
    return (f"enabled: {'yes' if unit['enabled'] else 'no'}\nactive: {unit['active_state']}\n"
            f"mount: {mount.get('health')}\n")


def _predicted_unit_text(state: str, unit: dict[str, Any], mount: dict[str, Any]) -> str:
    if state in ("mounted", "remounted"):
        return "enabled: yes\nactive: active\nmount: ok\n"
    if state == "present":
        return f"enabled: yes\nactive: {unit['active_state']}\nmount: {mount.get('health')}\n"
    if state == "unmounted":
        return f"enabled: {'yes' if unit['enabled'] else 'no'}\nactive: inactive\nmount: missing\n"
    return "enabled: no\nactive: inactive\nmount: missing\n"


def apply(req: Request, check_mode: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``Engine(req, check_mode=check_mode, **kwargs).apply()``: see :class:`Engine`.

    A request with ``service_manager: none`` is :func:`obsctl.background.apply`'s
    (same spec, no unit); :func:`obsctl.systemd_units.apply_request` chooses."""
    return Engine(req, check_mode=check_mode, **kwargs).apply()
