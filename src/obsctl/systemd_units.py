"""``obsctl systemd install | uninstall | apply | check``: mounts as systemd units.

The command-line face of :mod:`obsctl.engine`, the one implementation of a
mount's desired state (the fuse_mount module drives the same engine through
``obsctl systemd apply --json``):

* ``install [mount options] --name NAME SRC MOUNTPOINT``: state ``mounted``
  with the unit templates written when missing (``install_units``), the
  health-check timer enabled and started, credentials from ``env`` or
  ``stdin`` stored encrypted (``systemd-creds``) and ``--otel-endpoint``
  written to ``/etc/obsctl/telemetry.d/NAME.toml``;
* ``uninstall --name NAME``: state ``absent`` (unit and timer stopped and
  disabled, spec, credential, drop-in and per-mount telemetry file removed;
  the unit templates and the mountpoint stay);
* ``apply --json [--check] [--diff]``: one :class:`obsctl.engine.Request` as
  JSON on stdin (secrets included: never in argv), the result as JSON on
  stdout;
* ``check --name NAME``: the timer's health check (:func:`check`); the
  check unit (templates/obsctl-mount-check@.service.j2) runs this command.

Exit status (:data:`obsctl.errors.EXIT_OK` ..., as the rest of the CLI): 0 done;
1 failed (a failed start rolled this run's changes back); 2 bad usage or invalid
input (nothing was changed).
With ``apply --json`` stdout holds one JSON object in every case: the result,
or ``{"failed": true, "msg": ..., "rolled_back": ..., "journal": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from obsctl import credentials as creds_mod
from obsctl import background, engine, health, tomlio
from obsctl.config import parse_telemetry
from obsctl.drivers import get_driver
from obsctl.engine import EngineError, Layout, Request, Runner, check_name, journal_tail, run_command, unit_state
from obsctl.errors import EXIT_FAILED, EXIT_OK, EXIT_PERMANENT, EXIT_USAGE, ConfigError
from obsctl.mountargs import mount_spec_from_args
from obsctl.mountspec import load_mount_spec


def apply_request(req: Request, check_mode: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Converge one mount request: :func:`obsctl.engine.apply` (a systemd unit), or
    :func:`obsctl.background.apply` when ``req.service_manager`` is ``"none"``
    (the same spec, run by ``obsctl mount --config`` in the background).

    ``kwargs`` go to the engine (e.g. ``root`` for tests). Returns the engine's
    result dict (changed, actions, diff, ...); raises what they raise."""
    if req.service_manager == "none":
        return background.apply(req, check_mode=check_mode, **kwargs)
    return engine.apply(req, check_mode=check_mode, **kwargs)


