# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Write obsctl's TOML files with tomlkit: the one TOML writer of the repository.

Three documents, all built from plain dicts and rendered by tomlkit (never by
string concatenation):

* the telemetry config (DESIGN section 3, ``/etc/obsctl/telemetry.toml``):
  :func:`render_telemetry`;
* a mount spec (``/etc/obsctl/mounts/NAME.toml``): :func:`render_mount_spec`;
* an existing application's TOML (a node's ``/etc/<app>/config.toml``) with
  the ``[telemetry]`` tables written into it and everything else kept byte
  for byte, comments included: :func:`merge_telemetry`.

Where it is used, one file in three places:

* the Ansible modules import it as ``ansible_collections.obsctl.observability.
  plugins.module_utils._toml`` (it runs on the target);
* the filter plugins ``obsctl.observability.telemetry_toml`` /
  ``merge_telemetry_toml`` / ``to_toml`` (plugins/filter/toml.py) import it
  on the controller;
* the ``obsctl`` package ships the same file as ``obsctl.tomlio`` (a symlink in
  the source tree, like ``obsctl.mounttable``), used by ``obsctl systemd
  install``; ``python -m obsctl.tomlcheck FILE`` (src/obsctl/tomlcheck.py)
  validates the ``[telemetry]`` tables of an application's file with obsctl's
  own parser (``obsctl.config.parse_telemetry``), which is how the role
  validates a merged file before it replaces the old one.

The input of the telemetry document is the flat dict the role builds from its
variables (keys below, all optional except ``mode``); the numbers it falls
back to are the defaults of roles/telemetry_config/defaults/main.yml::

    mode                     "none" | "remote" | "local" (obsctl validates it)
    service_name             str, default "obsctl-mount"
    attributes               dict str -> str (OTel resource attributes)
    otlp_endpoint            str; "" or None = not written
    otlp_protocol            "grpc" | "http/protobuf", default "grpc"
    traces_enabled           bool, default True
    metrics_enabled          bool, default True
    export_interval_seconds  int or float (seconds), default 30
    export_timeout_seconds   int or float (seconds), default 3
    bind_address             "HOST:PORT" of the Prometheus endpoint; "" = none
    expose_prometheus        bool; written (``true``) only when true

Mode ``none`` writes ``enabled = false`` in both signal tables and nothing
else there (no exporter, no port).

Errors are :class:`TomlWriteError` (a ValueError) naming the key, what was
wrong and how to fix it; nothing is written by this module itself, so a
caller that writes only after a successful call never leaves a half-done
file. ``tomlkit`` is imported lazily: without it, :func:`require_tomlkit`
raises :class:`TomlWriteError` saying how to install it.

Python 3.8 compatible (it may run on an Ansible target).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import math

try:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    HAS_TOMLKIT = True
    TOMLKIT_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - exercised where tomlkit is absent
    tomlkit = None
    TOMLKitError = Exception
    HAS_TOMLKIT = False
    TOMLKIT_IMPORT_ERROR = _exc

#: First line of every file obsctl.observability writes in full.
MANAGED_HEADER = "Managed by obsctl.observability: changes here are overwritten."

#: Second line of the telemetry config.
TELEMETRY_CHECK_HINT = "Check a change with: obsctl config check /etc/obsctl/telemetry.toml"

#: Keys that used to sit directly under [telemetry]; :func:`merge_telemetry`
#: removes them and reports them. Equal to the keys of
#: obsctl.config.LEGACY_TELEMETRY_KEYS (tests/unit/test_tomlio.py checks it).
LEGACY_TELEMETRY_KEYS = ("enabled", "otlp_endpoint", "service_name", "export_interval_seconds", "bind_address")

#: Keys of each [telemetry.*] table this writer owns: a merge sets or removes
#: them; any other key of those tables (e.g. cardinality_limit) is kept.
MANAGED_KEYS = {
    "resource": ("service_name", "attributes"),
    "traces": ("enabled", "otlp_endpoint", "otlp_protocol", "export_timeout_seconds"),
    "metrics": ("enabled", "otlp_endpoint", "otlp_protocol", "export_interval_seconds",
                "export_timeout_seconds", "bind_address", "expose_prometheus"),
}

#: Defaults of roles/telemetry_config/defaults/main.yml (the role passes every
#: key; these apply to callers that leave one out, e.g. obsctl systemd install).
#: The numbers are obsctl.config's defaults (tests/unit/test_roles_argument_specs.py).
DEFAULTS = {
    "service_name": "obsctl-mount",
    "otlp_protocol": "grpc",
    "traces_enabled": True,
    "metrics_enabled": True,
    "export_interval_seconds": 30,
    "export_timeout_seconds": 3,
}

