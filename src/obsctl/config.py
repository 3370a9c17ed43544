"""Telemetry TOML and mount spec TOML: parsing, validation, clear errors.

Two files (DESIGN section 3):

* the telemetry config, ``/etc/obsctl/telemetry.toml``: a ``[telemetry]``
  table with ``mode`` (none | remote | local) and the nested tables
  ``[telemetry.resource]``, ``[telemetry.traces]``, ``[telemetry.metrics]``;
* the mount spec, ``/etc/obsctl/mounts/NAME.toml``: flat keys (source,
  mountpoint, impl, endpoint, region, profile, credentials_from, read_only,
  allow_other, allow_non_empty, cache_mode, options, ready_timeout_seconds,
  stall_timeout_seconds, telemetry_config, max_restarts).
  No secret is ever read from it.

Validation is msgspec's (typed Structs with constraints, about a third of
pydantic's import time and memory, which matters because this module is
imported before the driver is spawned and stays resident for the life of
every mount); every failure is turned into :class:`ConfigError` whose message
names the file, the table and key, what was wrong and how to fix it. Nothing
here touches the network or the mount table.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from obsctl.errors import ConfigError  # noqa: F401  (re-exported: callers of the schema catch it from here)
from obsctl.paths import system_path

#: Default OTLP/gRPC endpoint of the local collector (mode = "local").
LOCAL_OTLP_ENDPOINT = "http://127.0.0.1:4317"

#: Keys that used to sit directly under [telemetry] -> the table they moved to.
LEGACY_TELEMETRY_KEYS = {
    "enabled": "[telemetry.metrics] enabled (and [telemetry.traces] enabled)",
    "otlp_endpoint": "[telemetry.metrics] otlp_endpoint (and [telemetry.traces] otlp_endpoint)",
    "service_name": "[telemetry.resource] service_name",
    "export_interval_seconds": "[telemetry.metrics] export_interval_seconds",
    "bind_address": "[telemetry.metrics] bind_address",
}

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_endpoint(value: str | None, key: str = "otlp_endpoint",
                    example: str = "http://127.0.0.1:4317") -> str | None:
    """``value`` when it is an http(s) URL with a host (and a valid port, if any).

    Raises:
        ValueError: it is not; the message names ``key`` and gives ``example``.
    """
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{key} {value!r} is not an http:// or https:// URL with a host "
            f"(example: {example})")
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"{key} {value!r} has an invalid port: {exc}") from None
    return value


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of the config Structs: unknown keys are errors; pydantic-like helpers."""

    def model_dump(self) -> dict[str, Any]:
        """The Struct as plain dicts / lists / scalars."""
        return msgspec.to_builtins(self)

    def model_copy(self, update: dict[str, Any]) -> Any:
        """A validated copy with ``update`` applied. Raises :class:`ConfigError`."""
        return _convert({**self.model_dump(), **update}, type(self), "command line")


def _positive(le: float) -> Any:
    return Annotated[float, msgspec.Meta(gt=0, le=le)]


#: Most ``[telemetry.resource] attributes``: the OpenTelemetry SDK's default attribute count
#: limit (OTEL_ATTRIBUTE_COUNT_LIMIT, 128: opentelemetry-sdk 1.45.2,
#: opentelemetry/sdk/trace/__init__.py line 79 ``_DEFAULT_OTEL_ATTRIBUTE_COUNT_LIMIT``), which
#: the SDK does not apply to a Resource; obsctl does, since every attribute is repeated on the
#: Prometheus ``target_info`` line of every scrape and in every OTLP export.
MAX_RESOURCE_ATTRIBUTES = 128
#: Longest attribute key and value, in characters. OpenTelemetry sets no default value length
#: (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: no limit); this is obsctl's own bound, so the attributes
#: add at most 128 x 1,280 characters (~160 KB) to target_info, not megabytes.
MAX_ATTRIBUTE_KEY_LENGTH = 256
MAX_ATTRIBUTE_VALUE_LENGTH = 1024