def request_from_args(args: argparse.Namespace, command: list[str]) -> Request:
    """The engine request of ``obsctl systemd install``: nothing is written.

    Credentials (the driver's shape): ``--credentials-from env|stdin`` (or one of its variables set) are
    read now and stored as a systemd credential; ``profile`` stays a profile.

    Raises:
        ConfigError: invalid name, spec or telemetry, or no credentials where they were asked for.
    """
    if not args.name:
        raise ConfigError("obsctl systemd install needs --name NAME (it names obsctl-mount@NAME.service)")
    check_name(args.name)
    spec = mount_spec_from_args(args, command)
    source_of_creds = args.credentials_from
    creds = None
    credentials_from = spec.credentials_from if spec.credentials_from in ("env", "profile") else None
    shape = get_driver(spec.impl).credentials
    if shape is not None:
        if source_of_creds in ("env", "stdin") or (
                source_of_creds is None and any(os.environ.get(name) for name in shape.names)):
            found = creds_mod.resolve(source_of_creds or "env", shape=shape)
            creds = engine.Credentials(access_key_id=found.access_key_id or None,
                                       secret_access_key=found.secret_access_key or None,
                                       session_token=found.session_token or None, variables=dict(found.extra))
        elif source_of_creds is None and spec.credentials_from == "env" and not args.config and shape.required:
            raise ConfigError(
                f"no {shape.what}: set {' / '.join(shape.required)}, or pass "
                "--credentials-from stdin (KEY=VALUE lines) or --credentials-from profile --profile P")
    telemetry = None
    if args.otel_endpoint or args.otel_protocol:
        if not args.otel_endpoint:
            raise ConfigError("--otel-protocol needs --otel-endpoint with obsctl systemd install")
        telemetry = {"mode": "remote", "otlp_endpoint": args.otel_endpoint,
                     "otlp_protocol": args.otel_protocol or "grpc", "service_name": "obsctl-mount"}
        parse_telemetry(tomlio.parse(tomlio.render_telemetry(telemetry)), "--otel-endpoint")
    return Request(
        name=args.name, state="mounted", src=spec.source, path=spec.mountpoint, impl=spec.impl,
        endpoint=spec.endpoint, region=spec.region, profile=spec.profile, options=list(spec.options),
        cache_mode=spec.cache_mode, command=list(spec.command) or None, credentials=creds,
        credentials_from=credentials_from, read_only=spec.read_only, allow_other=spec.allow_other,
        allow_non_empty=spec.allow_non_empty, ready_timeout=spec.ready_timeout_seconds,
        stall_timeout=spec.stall_timeout_seconds, telemetry_config=spec.telemetry_config,
        max_restarts=spec.max_restarts, telemetry=telemetry, install_units=True, health_timer=True)


def _print_actions(result: dict[str, Any], out: Callable[[str], None]) -> None:
    for action in result["actions"]:
        out(f"obsctl: {action}")
    for warning in result["warnings"]:
        out(f"obsctl: warning: {warning}")