_TELEMETRY_INPUT_KEYS = (
    "mode", "service_name", "attributes", "otlp_endpoint", "otlp_protocol", "traces_enabled",
    "metrics_enabled", "export_interval_seconds", "export_timeout_seconds", "bind_address",
    "expose_prometheus",
)

_STRING_TYPES = (str,)


class TomlWriteError(ValueError):
    """Input that cannot be written as asked; ``str()`` says what and how to fix it."""


def require_tomlkit():
    """Raise :class:`TomlWriteError` unless the tomlkit library can be imported."""
    if not HAS_TOMLKIT:
        raise TomlWriteError(
            "the Python library tomlkit is missing (%s): install it for the Python that runs this "
            "(pip install 'tomlkit>=0.11.7', or apt-get install python3-tomlkit on Debian/Ubuntu)"
            % TOMLKIT_IMPORT_ERROR)


# --------------------------------------------------------------------------
# values


def _check_string(where, value):
    if not isinstance(value, _STRING_TYPES):
        raise TomlWriteError("%s: expected a string, got %s %r" % (where, type(value).__name__, value))
    return value


def _check_bool(where, value):
    if not isinstance(value, bool):
        raise TomlWriteError("%s: expected true or false, got %s %r" % (where, type(value).__name__, value))
    return value


