"""The ``obsctl`` command line.

    obsctl mount s3://BUCKET[/PREFIX] MOUNTPOINT [options] [-- COMMAND ARGS...]
    obsctl unmount MOUNTPOINT
    obsctl status [--json]
    obsctl top [--once] [--json] [--interval S] [--wait S]
    obsctl config check [--app-profile NAME] PATH
    obsctl sidecar --pid PID --mountpoint P [--impl X] [--rc-url URL]
    obsctl systemd install|uninstall|apply|check ...

Exit status (:data:`obsctl.errors.EXIT_OK` ...): 0 success (also a mount stopped
by SIGTERM before it was ready); 1 the mount failed or a command could not do
its job; 2 bad usage, an invalid config file or an unusable mountpoint
(missing, a symlink, not a directory, not empty, a system directory, already
mounted, claimed or run by a live obsctl): nothing was started; 3 (``obsctl mount``)
the mount failed for a permanent reason (credentials refused, no such bucket):
not retried. Output into a closed pipe ends quietly with status 1 (no traceback).
What happens on each fault: docs/operations.md.

Only the standard library, msgspec and obsctl's light modules are imported
before the driver is spawned; the OpenTelemetry SDK comes later
(:meth:`obsctl.observer.MountObserver.start`); rich only with ``obsctl top``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Sequence

from obsctl import __version__, credentials, mounttable, scrape, statefile, tomlio
from obsctl.config import (
    DEFAULT_STALL_SECONDS, ConfigError, TelemetryConfig, default_telemetry_path, load_telemetry, parse_telemetry,
)
from obsctl.drivers import get_driver
from obsctl.errors import EXIT_FAILED, EXIT_OK, EXIT_PERMANENT, EXIT_USAGE
from obsctl.mountargs import add_mount_arguments, mount_spec_from_args
from obsctl.mountspec import check_file
from obsctl.paths import runtime_dir
from obsctl.procutil import pid_running
from obsctl.sidecar import Sidecar
from obsctl.supervisor import MountError, Supervisor
from obsctl.unmount import nested_mounts, recover_orphan


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obsctl", description="Mount object storage with FUSE and export what the mount does over OpenTelemetry.")
    parser.add_argument("--version", action="version", version=f"obsctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = sub.add_parser("mount", help="mount a bucket and supervise the driver in the foreground",
                           description="Run a FUSE driver in the foreground until SIGTERM/SIGINT, with telemetry. "
                                       "Anything after -- is the daemon's command line (--impl generic).")
    add_mount_arguments(mount)

    unmount = sub.add_parser("unmount", help="stop a mount that obsctl started")
    unmount.add_argument("mountpoint")
    unmount.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")

    sidecar = sub.add_parser("sidecar", help="observe a FUSE mount that something else started",
                             description="Run the collectors and telemetry of obsctl mount against a driver "
                                         "started elsewhere (fstab, another tool); nothing is spawned or unmounted.")
    sidecar.add_argument("--pid", type=int, required=True, help="the FUSE daemon's process id")
    sidecar.add_argument("--mountpoint", required=True, help="where it is mounted")
    sidecar.add_argument("--impl", default="generic", help="driver label (rclone, s3fs, generic ...)")
    sidecar.add_argument("--source", default="", help="s3://BUCKET[/PREFIX] (the bucket label), or any text")
    sidecar.add_argument("--rc-url", help="rclone's --rc-addr URL (user/password from RCLONE_RC_USER/RCLONE_RC_PASS)")
    sidecar.add_argument("--otel-endpoint", help="export to this OTLP endpoint (mode remote)")
    sidecar.add_argument("--otel-protocol", choices=["grpc", "http/protobuf"], help="OTLP protocol (default grpc)")
    sidecar.add_argument("--telemetry-config", help="telemetry TOML (default /etc/obsctl/telemetry.toml if present)")
    sidecar.add_argument("--stall-timeout", type=_positive_seconds, default=DEFAULT_STALL_SECONDS,
                         help="seconds FUSE requests may wait unanswered before the mount reads 'stalled' "
                              f"(default {DEFAULT_STALL_SECONDS:g})")

    top = sub.add_parser("top", help="live view of every obsctl mount: MiB/s, ops/s, latency, errors",
                         description="Refresh every INTERVAL s from the state files of obsctl status. "
                                     "Ctrl-C quits.")
    top.add_argument("--once", action="store_true", help="print one frame and exit (plain text when piped)")
    top.add_argument("--json", action="store_true", help="print the rows as JSON and exit (implies --once)")
    top.add_argument("--interval", type=_positive_seconds, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--wait", type=_positive_seconds, default=5.0,
                     help="--once: seconds to wait at most for each mount's next state write (default 5)")

    status = sub.add_parser("status", help="every mount this host's obsctl runs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--all", action="store_true",
                        help="every FUSE mount on the host (obsctl's or not) and configured obsctl mounts "
                             "that are missing: driver, pid, unit, health, waiting requests")
    status.add_argument("--stat-timeout", type=_positive_seconds, default=5.0,
                        help="--all: seconds a mount has to answer the health probe (default 5)")
    status.add_argument("--mountinfo", default="/proc/self/mountinfo", help=argparse.SUPPRESS)

    systemd = sub.add_parser("systemd", help="run mounts as systemd units without Ansible")
    systemd_sub = systemd.add_subparsers(dest="systemd_command", required=True, metavar="SUBCOMMAND")
    install = systemd_sub.add_parser(
        "install", help="write the mount spec and units, enable and start obsctl-mount@NAME",
        description="Render the same templates/ files as the Ansible roles, write /etc/obsctl/mounts/NAME.toml, "
                    "enable and start obsctl-mount@NAME.service and its health-check timer.")
    add_mount_arguments(install)
    uninstall = systemd_sub.add_parser("uninstall", help="stop, disable and remove obsctl-mount@NAME")
    uninstall.add_argument("--name", required=True, help="the mount name given to install")
    apply = systemd_sub.add_parser(
        "apply", help="converge one mount to a desired state given as JSON on stdin (the fuse_mount module's call)",
        description="Read one request object (name, state, src, path, impl, credentials, ...: obsctl.engine.Request) "
                    "as JSON on stdin, converge, print the result as JSON. Secrets go on stdin, never in argv.")
    apply.add_argument("--json", action="store_true", required=True, help="JSON in, JSON out (required)")
    apply.add_argument("--check", action="store_true", help="check mode: compute the changes, make none")
    apply.add_argument("--diff", action="store_true", help="include the before/after texts (secrets redacted)")
    check_mount = systemd_sub.add_parser(
        "check", help="health-check obsctl-mount@NAME; restart it when its mount is stale or missing")
    check_mount.add_argument("--name", required=True, help="the mount name")

    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser(
        "check", help="validate a telemetry or mount spec TOML file, or an application's [telemetry]",
        description="Validate obsctl's telemetry config or a mount spec; with --app-profile, the [telemetry] "
                    "tables of an application's own TOML (a node's config.toml) against that application's "
                    "profile: unknown keys refused at every level, types checked; its other tables are the "
                    "application's and are not checked.")
    check.add_argument("--app-profile", metavar="NAME",
                       help="application profile (e.g. rust-dkg-engine, rollout-plan: the files of "
                            "plugins/module_utils/app_profiles)")
    check.add_argument("path")
    return parser


def _positive_seconds(text: str) -> float:
    """argparse type of ``obsctl top --interval/--wait``: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (example: 0.5)") from None
    if not 0 < value < float("inf"):  # also false for nan
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds greater than 0")
    return value