def cmd_install(args: argparse.Namespace, command: list[str]) -> int:
    """``obsctl systemd install [mount options] --name NAME SRC MOUNTPOINT``. Returns the exit status."""
    if os.geteuid() != 0:
        print("obsctl: systemd install needs root (it writes /etc and runs systemctl)", file=sys.stderr)
        return EXIT_USAGE
    try:
        req = request_from_args(args, command)
        result = apply_request(req)
    except ConfigError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (EngineError, OSError) as exc:
        print(f"obsctl: install of {args.name} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_actions(result, print)
    print(f"obsctl: {req.src} is mounted on {result['mount']['mountpoint']} by obsctl-mount@{req.name}.service; "
          f"health check every 5 minutes by obsctl-mount@{req.name}.timer")
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    """``obsctl systemd uninstall --name NAME``. Returns the exit status."""
    try:
        check_name(args.name)
    except ConfigError as exc:
        print(f"obsctl: --{exc}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("obsctl: systemd uninstall needs root", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = apply_request(Request(name=args.name, state="absent"))
    except (EngineError, OSError) as exc:
        print(f"obsctl: uninstall of {args.name} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_actions(result, print)
    print(f"obsctl: {args.name} removed" if result["changed"]
          else f"obsctl: no mount called {args.name}: nothing to remove")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, stdin: Any = None, stdout: Any = None) -> int:
    """``obsctl systemd apply --json [--check] [--diff]``: request on stdin, result on stdout.

    Returns the exit status (0 done, 1 failed, 2 invalid request); stdout holds one JSON
    object in every case (``diff`` only with ``--diff``).
    """
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    code, result = EXIT_OK, None
    try:
        req = engine.decode_request(stdin.read())
        result = apply_request(req, check_mode=args.check)
        if not args.diff:
            result.pop("diff", None)
    except ConfigError as exc:
        code, result = EXIT_USAGE, {"failed": True, "msg": str(exc), "invalid": True}
    except EngineError as exc:
        code, result = EXIT_FAILED, {"failed": True, "msg": exc.msg, **exc.details}
    except OSError as exc:
        code, result = EXIT_FAILED, {"failed": True, "msg": f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")}
    stdout.write(json.dumps(result) + "\n")
    stdout.flush()
    return code


# --------------------------------------------------------------------------
# check (the timer's health check)


def _failed_for_good(run: Runner, unit: str) -> bool:
    """True when ``unit``'s main process last exited :data:`~obsctl.errors.EXIT_PERMANENT`
    (``systemctl show --property=ExecMainStatus``: the exit status of the last run)."""
    rc, out, _err = run(["systemctl", "show", "--property=ExecMainStatus", unit])
    return rc == 0 and out.strip() == f"ExecMainStatus={EXIT_PERMANENT}"


def check(name: str, root: Path = Path("/"), run: Runner = run_command, out: Callable[[str], None] = print,
          probe_timeout: float = 5.0, settle_seconds: float = health.SETTLE_SECONDS,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """``obsctl systemd check --name NAME``: health check of mount ``name`` (the timer's); repairs what it can.

    Returns the exit status (0 / 1 / 2, as the rest of the CLI). The mount's health is
    :func:`obsctl.health.probe`'s word (``probe_timeout`` s), the one ``obsctl status``
    and the fuse_mount_info module report:

    * unit active, mount ``ok``: nothing to do (0);
    * unit active, mount ``stale`` (driver gone), ``hung`` (no answer) or
      ``missing``: ``systemctl restart`` -- obsctl unmounts the dead mount
      lazily and mounts again (0 when the mount answers within
      ``settle_seconds``, :func:`obsctl.health.wait_until_ok`, else 1);
    * unit ``failed`` (systemd gave up after its start limit):
      ``reset-failed`` + ``start`` (0 / 1 the same way), unless its last run
      exited :data:`~obsctl.errors.EXIT_PERMANENT` (credentials refused, no such
      bucket): then it is left failed (1), so a revoked key is not retried
      every interval forever;
    * unit inactive: stopped on purpose, left alone (0).
    """
    try:
        check_name(name)
        layout = Layout(name, root)
        spec = load_mount_spec(layout.spec)
    except ConfigError as exc:
        out(f"obsctl: {exc}")
        return EXIT_USAGE
    state = unit_state(run, layout.unit)["active_state"]
    if state in ("activating", "deactivating", "reloading"):
        out(f"obsctl: {layout.unit} is {state}; checking again next time")
        return EXIT_OK
    if state == "inactive":
        out(f"obsctl: {layout.unit} is stopped; left alone")
        return EXIT_OK
    word = health.probe(spec.mountpoint, probe_timeout) if state == "active" else "n/a"
    if state == "active" and word == health.OK:
        out(f"obsctl: {spec.mountpoint} is healthy")
        return EXIT_OK
    if state == "failed" and _failed_for_good(run, layout.unit):
        out(f"obsctl: {layout.unit} failed for a permanent reason (exit status {EXIT_PERMANENT}: credentials "
            "refused or no such bucket); left alone: fix it, then systemctl restart " + layout.unit)
        return EXIT_FAILED
    if state == "failed":
        out(f"obsctl: {layout.unit} failed; starting it again")
        run(["systemctl", "reset-failed", layout.unit])
        rc, _out, _err = run(["systemctl", "start", layout.unit])
    else:
        out(f"obsctl: {spec.mountpoint} is {word} while {layout.unit} runs; remounting")
        rc, _out, _err = run(["systemctl", "restart", layout.unit])
    word = health.MISSING
    if rc == 0:
        word = health.wait_until_ok(lambda: health.probe(spec.mountpoint, probe_timeout), settle_seconds, sleep)
    if rc == 0 and word == health.OK:
        out(f"obsctl: {spec.mountpoint} is mounted again")
        return EXIT_OK
    out(f"obsctl: repair of {spec.mountpoint} failed (mount {word}); last log lines:\n"
        + "\n".join(journal_tail(run, layout.unit)))
    return EXIT_FAILED