def _check_number(where, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TomlWriteError("%s: expected a number of seconds, got %s %r" % (where, type(value).__name__, value))
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise TomlWriteError("%s: expected a finite number of seconds, got %r" % (where, value))
    return value


def _plain(where, value):
    """Check that ``value`` can be a TOML value (str, bool, int, float, list of them, dict)."""
    if value is None:
        raise TomlWriteError("%s: None has no TOML form (leave the key out instead)" % where)
    if isinstance(value, (bool, int)) or isinstance(value, _STRING_TYPES):
        return value
    if isinstance(value, float):
        return _check_number(where, value)
    if isinstance(value, (list, tuple)):
        return [_plain("%s[%d]" % (where, index), item) for index, item in enumerate(value)]
    if isinstance(value, dict):
        return dict((_check_string("%s key" % where, key), _plain("%s.%s" % (where, key), item))
                    for key, item in value.items())
    raise TomlWriteError("%s: a %s has no TOML form (use a string, number, boolean, list or table)"
                         % (where, type(value).__name__))


def _inline(mapping):
    table = tomlkit.inline_table()
    for key in sorted(mapping):
        table[key] = mapping[key]
    return table


# --------------------------------------------------------------------------
# the telemetry tables


def telemetry_tables(telemetry):
    """The ``[telemetry]`` content as plain nested dicts (DESIGN section 3).

    ``telemetry`` is the flat input dict described in the module docstring.
    Returns ``{"mode": ..., "resource": {...}, "traces": {...}, "metrics": {...}}``
    with keys in the order they are written.

    Raises:
        TomlWriteError: ``telemetry`` is not a dict, has an unknown key, or a
            value of the wrong type (the message names the key).
    """
    if not isinstance(telemetry, dict):
        raise TomlWriteError("telemetry: expected a dict of settings, got %s" % type(telemetry).__name__)
    unknown = sorted(set(telemetry) - set(_TELEMETRY_INPUT_KEYS))
    if unknown:
        raise TomlWriteError("telemetry: unknown setting(s) %s; known: %s"
                             % (", ".join(unknown), ", ".join(_TELEMETRY_INPUT_KEYS)))

    def get(key):
        value = telemetry.get(key)
        if value is None or (isinstance(value, _STRING_TYPES) and value == "" and key in DEFAULTS):
            return DEFAULTS.get(key)
        return value

    mode = _check_string("telemetry.mode", telemetry.get("mode") or "none")
    attributes = telemetry.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise TomlWriteError("telemetry.attributes: expected a mapping of attribute name -> string value")
    for key, value in attributes.items():
        _check_string("telemetry.attributes key", key)
        _check_string("telemetry.attributes.%s" % key, value)
    resource = {"service_name": _check_string("telemetry.service_name", get("service_name")),
                "attributes": dict(attributes)}
    if mode == "none":
        return {"mode": mode, "resource": resource, "traces": {"enabled": False}, "metrics": {"enabled": False}}

    endpoint = telemetry.get("otlp_endpoint") or None
    if endpoint is not None:
        _check_string("telemetry.otlp_endpoint", endpoint)
    protocol = _check_string("telemetry.otlp_protocol", get("otlp_protocol"))
    timeout = _check_number("telemetry.export_timeout_seconds", get("export_timeout_seconds"))
    traces = {"enabled": _check_bool("telemetry.traces_enabled", get("traces_enabled"))}
    metrics = {"enabled": _check_bool("telemetry.metrics_enabled", get("metrics_enabled"))}
    for table in (traces, metrics):
        if endpoint is not None:
            table["otlp_endpoint"] = endpoint
        table["otlp_protocol"] = protocol
    traces["export_timeout_seconds"] = timeout
    metrics["export_interval_seconds"] = _check_number("telemetry.export_interval_seconds",
                                                       get("export_interval_seconds"))
    metrics["export_timeout_seconds"] = timeout
    bind_address = telemetry.get("bind_address") or None
    if bind_address is not None:
        metrics["bind_address"] = _check_string("telemetry.bind_address", bind_address)
    expose = telemetry.get("expose_prometheus")
    if expose is not None and _check_bool("telemetry.expose_prometheus", expose):
        metrics["expose_prometheus"] = True
    return {"mode": mode, "resource": resource, "traces": traces, "metrics": metrics}


def _table(values):
    table = tomlkit.table()
    for key, value in values.items():
        table[key] = _inline(value) if isinstance(value, dict) else value
    return table


def render_telemetry(telemetry):
    """The text of ``/etc/obsctl/telemetry.toml`` for the flat input ``telemetry``.

    Two header comment lines (managed-by, how to check a change), then
    ``[telemetry]``, ``[telemetry.resource]``, ``[telemetry.traces]``,
    ``[telemetry.metrics]``. Deterministic (idempotence compares bytes).

    Raises:
        TomlWriteError: see :func:`telemetry_tables`; tomlkit missing.
    """
    require_tomlkit()
    tables = telemetry_tables(telemetry)
    doc = tomlkit.document()
    doc.add(tomlkit.comment(MANAGED_HEADER))
    doc.add(tomlkit.comment(TELEMETRY_CHECK_HINT))
    outer = tomlkit.table()
    outer["mode"] = tables["mode"]
    if tables["mode"] == "none":
        outer["mode"].comment("no exporter is created and no port is opened")
    for name in ("resource", "traces", "metrics"):
        outer[name] = _table(tables[name])
    doc["telemetry"] = outer
    return tomlkit.dumps(doc).rstrip("\n") + "\n"


# --------------------------------------------------------------------------
# the mount spec


def render_mount_spec(spec):
    """The text of ``/etc/obsctl/mounts/NAME.toml``: header, then ``key = value`` sorted by key.

    ``spec`` is the flat dict of mount spec keys (obsctl.config.MountSpec);
    keys whose value is None are left out. Deterministic, so idempotence can
    compare bytes. Never give it a secret: the file is 0640.

    Raises:
        TomlWriteError: a value with no TOML form (the message names the key);
            tomlkit missing.
    """
    require_tomlkit()
    if not isinstance(spec, dict):
        raise TomlWriteError("mount spec: expected a dict, got %s" % type(spec).__name__)
    doc = tomlkit.document()
    doc.add(tomlkit.comment(MANAGED_HEADER))
    for key in sorted(spec):
        if spec[key] is not None:
            doc[_check_string("mount spec key", key)] = _plain(key, spec[key])
    return tomlkit.dumps(doc)


def parse(text, origin="TOML text"):
    """Parse TOML ``text`` into plain dicts / lists / scalars (tomlkit, so it runs on 3.8).

    Raises:
        TomlWriteError: not TOML (the message names ``origin`` and the line).
    """
    require_tomlkit()
    try:
        return tomlkit.parse(text).unwrap()
    except TOMLKitError as exc:
        raise TomlWriteError("%s is not valid TOML: %s" % (origin, exc))


def to_toml(data):
    """Any dict of TOML-able values as a TOML document (keys in the given order).

    Raises:
        TomlWriteError: a value with no TOML form; tomlkit missing.
    """
    require_tomlkit()
    if not isinstance(data, dict):
        raise TomlWriteError("to_toml: expected a dict, got %s" % type(data).__name__)
    return tomlkit.dumps(_plain("data", data))


# --------------------------------------------------------------------------
# merging [telemetry] into an application's file


def _same(item, value):
    current = item.unwrap() if hasattr(item, "unwrap") else item
    return type(current) is type(value) and current == value


def _set_managed(table, key, value):
    """Set ``table[key]`` unless it already holds ``value`` (keeps its formatting and comment)."""
    if key in table and _same(table[key], value):
        return
    table[key] = _inline(value) if isinstance(value, dict) else value


def _is_table(item):
    """True for a ``[name]`` table (not dotted keys, an inline table or ``[[name]]``)."""
    return isinstance(item, tomlkit.items.Table)


def _shape(item):
    """How a non-table value is written, for error messages."""
    if isinstance(item, tomlkit.items.InlineTable):
        return "an inline table"
    if isinstance(item, tomlkit.items.AoT):
        return "an array of tables [[...]]"
    if isinstance(item, (dict, tomlkit.items.Table)) or hasattr(item, "unwrap") and isinstance(
            item.unwrap(), dict):
        return "written with dotted keys"
    return "a %s" % type(item.unwrap() if hasattr(item, "unwrap") else item).__name__


def merge_telemetry(text, telemetry, origin="the application's TOML", validate=None):
    """Write the ``[telemetry]`` tables into an existing application's TOML text.

    Every other table, key and comment of ``text`` is kept byte for byte
    (tomlkit keeps the source formatting of what it does not change). Under
    ``[telemetry]``: ``mode`` and the keys of :data:`MANAGED_KEYS` in
    ``[telemetry.resource]``, ``[telemetry.traces]`` and ``[telemetry.metrics]``
    are set to what :func:`telemetry_tables` gives (a key already holding the
    right value is left untouched, so a second merge returns ``text``
    unchanged); managed keys that should be absent are removed; other keys of
    those tables are kept; the legacy flat keys of :data:`LEGACY_TELEMETRY_KEYS`
    directly under ``[telemetry]`` are removed. Missing tables are appended.

    ``validate``, when given, is called with ``{"telemetry": <the merged
    [telemetry] table as plain dicts>}`` (the application's other tables are not
    obsctl's) and must raise on an invalid one, e.g. obsctl.config.parse_telemetry;
    nothing is returned then.

    Returns:
        ``(new_text, removed)``: the merged text, and the legacy keys removed,
        as ``["telemetry.enabled", ...]`` in :data:`LEGACY_TELEMETRY_KEYS` order.

    Raises:
        TomlWriteError: ``text`` is not TOML, ``telemetry`` (the key) is not a
            table, bad input values, or ``validate`` refused the result (its
            message is included).
    """
    require_tomlkit()
    tables = telemetry_tables(telemetry)
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise TomlWriteError("%s is not valid TOML (%s); fix it first, nothing was changed" % (origin, exc))
    if "telemetry" not in doc:
        if text and not text.endswith("\n"):
            doc.add(tomlkit.nl())
        doc.add(tomlkit.nl())
        doc["telemetry"] = tomlkit.table()
    outer = doc["telemetry"]
    if not _is_table(outer):
        raise TomlWriteError(
            "%s: telemetry is %s, not a [telemetry] table; write it as a [telemetry] table (or remove it) "
            "and run again, nothing was changed" % (origin, _shape(outer)))
    removed = []
    for key in LEGACY_TELEMETRY_KEYS:
        if key in outer and not isinstance(outer[key], tomlkit.items.Table):
            del outer[key]
            removed.append("telemetry." + key)
    if not _same(outer.get("mode"), tables["mode"]):
        outer["mode"] = tables["mode"]  # tomlkit puts a new key before the sub-tables
    for name in ("resource", "traces", "metrics"):
        want = tables[name]
        if name not in outer:
            outer[name] = _table(want)
            outer[name].add(tomlkit.nl())
            continue
        table = outer[name]
        if not _is_table(table):
            raise TomlWriteError("%s: telemetry.%s is %s, not a [telemetry.%s] table; write it as one and run "
                                 "again, nothing was changed" % (origin, name, _shape(table), name))
        for key in MANAGED_KEYS[name]:
            if key in want:
                _set_managed(table, key, want[key])
            elif key in table:
                del table[key]
    merged = tomlkit.dumps(doc)
    if merged.endswith("\n\n") and not text.endswith("\n\n"):
        merged = merged.rstrip("\n") + "\n"  # the blank line after an appended table at the end
    if validate is not None:
        try:
            validate({"telemetry": tomlkit.parse(merged).unwrap()["telemetry"]})
        except Exception as exc:  # the validator's own error type, e.g. obsctl.config.ConfigError
            raise TomlWriteError("%s: the merged [telemetry] tables are not valid, nothing was changed:\n%s"
                                 % (origin, exc))
    return merged, removed
