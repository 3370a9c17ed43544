"""The mount options of ``obsctl mount`` and ``obsctl systemd install``, and the spec they build.

Shared by :mod:`obsctl.cli` and :mod:`obsctl.systemd_units` (neither imports the other
for it): the same flags, the same validation (:func:`obsctl.mountspec.build_mount_spec`).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from obsctl.drivers import DRIVERS
from obsctl.errors import ConfigError
from obsctl.mountspec import build_mount_spec, load_mount_spec, with_options


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    """The mount options shared by ``obsctl mount`` and ``obsctl systemd install``."""
    forms: dict[str, list[str]] = {}
    for name, cls in DRIVERS.items():
        forms.setdefault(cls.source_form, []).append(name)
    parser.add_argument("source", nargs="?", help="the source as the driver reads it: " + "; ".join(
        f"{form} ({', '.join(names)})" for form, names in forms.items()))
    parser.add_argument("mountpoint", nargs="?", help="an existing empty directory (--allow-non-empty for one with entries)")
    parser.add_argument("--impl", choices=list(DRIVERS), help="FUSE driver (default rclone)")
    parser.add_argument("--endpoint", help="S3 endpoint URL (default: AWS)")
    parser.add_argument("--region", help="S3 region")
    parser.add_argument("--profile", help="AWS shared-credentials profile (with --credentials-from profile)")
    parser.add_argument("--credentials-from", choices=["env", "stdin", "profile", "systemd"],
                        help="where the S3 credentials come from (default env)")
    parser.add_argument("--otel-endpoint", help="export metrics and spans to this OTLP endpoint (mode remote)")
    parser.add_argument("--otel-protocol", choices=["grpc", "http/protobuf"], help="OTLP protocol (default grpc)")
    parser.add_argument("--telemetry-config", help="telemetry TOML (default /etc/obsctl/telemetry.toml if present)")
    parser.add_argument("--config", help="mount spec TOML; command-line values override it")
    parser.add_argument("-o", dest="options", action="append", metavar="OPTION",
                        help="driver option (repeatable; comma lists allowed): ro, allow_other, key=value")
    parser.add_argument("--read-only", action="store_true", default=None, help="mount read-only")
    parser.add_argument("--allow-other", action="store_true", default=None, help="let other users use the mount")
    parser.add_argument("--allow-non-empty", action="store_true", default=None,
                        help="mount over a directory that has entries (hidden while mounted; refused without it)")
    parser.add_argument("--cache-mode", choices=list(dict.fromkeys(m for cls in DRIVERS.values() for m in cls.cache_modes)),
                        help="the driver's cache mode (" + ", ".join(
                            n for n, cls in DRIVERS.items() if cls.cache_modes) + ")")
    parser.add_argument("--ready-timeout", type=float, help="seconds to wait for the mount (default 30)")
    parser.add_argument("--stall-timeout", type=float,
                        help="seconds FUSE requests may wait unanswered before the mount reads 'stalled' "
                             "(obsctl_mount_up 0; default 60)")
    parser.add_argument("--name", help="mount name (labels, status)")


def split_options(values: Sequence[str] | None) -> list[str]:
    """The ``-o`` values, comma lists split: ``["ro,allow_other", "x=1"]`` -> ``["ro", "allow_other", "x=1"]``."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def mount_spec_from_args(args: argparse.Namespace, command: list[str]) -> Any:
    """The validated :class:`obsctl.config.MountSpec` of the command line (``--config`` file
    first, the flags over it); ``command``: the argv after ``--`` (generic driver).

    Raises:
        obsctl.config.ConfigError: invalid spec, or no SOURCE / MOUNTPOINT without ``--config``.
    """
    options = split_options(args.options)
    read_only = args.read_only or ("ro" in options) or None
    allow_other = args.allow_other or ("allow_other" in options) or None
    options = [o for o in options if o not in ("ro", "rw", "allow_other")]
    overrides = {
        "source": args.source, "mountpoint": args.mountpoint, "impl": args.impl,
        "endpoint": args.endpoint, "region": args.region, "profile": args.profile,
        "credentials_from": args.credentials_from, "read_only": read_only,
        "allow_other": allow_other, "allow_non_empty": args.allow_non_empty, "cache_mode": args.cache_mode,
        "ready_timeout_seconds": args.ready_timeout, "stall_timeout_seconds": args.stall_timeout, "name": args.name,
        "telemetry_config": args.telemetry_config,
    }
    if command:
        overrides["command"] = command
    if args.config:
        spec = load_mount_spec(args.config, overrides)
        if options:
            spec = with_options(spec, options)
        return spec
    if not args.source or not args.mountpoint:
        raise ConfigError("mount needs SOURCE and MOUNTPOINT (or --config MOUNT.toml)")
    data = {k: v for k, v in overrides.items() if v is not None}
    data["options"] = options
    return build_mount_spec(data)
