"""``obsctl systemd install | uninstall | check``: mounts as systemd units without Ansible.

The same files the Ansible roles write: units from the same templates
(``templates/`` in the repository, shipped as ``obsctl/templates``), TOML from
the same writer (:mod:`obsctl.tomlio`, the roles' filter plugins):

* ``/etc/systemd/system/obsctl-mount@.service``, ``obsctl-mount@.timer`` and
  ``obsctl-mount-check@.service`` (written when missing or when an earlier
  ``obsctl systemd install`` wrote them; unit files the obsctl role manages are
  left alone);
* ``/etc/obsctl/mounts/NAME.toml`` (0640, no secret), by ``tomlio.render_mount_spec``;
* with credentials from ``env`` or ``stdin``: ``/etc/obsctl/credentials/NAME.cred``
  (0600, encrypted by ``systemd-creds encrypt --name=s3 -`` fed on stdin, the
  clear text never touches the disk) and the drop-in
  ``obsctl-mount@NAME.service.d/credentials.conf`` with
  ``LoadCredentialEncrypted=s3:...`` -- byte for byte what the fuse_mount
  module writes;
* with ``--otel-endpoint``: ``/etc/obsctl/telemetry.d/NAME.toml`` (mode remote,
  by ``tomlio.render_telemetry``) named by the spec's ``telemetry_config``.

Then ``systemctl enable`` + ``start`` of ``obsctl-mount@NAME.service`` (start
returns once obsctl sent READY=1, i.e. the mount answers) and of the timer
``obsctl-mount@NAME.timer``, which runs :func:`check` every 5 minutes.

Every file is written atomically (temporary file, fsync, rename). When
anything fails, what this run changed is undone (files restored, units
disabled / stopped as they were) and the exit status is 1: nothing is left
half-done.

Exit status (as the rest of the CLI): 0 done; 1 failed (rolled back); 2 bad
usage or invalid input (nothing was changed).

``python -m obsctl.systemd_units check NAME`` is what the health-check unit
runs (the same as ``obsctl systemd check --name NAME`` once the CLI has it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from obsctl import tomlio
from obsctl.fileutil import atomic_write, fsync_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Written at the top of every file this module renders; an existing unit
#: template without it belongs to someone else (the Ansible role) and is kept.
MANAGED_BY = "Managed by obsctl systemd install: changes here are overwritten."

#: The unit templates: (file name under /etc/systemd/system, template name).
UNIT_TEMPLATES = (
    ("obsctl-mount@.service", "obsctl-mount@.service.j2"),
    ("obsctl-mount@.timer", "obsctl-mount@.timer.j2"),
    ("obsctl-mount-check@.service", "obsctl-mount-check@.service.j2"),
)

CREDENTIAL_NAME = "s3"
CONFIG_MODE, CREDENTIAL_MODE, UNIT_MODE = 0o640, 0o600, 0o644
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MANAGED_HEADER = f"# {tomlio.MANAGED_HEADER}\n"

#: The keys of the mount spec, as the fuse_mount module writes them.
SPEC_KEYS = ("name", "source", "mountpoint", "impl", "endpoint", "region", "profile",
             "credentials_from", "read_only", "allow_other", "cache_mode", "options",
             "command", "ready_timeout_seconds", "telemetry_config", "max_restarts")


class InstallError(RuntimeError):
    """A step failed; ``str()`` says which and why (never a secret)."""


# --------------------------------------------------------------------------
# paths and templates


@dataclass(frozen=True)
class Layout:
    """Where mount ``name`` lives under ``root`` (``/`` on a host, a temp dir in tests)."""

    name: str
    root: Path = Path("/")

    def _p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def unit(self) -> str:
        return f"obsctl-mount@{self.name}.service"

    @property
    def timer(self) -> str:
        return f"obsctl-mount@{self.name}.timer"

    @property
    def unit_dir(self) -> Path:
        return self._p("etc/systemd/system")

    @property
    def spec(self) -> Path:
        return self._p("etc/obsctl/mounts", f"{self.name}.toml")

    @property
    def credential(self) -> Path:
        return self._p("etc/obsctl/credentials", f"{self.name}.cred")

    @property
    def dropin(self) -> Path:
        return self.unit_dir / f"{self.unit}.d" / "credentials.conf"

    @property
    def telemetry(self) -> Path:
        return self._p("etc/obsctl/telemetry.d", f"{self.name}.toml")

    def host(self, path: Path) -> str:
        """``path`` as the host sees it (without the test root)."""
        return "/" + str(path.relative_to(self.root)) if self.root != Path("/") else str(path)


def templates_dir() -> Path:
    """The directory of the Jinja2 templates shipped with the package.

    Raises:
        InstallError: the package was installed without its templates.
    """
    here = Path(__file__).resolve().parent / "templates"
    if not (here / UNIT_TEMPLATES[0][1]).is_file():
        raise InstallError(f"{here}: the obsctl templates are missing (broken installation)")
    return here


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` as the Ansible template module would.

    Ansible's ``comment`` filter and ``ansible_managed`` are provided, so the
    unit templates render to the same units as the obsctl role's.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
        autoescape=False)
    env.filters["comment"] = lambda text: "\n".join(f"# {line}".rstrip() for line in str(text).splitlines())
    context.setdefault("ansible_managed", MANAGED_BY)
    return env.get_template(template).render(**context)


def mount_spec_dict(spec: Any) -> dict[str, Any]:
    """The flat TOML keys of a validated :class:`obsctl.config.MountSpec`.

    Defaults that the fuse_mount module never writes (``command`` empty,
    ``max_restarts`` 3) are left out, so both write the same bytes.
    """
    data = spec.model_dump()
    out = {key: data.get(key) for key in SPEC_KEYS}
    if not out["command"]:
        out["command"] = None
    if out["max_restarts"] == 3:
        out["max_restarts"] = None
    timeout = out["ready_timeout_seconds"]
    if isinstance(timeout, float) and timeout.is_integer():
        out["ready_timeout_seconds"] = int(timeout)
    return out


def dropin_text(layout: Layout) -> str:
    """The credentials drop-in, byte for byte what the fuse_mount module writes."""
    return f"{_MANAGED_HEADER}[Service]\nLoadCredentialEncrypted={CREDENTIAL_NAME}:{layout.host(layout.credential)}\n"


# --------------------------------------------------------------------------
# files, with undo


def ensure_dir(path: Path, mode: int) -> list[Path]:
    """mkdir -p; directories it creates get ``mode`` (parents 0755). Returns them."""
    created: list[Path] = []
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        created.append(d)
    if path in created:
        os.chmod(path, mode)
    return created


@dataclass
class Transaction:
    """Files and directories changed by one run, so a failure can undo them."""

    files: list[tuple[Path, bytes | None, int | None]] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def remember(self, path: Path) -> None:
        try:
            self.files.append((path, path.read_bytes(), path.stat().st_mode & 0o7777))
        except FileNotFoundError:
            self.files.append((path, None, None))

    def write(self, path: Path, data: str | bytes, mode: int, dir_mode: int = 0o755) -> bool:
        """Write when the content or mode differs; True when something changed."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        try:
            if path.read_bytes() == raw and (path.stat().st_mode & 0o7777) == mode:
                return False
        except FileNotFoundError:
            pass
        self.dirs += ensure_dir(path.parent, dir_mode)
        self.remember(path)
        atomic_write(path, raw, mode)
        self.actions.append(f"wrote {path}")
        return True

    def remove(self, path: Path) -> bool:
        if not path.exists():
            return False
        self.remember(path)
        path.unlink()
        self.actions.append(f"removed {path}")
        return True

    def undo(self) -> list[str]:
        """Restore every remembered file; returns the problems (empty when clean)."""
        problems = []
        for path, data, mode in reversed(self.files):
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
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
# systemd