class ResourceConfig(_Strict):
    """``[telemetry.resource]``: OpenTelemetry resource attributes (bounded: :data:`MAX_RESOURCE_ATTRIBUTES`,
    :data:`MAX_ATTRIBUTE_KEY_LENGTH`, :data:`MAX_ATTRIBUTE_VALUE_LENGTH`)."""

    service_name: str = "obsctl-mount"
    attributes: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.attributes) > MAX_RESOURCE_ATTRIBUTES:
            raise ValueError(
                f"attributes has {len(self.attributes)} entries; at most {MAX_RESOURCE_ATTRIBUTES} are allowed "
                "(the OpenTelemetry SDK's default attribute count limit): each one is sent with every export "
                "and on the target_info line of every scrape")
        for key, value in self.attributes.items():
            if len(key) > MAX_ATTRIBUTE_KEY_LENGTH or len(value) > MAX_ATTRIBUTE_VALUE_LENGTH:
                raise ValueError(
                    f"attributes {key[:40]!r}{'...' if len(key) > 40 else ''}: keys may have at most "
                    f"{MAX_ATTRIBUTE_KEY_LENGTH} characters and values {MAX_ATTRIBUTE_VALUE_LENGTH}")


Protocol = Literal["grpc", "http/protobuf"]


class SignalConfig(_Strict):
    """Common keys of ``[telemetry.traces]`` and ``[telemetry.metrics]``."""

    enabled: bool = True
    otlp_endpoint: str | None = None
    #: None: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
    otlp_protocol: Protocol | None = None
    #: Bound on one export (seconds), also the bound on the final export at
    #: shutdown: short, so an unreachable collector cannot hold a stop.
    export_timeout_seconds: _positive(60) = 3.0

    def __post_init__(self) -> None:
        _check_endpoint(self.otlp_endpoint)


class TracesConfig(SignalConfig):
    """``[telemetry.traces]``: lifecycle spans (mount, unmount, restart, driver exit)."""


class MetricsConfig(SignalConfig):
    """``[telemetry.metrics]``: the OTLP metric exporter and the Prometheus endpoint."""

    export_interval_seconds: _positive(3600) = 30.0
    #: "HOST:PORT" of the optional Prometheus scrape endpoint; None = off.
    bind_address: str | None = None
    #: Must be true for a bind_address that is not loopback (DESIGN section 7:
    #: exposing a port needs an explicit setting; the role's variable is
    #: ``telemetry_config_expose_prometheus``).
    expose_prometheus: bool = False
    #: Data points per instrument before the SDK folds the rest into the
    #: overflow series (OpenTelemetry SDK cardinality limit).
    cardinality_limit: Annotated[int, msgspec.Meta(ge=10, le=100000)] = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bind_address is not None:
            host, sep, port = self.bind_address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bind_address {self.bind_address!r} is not HOST:PORT (example: 127.0.0.1:9464)")
            if not self.bind_is_loopback and not self.expose_prometheus:
                raise ValueError(
                    f"bind_address {self.bind_address!r} is not a loopback address: the Prometheus endpoint "
                    "(metrics with bucket and mount names, no authentication, no TLS) would be reachable "
                    "from other hosts. Use 127.0.0.1:PORT, or set [telemetry.metrics] expose_prometheus = "
                    "true (role variable telemetry_config_expose_prometheus) to expose it on purpose")

    @property
    def bind_is_loopback(self) -> bool:
        """True when ``bind_address`` is None or names only the loopback interface
        (``localhost``, 127.0.0.0/8, ``::1``); a wildcard (``0.0.0.0``, ``::``) or any
        other host name or address is not."""
        if self.bind_address is None:
            return True
        host = self.bind_address.rpartition(":")[0].strip("[]")
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


