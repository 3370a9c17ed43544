"""The rules that join a mount spec and its driver: the one way to a validated :class:`~obsctl.config.MountSpec`.

The schema (:mod:`obsctl.config`) checks what a spec says on its own (types,
keys, endpoint URL, mountpoint); this module adds what only the driver
registry (:mod:`obsctl.drivers`) knows: that ``impl`` names a driver, that
the spec suits it (its source form, command, cache mode, credential source:
:meth:`obsctl.drivers.Driver.check_spec`) and that the driver accepts
``options`` (:meth:`obsctl.drivers.Driver.check_options`).
Every caller (``obsctl mount``, ``obsctl systemd``, ``obsctl config check``,
the engine behind the fuse_mount module) builds specs here.
"""

from __future__ import annotations

import os
from typing import Any

from obsctl.config import MountSpec, convert_mount_spec, parse_telemetry, read_mount_spec, read_toml
from obsctl.drivers import DRIVERS, get_driver
from obsctl.errors import ConfigError


def check_with_driver(spec: MountSpec, origin: str = "command line") -> MountSpec:
    """``spec`` when its driver exists and accepts its options.

    Raises:
        ConfigError: ``{origin}: invalid configuration:`` and ``impl 'x' is not a driver obsctl
            knows: use one of ...`` (the registry's names), or the driver's refused options.
    """
    if spec.impl not in DRIVERS:
        raise ConfigError(
            f"{origin}: invalid configuration:\n  impl {spec.impl!r} is not a driver obsctl knows: use one of "
            f"{', '.join(DRIVERS)} (or impl = \"generic\" with the daemon's foreground command line)")
    driver = get_driver(spec.impl)
    problems = driver.check_spec(spec)
    if spec.command and not driver.takes_command:
        problems.append(f"a command after -- is only for --impl "
                        f"{' / '.join(name for name, cls in DRIVERS.items() if cls.takes_command)}, not {spec.impl}")
    if problems:
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems))
    if spec.options:
        try:
            driver.check_options(spec.options)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: invalid configuration:\n  {exc}") from None
    return spec


def build_mount_spec(data: dict[str, Any], origin: str = "command line") -> MountSpec:
    """Validate a mount spec given as a dict (the schema, then :func:`check_with_driver`).

    Raises:
        ConfigError: the message names ``origin``, the key and how to fix it.
    """
    return check_with_driver(convert_mount_spec(data, origin), origin)


def load_mount_spec(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> MountSpec:
    """Read a mount spec TOML file, apply command-line ``overrides``, validate.

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key, or a value
            that fails validation (the message names the key).
    """
    return build_mount_spec(read_mount_spec(path, overrides), str(path))


def with_options(spec: MountSpec, options: list[str]) -> MountSpec:
    """``spec`` with ``options`` appended, validated again (schema and driver).

    Raises:
        ConfigError: a refused option.
    """
    return check_with_driver(spec.model_copy(update={"options": [*spec.options, *options]}))


def check_file(path: str | os.PathLike[str]) -> str:
    """Validate a telemetry or mount spec file; return what it is.

    A file with a ``[telemetry]`` table is a telemetry config, one with a
    ``source`` key a mount spec. Returns a one-line summary.

    Raises:
        ConfigError: the file is neither or is invalid.
    """
    data = read_toml(path)
    if "telemetry" in data:
        cfg = parse_telemetry(data, str(path))
        return f"{path}: valid telemetry config (mode {cfg.mode})"
    if "source" in data or "mountpoint" in data:
        spec = build_mount_spec(data, str(path))
        return f"{path}: valid mount spec ({spec.source} on {spec.mountpoint}, {spec.impl})"
    raise ConfigError(
        f"{path}: neither a telemetry config (no [telemetry] table) "
        "nor a mount spec (no source / mountpoint keys)")