Runner = Callable[..., subprocess.CompletedProcess]


def _run(argv: Sequence[str], input: bytes | None = None, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(key, None)
    proc = subprocess.run(list(argv), input=input, capture_output=True, env=env, check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()
        raise InstallError(f"{' '.join(argv)} failed (rc={proc.returncode}): {err}")
    return proc


def unit_properties(unit: str, run: Runner = _run) -> dict[str, str]:
    """``systemctl show`` of ``unit``: LoadState, ActiveState, UnitFileState, ..."""
    proc = run(["systemctl", "show", unit, "--property=LoadState,ActiveState,SubState,UnitFileState"])
    props = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, _ignored, value = line.partition("=")
        props[key] = value
    return props


def journal_tail(unit: str, lines: int = 15, run: Runner = _run) -> str:
    proc = run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"])
    return proc.stdout.decode("utf-8", "replace").rstrip()


def _require_systemd(root: Path) -> None:
    if not (root / "run/systemd/system").is_dir():
        raise InstallError("systemd is not running on this host (no /run/systemd/system)")
    if shutil.which("systemctl") is None:
        raise InstallError("systemctl is not installed")


# --------------------------------------------------------------------------
# install


def _obsctl_bin() -> str:
    """The obsctl executable units run: next to this Python, else on PATH."""
    candidate = Path(sys.executable).parent / "obsctl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("obsctl")
    if found:
        return found
    raise InstallError("cannot find the obsctl executable (not next to Python, not on PATH)")


def _credential_text(creds: Any) -> str:
    lines = [f"AWS_ACCESS_KEY_ID={creds.access_key_id}\n", f"AWS_SECRET_ACCESS_KEY={creds.secret_access_key}\n"]
    if creds.session_token:
        lines.append(f"AWS_SESSION_TOKEN={creds.session_token}\n")
    return "".join(lines)


def _decrypt(path: Path, run: Runner) -> bytes | None:
    proc = run(["systemd-creds", "decrypt", f"--name={CREDENTIAL_NAME}", str(path), "-"])
    return proc.stdout if proc.returncode == 0 else None


def _encrypt(tx: Transaction, path: Path, cleartext: str, run: Runner) -> bool:
    """Encrypt ``cleartext`` (fed on stdin) into ``path`` unless it already holds it."""
    if path.exists() and _decrypt(path, run) == cleartext.encode("utf-8"):
        if (path.stat().st_mode & 0o7777) != CREDENTIAL_MODE:
            tx.remember(path)
            os.chmod(path, CREDENTIAL_MODE)
        return False
    tx.dirs += ensure_dir(path.parent, 0o700)
    tx.remember(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = os.umask(0o077)
    try:
        proc = run(["systemd-creds", "encrypt", f"--name={CREDENTIAL_NAME}", "-", str(tmp)],
                   input=cleartext.encode("utf-8"))
    finally:
        os.umask(old)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise InstallError(f"systemd-creds encrypt failed (rc={proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    os.chmod(tmp, CREDENTIAL_MODE)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    tx.actions.append(f"encrypted {path}")
    return True


def _write_unit_templates(tx: Transaction, layout: Layout, context: dict[str, Any]) -> bool:
    """Write the three unit templates unless another tool (the role) owns them."""
    changed = False
    for filename, template in UNIT_TEMPLATES:
        path = layout.unit_dir / filename
        if path.exists() and MANAGED_BY not in path.read_text("utf-8", "replace"):
            continue  # installed by the obsctl role: keep it
        changed |= tx.write(path, render(template, **context), UNIT_MODE)
    return changed


def plan_install(args: argparse.Namespace, command: list[str]) -> tuple[dict[str, Any], Any, dict[str, Any] | None]:
    """Validate the command line; nothing is written.

    Returns ``(spec_dict, credentials_or_None, telemetry_dict_or_None)``.

    Raises:
        obsctl.config.ConfigError: invalid name, spec or telemetry, or no
            credentials where they were asked for.
    """
    from obsctl import credentials as creds_mod
    from obsctl.cli import _mount_spec
    from obsctl.config import ConfigError, build_mount_spec, parse_telemetry

    name = args.name
    if not name:
        raise ConfigError("obsctl systemd install needs --name NAME (it names obsctl-mount@NAME.service)")
    if not _NAME_RE.match(name):
        raise ConfigError(f"--name {name!r}: 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit")
    source_of_creds = args.credentials_from
    spec = _mount_spec(args, command)
    creds = None
    if spec.impl != "generic":
        if source_of_creds in ("env", "stdin") or (source_of_creds is None and os.environ.get("AWS_ACCESS_KEY_ID")):
            creds = creds_mod.resolve(source_of_creds or "env")
            spec = spec.model_copy(update={"credentials_from": "systemd"})
        elif source_of_creds is None and spec.credentials_from == "env" and not args.config:
            raise ConfigError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or pass "
                "--credentials-from stdin (KEY=VALUE lines) or --credentials-from profile --profile P")
    telemetry = None
    if args.otel_endpoint or args.otel_protocol:
        if not args.otel_endpoint:
            raise ConfigError("--otel-protocol needs --otel-endpoint with obsctl systemd install")
        telemetry = {"mode": "remote", "otlp_endpoint": args.otel_endpoint,
                     "otlp_protocol": args.otel_protocol or "grpc", "service_name": "obsctl-mount"}
        parse_telemetry(tomlio.parse(tomlio.render_telemetry(telemetry)), "--otel-endpoint")
        spec = spec.model_copy(update={"telemetry_config": str(Layout(name).telemetry)})
    spec = spec.model_copy(update={"name": name})
    data = mount_spec_dict(spec)
    build_mount_spec({k: v for k, v in data.items() if v is not None})  # the file must load back
    return data, creds, telemetry


def install(name: str, spec: dict[str, Any], creds: Any, telemetry: dict[str, Any] | None,
            root: Path = Path("/"), run: Runner = _run, out: Callable[[str], None] = print) -> None:
    """Write everything for mount ``name``, enable and start it; undo on failure.

    Raises:
        InstallError: a step failed; the changes of this run were rolled back.
    """
    layout = Layout(name, root)
    _require_systemd(root)
    tx = Transaction()
    before_unit = unit_properties(layout.unit, run)
    before_timer = unit_properties(layout.timer, run)
    context = {"obsctl_bin": _obsctl_bin(), "obsctl_venv_python": sys.executable}
    try:
        units_changed = _write_unit_templates(tx, layout, context)
        changed = False
        if telemetry is not None:
            changed |= tx.write(layout.telemetry, tomlio.render_telemetry(telemetry), CONFIG_MODE)
        changed |= tx.write(layout.spec, tomlio.render_mount_spec(spec), CONFIG_MODE)
        if creds is not None:
            changed |= _encrypt(tx, layout.credential, _credential_text(creds), run)
            units_changed |= tx.write(layout.dropin, dropin_text(layout), UNIT_MODE)
        else:
            units_changed |= tx.remove(layout.dropin)
            changed |= tx.remove(layout.credential)
        if units_changed:
            run(["systemctl", "daemon-reload"], check=True)
        mountpoint = root / spec["mountpoint"].lstrip("/")
        tx.dirs += ensure_dir(mountpoint, 0o755)
        run(["systemctl", "enable", layout.unit, layout.timer], check=True)
        active = before_unit.get("ActiveState") == "active"
        verb = "restart" if active and (changed or units_changed) else "start"
        out(f"obsctl: {verb} {layout.unit} (waits until the mount answers)")
        proc = run(["systemctl", verb, layout.unit])
        if proc.returncode != 0:
            raise InstallError(f"systemctl {verb} {layout.unit} failed; its last log lines:\n"
                               f"{journal_tail(layout.unit, run=run)}")
        run(["systemctl", "start", layout.timer], check=True)
    except BaseException as exc:
        problems = _rollback(tx, layout, before_unit, before_timer, run)
        if isinstance(exc, InstallError):
            note = "; rolled back" + (f" (problems: {'; '.join(problems)})" if problems else "")
            raise InstallError(f"{exc}\n{note}") from None
        raise
    for action in tx.actions:
        out(f"obsctl: {action}")


def _rollback(tx: Transaction, layout: Layout, before_unit: dict[str, str], before_timer: dict[str, str],
              run: Runner) -> list[str]:
    problems = []
    for unit, before in ((layout.timer, before_timer), (layout.unit, before_unit)):
        if before.get("ActiveState") != "active":
            run(["systemctl", "stop", unit])
        if before.get("UnitFileState") != "enabled":
            run(["systemctl", "disable", unit])
    problems += tx.undo()
    run(["systemctl", "daemon-reload"])
    if before_unit.get("ActiveState") == "active":
        if run(["systemctl", "restart", layout.unit]).returncode != 0:
            problems.append(f"{layout.unit} did not restart with its old configuration")
    run(["systemctl", "reset-failed", layout.unit])
    return problems


def cmd_install(args: argparse.Namespace, command: list[str]) -> int:
    """``obsctl systemd install [mount options] --name NAME SRC MOUNTPOINT``. Returns the exit status."""
    from obsctl.config import ConfigError

    if os.geteuid() != 0:
        print("obsctl: systemd install needs root (it writes /etc and runs systemctl)", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec, creds, telemetry = plan_install(args, command)
    except (ConfigError, InstallError) as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        install(args.name, spec, creds, telemetry)
    except (InstallError, OSError) as exc:
        print(f"obsctl: install of {args.name} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"obsctl: {spec['source']} is mounted on {spec['mountpoint']} by obsctl-mount@{args.name}.service; "
          f"health check every 5 minutes by obsctl-mount@{args.name}.timer")
    return EXIT_OK


# --------------------------------------------------------------------------
# uninstall


def uninstall(name: str, root: Path = Path("/"), run: Runner = _run, out: Callable[[str], None] = print) -> bool:
    """Stop and disable the timer and the unit, remove spec, credential, drop-in
    and per-mount telemetry file. The unit templates and the mountpoint stay.
    Returns False when there was nothing to remove.

    Raises:
        InstallError: systemctl could not stop the unit or the mount stayed.
    """
    from obsctl import mounttable
    from obsctl.config import ConfigError, load_mount_spec

    layout = Layout(name, root)
    _require_systemd(root)
    mountpoint = None
    if layout.spec.exists():
        try:
            mountpoint = load_mount_spec(layout.spec).mountpoint
        except ConfigError:
            pass
    unit = unit_properties(layout.unit, run)
    timer = unit_properties(layout.timer, run)
    known = layout.spec.exists() or unit.get("UnitFileState") == "enabled" or unit.get("ActiveState") == "active"
    for u, props in ((layout.timer, timer), (layout.unit, unit)):
        if props.get("ActiveState") in ("active", "activating", "reloading", "failed"):
            run(["systemctl", "stop", u], check=True)
            out(f"obsctl: stopped {u}")
        if props.get("UnitFileState") == "enabled":
            run(["systemctl", "disable", u], check=True)
            out(f"obsctl: disabled {u}")
    tx = Transaction()
    for path in (layout.spec, layout.credential, layout.dropin, layout.telemetry):
        tx.remove(path)
    try:
        layout.dropin.parent.rmdir()
    except OSError:
        pass
    run(["systemctl", "daemon-reload"])
    run(["systemctl", "reset-failed", layout.unit])
    for action in tx.actions:
        out(f"obsctl: {action}")
    if mountpoint and mounttable.find_mount(mountpoint) is not None:
        raise InstallError(f"{mountpoint} is still mounted after {layout.unit} stopped "
                           f"(something else mounted it?): fusermount3 -u {mountpoint}")
    return known or bool(tx.actions)


def cmd_uninstall(args: argparse.Namespace) -> int:
    """``obsctl systemd uninstall --name NAME``. Returns the exit status."""
    name = args.name
    if not name or not _NAME_RE.match(name):
        print(f"obsctl: --name {name!r} is not a mount name", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("obsctl: systemd uninstall needs root", file=sys.stderr)
        return EXIT_USAGE
    try:
        removed = uninstall(name)
    except (InstallError, OSError) as exc:
        print(f"obsctl: uninstall of {name} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"obsctl: {name} removed" if removed else f"obsctl: no mount called {name}: nothing to remove")
    return EXIT_OK


# --------------------------------------------------------------------------
# check (the timer's health check)


def check(name: str, root: Path = Path("/"), run: Runner = _run, out: Callable[[str], None] = print,
          probe_timeout: float = 5.0, settle_seconds: float = 15.0) -> int:
    """Health check of mount ``name``; repairs what it can. Returns the exit status.

    * unit active, mount ``ok``: nothing to do (0);
    * unit active, mount ``stale`` (driver gone, "Transport endpoint is not
      connected", or no answer within ``probe_timeout``) or ``missing``:
      ``systemctl restart`` -- obsctl unmounts the dead mount lazily and
      mounts again (0 when the mount answers afterwards, else 1);
    * unit ``failed`` (systemd gave up after its start limit):
      ``reset-failed`` + ``start`` (0 / 1 the same way);
    * unit inactive: stopped on purpose, left alone (0).
    """
    from obsctl import mounttable
    from obsctl.config import ConfigError, load_mount_spec

    layout = Layout(name, root)
    try:
        spec = load_mount_spec(layout.spec)
    except ConfigError as exc:
        out(f"obsctl: {exc}")
        return EXIT_USAGE
    props = unit_properties(layout.unit, run)
    state = props.get("ActiveState", "unknown")
    if state in ("activating", "deactivating", "reloading"):
        out(f"obsctl: {layout.unit} is {state}; checking again next time")
        return EXIT_OK
    if state == "inactive":
        out(f"obsctl: {layout.unit} is stopped; left alone")
        return EXIT_OK
    health = mounttable.probe_health_within(spec.mountpoint, probe_timeout) if state == "active" else "n/a"
    if state == "active" and health == "ok":
        out(f"obsctl: {spec.mountpoint} is healthy")
        return EXIT_OK
    if state == "failed":
        out(f"obsctl: {layout.unit} failed; starting it again")
        run(["systemctl", "reset-failed", layout.unit])
        proc = run(["systemctl", "start", layout.unit])
    else:
        out(f"obsctl: {spec.mountpoint} is {health} while {layout.unit} runs; remounting")
        proc = run(["systemctl", "restart", layout.unit])
    deadline = time.monotonic() + settle_seconds
    health = "missing"
    while proc.returncode == 0:
        health = mounttable.probe_health_within(spec.mountpoint, probe_timeout)
        if health == "ok" or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if proc.returncode == 0 and health == "ok":
        out(f"obsctl: {spec.mountpoint} is mounted again")
        return EXIT_OK
    out(f"obsctl: repair of {spec.mountpoint} failed (mount {health}); last log lines:\n"
        f"{journal_tail(layout.unit, run=run)}")
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m obsctl.systemd_units check NAME`` (the health-check unit's command)."""
    parser = argparse.ArgumentParser(prog="python -m obsctl.systemd_units")
    sub = parser.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="health-check one mount and remount it when stale")
    chk.add_argument("name")
    args = parser.parse_args(argv)
    if not _NAME_RE.match(args.name):
        print(f"obsctl: {args.name!r} is not a mount name", file=sys.stderr)
        return EXIT_USAGE
    return check(args.name)


if __name__ == "__main__":
    sys.exit(main())