class TelemetryConfig(_Strict):
    """``[telemetry]``: what is exported where (DESIGN section 3)."""

    mode: Literal["none", "remote", "local"] = "none"
    resource: ResourceConfig = msgspec.field(default_factory=ResourceConfig)
    traces: TracesConfig = msgspec.field(default_factory=TracesConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if self.mode == "remote":
            env = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            for table, signal in (("traces", self.traces), ("metrics", self.metrics)):
                specific = os.environ.get(f"OTEL_EXPORTER_OTLP_{table.upper()}_ENDPOINT")
                pull_only = table == "metrics" and self.metrics.bind_address
                if signal.enabled and not (signal.otlp_endpoint or env or specific or pull_only):
                    raise ValueError(
                        f'mode = "remote" needs [telemetry.{table}] otlp_endpoint '
                        f"(or OTEL_EXPORTER_OTLP_ENDPOINT), or [telemetry.{table}] enabled = false")

    def endpoint(self, signal: SignalConfig) -> str | None:
        """The endpoint to export ``signal`` to, or None to let OTEL_* env decide.

        ``local`` mode defaults to :data:`LOCAL_OTLP_ENDPOINT`.
        """
        if signal.otlp_endpoint:
            return signal.otlp_endpoint
        if self.mode == "local":
            return LOCAL_OTLP_ENDPOINT
        return None

    def protocol(self, signal: SignalConfig, name: str) -> str:
        """``grpc`` or ``http/protobuf``: the file, else OTEL_EXPORTER_OTLP_[NAME_]PROTOCOL, else grpc."""
        return (signal.otlp_protocol
                or os.environ.get(f"OTEL_EXPORTER_OTLP_{name.upper()}_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc")

    @property
    def exports_metrics(self) -> bool:
        """True when metrics leave the process (OTLP push or the Prometheus endpoint)."""
        return self.mode != "none" and self.metrics.enabled

    @property
    def pushes_metrics(self) -> bool:
        """True when an OTLP metric exporter is created: ``exports_metrics`` and an
        endpoint is known (from the file, ``local`` mode, or OTEL_EXPORTER_OTLP_*).
        ``remote`` mode with only ``bind_address`` is pull-only (Prometheus)."""
        return self.exports_metrics and bool(
            self.endpoint(self.metrics) or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))

    @property
    def exports_traces(self) -> bool:
        """True when an OTLP span exporter is created."""
        return self.mode != "none" and self.traces.enabled


class _TelemetryFile(_Strict):
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)


#: Default of a mount's ``stall_timeout_seconds``: seconds FUSE requests may wait with none answered
#: before the mount is ``stalled`` (not healthy). Above what a working S3 backend needs for one
#: request (rclone's and s3fs's reads and listings answer in well under a second here; a retrying
#: driver took 80-191 s with the server down, issue 17); a flush that uploads a large file
#: synchronously (s3fs) can take longer and then reads as a stall too (docs/operations.md,
#: "Backend outage"): raise the mount's bound for such workloads.
DEFAULT_STALL_SECONDS = 60.0


class MountSpec(_Strict):
    """One mount: the content of ``/etc/obsctl/mounts/NAME.toml`` or the command line.

    ``source`` is written as the driver reads it (``s3://BUCKET[/PREFIX]`` for
    the S3 drivers, a metadata URL for juicefs, free text for the generic
    driver, whose ``command`` is the FUSE daemon's argv); ``cache_mode`` is one
    of the driver's cache modes. Those rules are the driver's
    (:meth:`obsctl.drivers.Driver.check_spec`, applied by :mod:`obsctl.mountspec`).
    """

    source: str
    mountpoint: str
    name: str | None = None
    #: A key of :data:`obsctl.drivers.DRIVERS` (checked by :func:`obsctl.mountspec.check_with_driver`).
    impl: str = "rclone"
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    credentials_from: Literal["env", "stdin", "profile", "systemd"] = "env"
    read_only: bool = False
    allow_other: bool = False
    #: Mount over a directory that has entries (hidden while mounted): rclone's
    #: ``--allow-non-empty`` semantics; without it obsctl refuses a non-empty mountpoint.
    allow_non_empty: bool = False
    #: One of the driver's :attr:`~obsctl.drivers.Driver.cache_modes` (checked with the driver).
    cache_mode: str | None = None
    options: list[str] = msgspec.field(default_factory=list)
    command: list[str] = msgspec.field(default_factory=list)
    ready_timeout_seconds: _positive(600) = 30.0
    #: Seconds FUSE requests may wait with none answered before the mount's health is ``stalled``
    #: (``obsctl_mount_up`` 0): :class:`obsctl.collectors.fuse_conn.FuseConnCollector`; default
    #: :data:`DEFAULT_STALL_SECONDS`. Checked in :meth:`__post_init__` (a number > 0).
    stall_timeout_seconds: float = DEFAULT_STALL_SECONDS
    telemetry_config: str | None = None
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3

    def __post_init__(self) -> None:
        """The rules of the spec alone; those that need the driver registry (``impl`` known, the
        source form, command, cache mode, options) are :func:`obsctl.mountspec.check_with_driver`'s."""
        _check_endpoint(self.endpoint, "endpoint", "http://127.0.0.1:9000")
        if not (math.isfinite(self.stall_timeout_seconds) and self.stall_timeout_seconds > 0):
            raise ValueError(
                f"stall_timeout_seconds {self.stall_timeout_seconds!r}: expected a finite number of seconds greater "
                f"than 0 (how long FUSE requests may wait unanswered before the mount reads 'stalled'; "
                f"default {DEFAULT_STALL_SECONDS:g})")
        if not self.mountpoint:
            raise ValueError("mountpoint is empty")
        self.mountpoint = os.path.normpath(os.path.abspath(self.mountpoint))
        system = system_path(self.mountpoint)
        if system is not None:
            raise ValueError(
                f"mountpoint {self.mountpoint} is a system directory ({system}"
                f"{' and everything below it' if system != self.mountpoint else ''} is never mounted over: "
                "it would hide what the system needs); use a directory of its own, e.g. /mnt/BUCKET")

    def bucket_and_prefix(self) -> tuple[str, str]:
        """``("bucket", "prefix/without/slashes")`` of an ``s3://bucket/prefix`` source
        (:func:`s3_bucket_and_prefix`; the S3 drivers' source form).

        Raises:
            ValueError: not ``s3://BUCKET[/PREFIX]`` or not a valid S3 bucket name.
        """
        return s3_bucket_and_prefix(self.source)