def _telemetry(args: argparse.Namespace, path: str | None) -> Any:
    if path:
        cfg = load_telemetry(path)
    elif default_telemetry_path().exists():
        cfg = load_telemetry(default_telemetry_path())
    else:
        cfg = TelemetryConfig()
    if args.otel_endpoint or args.otel_protocol:
        data = cfg.model_dump()
        if args.otel_endpoint:
            data["mode"] = "remote"
            for signal_name in ("metrics", "traces"):
                data[signal_name]["otlp_endpoint"] = args.otel_endpoint
        if args.otel_protocol:
            for signal_name in ("metrics", "traces"):
                data[signal_name]["otlp_protocol"] = args.otel_protocol
        cfg = parse_telemetry({"telemetry": data}, "--otel-endpoint")
    return cfg


def cmd_mount(args: argparse.Namespace, command: list[str]) -> int:
    """``obsctl mount``: see :class:`obsctl.supervisor.Supervisor`."""
    try:
        spec = mount_spec_from_args(args, command)
        telemetry = _telemetry(args, spec.telemetry_config)
        driver = get_driver(spec.impl)
        missing = driver.missing_binary(spec)
        if missing:  # before credentials are read and before anything is started (docs/operations.md)
            print(f"obsctl: mount failed: {missing}", file=sys.stderr)
            print(f"obsctl: nothing is mounted at {spec.mountpoint}", file=sys.stderr)
            return EXIT_FAILED
        creds = (credentials.resolve(spec.credentials_from, spec.profile, driver.credentials)
                 if driver.credentials is not None else None)
    except ConfigError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    supervisor = Supervisor(spec, telemetry, creds, runtime_dir(), driver,
                            telemetry_loader=lambda: _telemetry(args, spec.telemetry_config))
    supervisor.install_signal_handlers()
    try:
        return supervisor.run()
    except MountError as exc:
        print(f"obsctl: mount failed: {exc}", file=sys.stderr)
        print(f"obsctl: nothing is mounted at {spec.mountpoint}", file=sys.stderr)
        if getattr(exc, "permanent", False):
            print("obsctl: a permanent error (credentials refused or no such bucket): not retried; "
                  "fix it and mount again", file=sys.stderr)
            return EXIT_PERMANENT
        return EXIT_FAILED
    except ConfigError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_sidecar(args: argparse.Namespace) -> int:
    """``obsctl sidecar``: see :class:`obsctl.sidecar.Sidecar`."""
    try:
        sidecar = Sidecar(args.pid, args.mountpoint, args.impl, args.source or args.mountpoint,
                          _telemetry(args, args.telemetry_config), runtime_dir(), rc_url=args.rc_url,
                          stall_seconds=args.stall_timeout,
                          telemetry_loader=lambda: _telemetry(args, args.telemetry_config))
        return sidecar.run()
    except ConfigError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _report(items: list[dict[str, Any]], as_json: bool, empty: str,
            header: Sequence[str], row: Any) -> int:
    """Print ``items`` as indented JSON, or ``empty``, or a left-aligned table of ``header``
    and ``row(item)`` (a tuple of strings per item). Returns EXIT_OK."""
    if as_json:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    if not items:
        print(empty)
        return EXIT_OK
    rows = [tuple(header), *(row(item) for item in items)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for line in rows:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return EXIT_OK


def cmd_status_all(args: argparse.Namespace) -> int:
    """``obsctl status --all [--json]``: :func:`obsctl.inventory.fuse_mount_info`."""
    from obsctl import inventory  # start-up cost: tomlkit (it reads the mount specs), kept off obsctl mount's path

    try:
        mounts = inventory.fuse_mount_info(mountinfo_path=args.mountinfo, stat_timeout=args.stat_timeout)
    except (OSError, ValueError) as exc:
        print(f"obsctl: cannot read the mount table {args.mountinfo}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    keys = ("name", "mountpoint", "source", "driver", "health", "pid", "unit", "waiting")
    return _report(mounts, args.json, "no FUSE mounts on this host", [k.upper() for k in keys],
                   lambda m: tuple("-" if m[k] is None else str(m[k]) for k in keys))


def cmd_status(args: argparse.Namespace) -> int:
    """``obsctl status [--json]``."""
    if args.all:
        return cmd_status_all(args)
    try:
        states = statefile.read_states(runtime_dir(), strict=True)
    except OSError as exc:
        print(f"obsctl: cannot read the mount states in {runtime_dir()}/mounts: {exc.strerror or exc} "
              "(set OBSCTL_RUNTIME_DIR to obsctl's runtime directory)", file=sys.stderr)
        return EXIT_FAILED

    def row(s: dict[str, Any]) -> tuple[str, ...]:
        export = s.get("last_export") or {}
        when = export.get("time")
        last = f"{export.get('result', 'none')}" + (f" {time.strftime('%H:%M:%S', time.localtime(when))}" if when else "")
        return (s.get("name") or "-", s.get("mountpoint", ""), s.get("source", ""), s.get("impl", ""),
                s.get("state", ""), s.get("health") or "-", str(s.get("pid", "")), str(s.get("driver_pid") or "-"),
                _human(s.get("read_bytes", 0)), _human(s.get("write_bytes", 0)), str(s.get("errors", 0)), last)

    for pid in statefile.unlisted_claims(runtime_dir(), states):
        print(f"obsctl: obsctl (pid {pid}) runs a mount whose state file could not be written (is "
              f"{runtime_dir()} full or read-only?); `obsctl unmount MOUNTPOINT` still stops it", file=sys.stderr)
    return _report(states, args.json, "no mounts run by obsctl on this host",
                   ("NAME", "MOUNTPOINT", "SOURCE", "IMPL", "STATE", "HEALTH", "PID", "DRIVER", "READ", "WRITTEN",
                    "ERRORS", "LAST EXPORT"), row)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_unmount(args: argparse.Namespace) -> int:
    """``obsctl unmount MOUNTPOINT``: stop the obsctl mount there.

    A live supervisor gets SIGTERM and is waited for (``--timeout``). A mount
    whose supervisor is dead (killed, crashed) is recovered here: its driver,
    if still the recorded process, is stopped, what is left mounted is
    unmounted (busy: retried, then detached lazily) and its state file is
    removed. Exit 0 when nothing is mounted there afterwards, 1 otherwise.
    """
    target = os.path.normpath(os.path.abspath(args.mountpoint))
    inside = nested_mounts(target)
    if inside and mounttable.find_mount(target) is not None:
        print(f"obsctl: not unmounting {target}: other mounts are inside it ({', '.join(inside)}); unmounting "
              "it would detach them too. Unmount those first (obsctl unmount PATH)", file=sys.stderr)
        return EXIT_FAILED
    scrape.remove_publication(runtime_dir(), target)  # a failed mount's last obsctl_mount_up 0, if any
    state = statefile.state_for(runtime_dir(), target)
    holder = statefile.claim_holder(runtime_dir(), target)
    if state is None and holder is not None:
        # it runs but could not write its state file (runtime dir full or read-only): its claim names it
        state = {"pid": holder, "state": "ready", "mountpoint": target}
    if state is None:
        mounted = mounttable.find_mount(target)
        hint = (f"; it is a {mounted.fstype} mount obsctl did not start: use fusermount3 -u {target}"
                if mounted else "; nothing is mounted there")
        print(f"obsctl: no obsctl mount at {target}{hint}", file=sys.stderr)
        return EXIT_FAILED
    if "observing" in (state.get("state"), state.get("last_state")):
        if state.get("state") == "dead":
            statefile.remove_state(str(state["state_file"]))
        print(f"obsctl: {target} is only observed by obsctl sidecar (pid {state['pid']}); "
              "unmount it with what started it", file=sys.stderr)
        return EXIT_FAILED
    if state.get("state") == "dead":
        try:
            done = recover_orphan(state)
        except RuntimeError as exc:
            print(f"obsctl: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"obsctl: recovered {target} left by a dead obsctl (pid {state.get('pid')}): {', '.join(done)}")
        return EXIT_OK
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):
            break
        time.sleep(0.05)
    else:
        print(f"obsctl: supervisor {pid} did not exit within {args.timeout:g} s", file=sys.stderr)
        return EXIT_FAILED
    if mounttable.find_mount(target) is not None:
        print(f"obsctl: {target} is still mounted after obsctl exited", file=sys.stderr)
        return EXIT_FAILED
    print(f"obsctl: unmounted {target}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    """``obsctl config check [--app-profile NAME] PATH``: 0 and a summary, or 2 and what is wrong.

    With ``--app-profile`` the file is an application's own TOML: its
    ``[telemetry]`` is checked by :func:`obsctl.tomlio.check_text` (the one
    profile check, also run by the filter merge_telemetry_toml on the
    controller), and by obsctl's own parser when the profile has ``parser =
    "obsctl"``. This is the ``validate:`` of role telemetry_config.
    """
    if args.app_profile is not None:
        try:
            with open(args.path, "rb") as handle:
                text = handle.read().decode("utf-8")
            print(tomlio.check_text(text, args.app_profile, args.path, validate=parse_telemetry))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"obsctl: cannot read {args.path}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except tomlio.TomlWriteError as exc:
            print(f"obsctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    try:
        print(check_file(args.path))
    except ConfigError as exc:
        print(f"obsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


class _OneLineFormatter(logging.Formatter):
    """Log records as one line: an exception becomes ``(ExcType: message)``, never a traceback.

    Tracebacks are for debugging: with OBSCTL_LOG_LEVEL=DEBUG they are kept.
    """

    def __init__(self, fmt: str, keep_tracebacks: bool) -> None:
        super().__init__(fmt)
        self.keep_tracebacks = keep_tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not self.keep_tracebacks:
            exc = record.exc_info[1]
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
        return super().format(record)


def _setup_logging(level: str) -> None:
    """stderr logging at ``level``; no traceback from any thread unless DEBUG.

    Exceptions that escape a background thread (an exporter's, a server's)
    are logged as one line too, through ``threading.excepthook``.
    """
    debug = level == "DEBUG"
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter("obsctl: %(levelname)s: %(name)s: %(message)s", debug))
    logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else "WARNING",
                        handlers=[handler])
    if not debug:
        def _thread_error(hook_args: Any) -> None:
            if hook_args.exc_type is SystemExit:
                return
            thread = hook_args.thread.name if hook_args.thread else "?"
            logging.getLogger("obsctl").warning("thread %s failed: %s: %s", thread,
                                                hook_args.exc_type.__name__, hook_args.exc_value)

        threading.excepthook = _thread_error


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``obsctl`` console script. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    _setup_logging(os.environ.get("OBSCTL_LOG_LEVEL", "WARNING").upper())
    args = _parser().parse_args(argv)
    if command and args.command not in ("mount", "systemd"):
        print("obsctl: a command after -- is only for obsctl mount --impl generic", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "mount":
        code = cmd_mount(args, command)
        # Everything is unmounted and exported by now. Skip the interpreter's
        # teardown (gRPC channels, thread joins, module GC): it adds ~0.1 s to
        # every stop and can only block, never change the outcome.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    try:
        code = _dispatch(args, command)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader of stdout went away (`obsctl status --json | head`): exit quietly, as the
        # Python documentation recommends (https://docs.python.org/3/library/signal.html,
        # "Note on SIGPIPE"): point stdout at /dev/null so the flush at exit cannot raise again,
        # exit 1. SIGPIPE is not set to SIG_DFL: a broken socket would kill the process.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace, command: list[str]) -> int:
    """Run every command but ``mount`` (which never returns: :func:`main`)."""
    if args.command == "status":
        return cmd_status(args)
    if args.command == "top":
        from obsctl import top  # start-up cost: rich, only for obsctl top
        return top.run(once=args.once, as_json=args.json, interval=args.interval, wait=args.wait)
    if args.command == "sidecar":
        return cmd_sidecar(args)
    if args.command == "unmount":
        return cmd_unmount(args)
    if args.command == "config":
        return cmd_config_check(args)
    if args.command == "systemd":
        # start-up cost: the engine (its unit files, jinja2 at render time), only for obsctl systemd
        from obsctl import systemd_units
        if args.systemd_command == "install":
            return systemd_units.cmd_install(args, command)
        if args.systemd_command == "apply":
            return systemd_units.cmd_apply(args)
        if args.systemd_command == "check":
            return systemd_units.check(args.name)
        return systemd_units.cmd_uninstall(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