def s3_bucket_and_prefix(source: str) -> tuple[str, str]:
    """``("bucket", "prefix/without/slashes")`` from ``s3://bucket/prefix``.

    Raises:
        ValueError: not ``s3://BUCKET[/PREFIX]`` or not a valid S3 bucket name
            (3-63 characters: lower-case letters, digits, dots and hyphens).
    """
    if not source.startswith("s3://"):
        raise ValueError(f"source {source!r} must look like s3://BUCKET[/PREFIX]")
    bucket, _sep, prefix = source[len("s3://"):].partition("/")
    if not _S3_BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket!r} is not a valid S3 bucket name (3-63 characters: "
            "lower-case letters, digits, dots and hyphens)")
    return bucket, prefix.strip("/")


_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]+)`$")


def _unknown_keys(data: Any, typ: type, tables: tuple[str, ...] = ()) -> list[str]:
    """Every key of ``data`` (nested tables too) that ``typ`` does not define,
    as ``[table.sub] key`` (``key`` at the top level), in document order."""
    if not isinstance(data, dict) or not (isinstance(typ, type) and issubclass(typ, msgspec.Struct)):
        return []
    hints = typing.get_type_hints(typ, include_extras=True)
    found: list[str] = []
    for key, value in data.items():
        if key not in typ.__struct_fields__:
            found.append((f"[{'.'.join(tables)}] " if tables else "") + str(key))
        elif isinstance(value, dict):
            found += _unknown_keys(value, hints.get(key), (*tables, key))
    return found


def _field_errors(data: Any, typ: Any, tables: tuple[str, ...] = ()) -> list[str]:
    """Every key of ``data`` whose value does not have its field's type or constraint, and every
    missing required key, as ``[table] key: message`` lines in document order (msgspec stops at the
    first error; this converts each field on its own, nested tables recursively). The rules that
    join fields (``__post_init__``) are not run here."""
    if not isinstance(data, dict) or not (isinstance(typ, type) and issubclass(typ, msgspec.Struct)):
        return []
    hints = typing.get_type_hints(typ, include_extras=True)
    found: list[str] = []
    for info in msgspec.structs.fields(typ):
        if info.encode_name not in data and info.required:
            found.append(_location([*tables, info.encode_name]) + "missing (required)")
    for key, value in data.items():
        if key not in typ.__struct_fields__:
            continue
        hint = hints[key]
        if isinstance(value, dict) and isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            found += _field_errors(value, hint, (*tables, key))
            continue
        try:
            msgspec.convert(value, hint)
        except msgspec.ValidationError as exc:
            message = str(exc).rpartition(" - at `")[0] or str(exc)
            found.append(_location([*tables, key]) + message)
    return found


def _convert(data: Any, typ: type, origin: str) -> Any:
    """``msgspec.convert`` with errors as :class:`ConfigError` naming table and key.

    Unknown keys are all reported at once (msgspec stops at the first), each
    with its table path, before any other validation; then every value of the
    wrong type or out of its range, at once (:func:`_field_errors`); then the
    first rule that joins fields.
    """
    unknown = _unknown_keys(data, typ)
    if unknown:
        listed = "\n  ".join(f"{key}: unknown key" for key in unknown)
        raise ConfigError(f"{origin}: invalid configuration:\n  {listed}\n"
                          "(check the spelling; the keys are listed in DESIGN section 3 and the README)")
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        fields = _field_errors(data, typ)
        if len(fields) > 1:
            listed = "\n  ".join(fields)
            raise ConfigError(f"{origin}: invalid configuration ({len(fields)} errors):\n  {listed}") from None
        message, _sep, where = str(exc).rpartition(" - at `")
        if not _sep:
            message, where = str(exc), "$`"
        keys = [k for k in where.rstrip("`").split(".")[1:] if not k.startswith("[")]
        field_error = message.startswith(("Expected", "Invalid"))
        for pattern, text in ((_UNKNOWN, "unknown key (check the spelling; see DESIGN section 3)"),
                              (_MISSING, "missing (required)")):
            match = pattern.match(message)
            if match:
                keys.append(match["key"])
                message, field_error = text, True
        where = _location(keys) if field_error else (f"[{'.'.join(keys)}] " if keys else "")
        raise ConfigError(f"{origin}: invalid configuration:\n  {where}{message}") from None


def _location(keys: list[str]) -> str:
    """``["telemetry", "metrics", "bind_address"]`` -> ``[telemetry.metrics] bind_address: ``."""
    if not keys:
        return ""
    *tables, key = keys
    return (f"[{'.'.join(tables)}] " if tables else "") + f"{key}: "


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (run as root or fix its mode)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None


def parse_telemetry(data: dict[str, Any], origin: str = "telemetry config") -> TelemetryConfig:
    """Validate a parsed telemetry TOML document.

    Raises:
        ConfigError: legacy flat keys under ``[telemetry]`` (the message names
            the table each moved to) or any validation failure.
    """
    table = data.get("telemetry", {})
    if isinstance(table, dict):
        legacy = [k for k in LEGACY_TELEMETRY_KEYS if k in table]
        if legacy:
            moved = "\n  ".join(f"[telemetry] {k} -> {LEGACY_TELEMETRY_KEYS[k]}" for k in legacy)
            raise ConfigError(
                f"{origin}: legacy flat keys directly under [telemetry] are no longer read; "
                f"move them to the nested tables:\n  {moved}")
    return _convert(data, _TelemetryFile, origin).telemetry


def load_telemetry(path: str | os.PathLike[str]) -> TelemetryConfig:
    """Read and validate a telemetry TOML file. Raises :class:`ConfigError`."""
    return parse_telemetry(_read_toml(path), str(path))


def read_mount_spec(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document of a mount spec TOML file with command-line ``overrides`` applied (not validated).

    The validated spec is :func:`obsctl.mountspec.load_mount_spec`'s.

    Raises:
        ConfigError: unreadable file, invalid TOML, or a ``[telemetry]`` table in it.
    """
    data = _read_toml(path)
    if "telemetry" in data:
        raise ConfigError(
            f"{path}: a mount spec has no [telemetry] table; put telemetry in its own file "
            "and point to it with telemetry_config = \"/etc/obsctl/telemetry.toml\"")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return data


def convert_mount_spec(data: dict[str, Any], origin: str = "command line") -> MountSpec:
    """The schema's half of a mount spec's validation (types, keys, the rules of :class:`MountSpec`).

    Use :func:`obsctl.mountspec.build_mount_spec`, which adds the driver's rules.

    Raises:
        ConfigError: the message names ``origin`` and the key.
    """
    return _convert(data, MountSpec, origin)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file as a dict. Raises :class:`ConfigError` naming the file and what is wrong with it."""
    return _read_toml(path)


def default_telemetry_path() -> Path:
    """``$OBSCTL_TELEMETRY_CONFIG`` or ``/etc/obsctl/telemetry.toml``."""
    return Path(os.environ.get("OBSCTL_TELEMETRY_CONFIG", "/etc/obsctl/telemetry.toml"))
