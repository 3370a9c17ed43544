# -*- coding: utf-8 -*-
# Copyright: (c) 2026, obsctl.observability contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Write obsctl's TOML files with tomlkit: the one TOML writer of the repository.

Three documents, all built from plain dicts and rendered by tomlkit (never by
string concatenation):

* the telemetry config (DESIGN section 3, ``/etc/obsctl/telemetry.toml``):
  :func:`render_telemetry`;
* a mount spec (``/etc/obsctl/mounts/NAME.toml``): :func:`render_mount_spec`;
* an existing application's TOML (a node's ``/etc/rust-dkg-engine/config.toml``)
  with the ``[telemetry]`` keys its *application profile* allows written into
  it and everything else kept byte for byte, comments included:
  :func:`merge_telemetry`. The profiles are data, one file per application
  and version range in ``app_profiles/`` next to this file (format:
  app_profiles/README.md); :func:`check_telemetry` / :func:`check_text` are
  the one profile check (unknown keys refused at every level, types).

Where it is used, one file in three places:

* the Ansible modules import it as ``ansible_collections.obsctl.observability.
  plugins.module_utils._toml`` (it runs on the target);
* the filter plugins ``obsctl.observability.telemetry_toml`` /
  ``merge_telemetry_toml`` / ``to_toml`` (plugins/filter/toml.py) import it
  on the controller;
* the ``obsctl`` package ships the same file as ``obsctl.tomlio`` (a symlink in
  the source tree, like ``obsctl.mounttable``; the profiles likewise, as
  ``obsctl/app_profiles/*.toml`` package data), used by ``obsctl systemd
  install`` and by ``obsctl config check --app-profile NAME FILE``, which is
  how the role validates a merged application file on the host before it
  replaces the old one.

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

import ipaddress
import math
import os
import re

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


def _check_telemetry_input(telemetry):
    """Check the flat ``telemetry`` input dict (module docstring) has only known keys.

    Raises:
        TomlWriteError: ``telemetry`` is not a dict, or has a key not in
            ``_TELEMETRY_INPUT_KEYS`` (the message names it and the known ones).
    """
    if not isinstance(telemetry, dict):
        raise TomlWriteError("telemetry: expected a dict of settings, got %s" % type(telemetry).__name__)
    unknown = sorted(set(telemetry) - set(_TELEMETRY_INPUT_KEYS))
    if unknown:
        raise TomlWriteError("telemetry: unknown setting(s) %s; known: %s"
                             % (", ".join(unknown), ", ".join(_TELEMETRY_INPUT_KEYS)))


def telemetry_tables(telemetry):
    """The ``[telemetry]`` content as plain nested dicts (DESIGN section 3).

    ``telemetry`` is the flat input dict described in the module docstring.
    Returns ``{"mode": ..., "resource": {...}, "traces": {...}, "metrics": {...}}``
    with keys in the order they are written.

    Raises:
        TomlWriteError: ``telemetry`` is not a dict, has an unknown key, or a
            value of the wrong type (the message names the key).
    """
    _check_telemetry_input(telemetry)

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
# application profiles: what an application accepts under [telemetry]

#: Where the profiles are: next to this file (plugins/module_utils/app_profiles
#: in the collection; obsctl/app_profiles in the obsctl package, where each
#: file is a symlink to the collection's, shipped as package data).
PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app_profiles")

#: The profile the filter and :func:`merge_telemetry` use when none is named:
#: obsctl's own shape, what they wrote before profiles existed.
DEFAULT_PROFILE = "rollout-plan"

_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PROFILE_KEYS = ("application", "versions", "description", "build", "parser", "identify", "legacy", "keys")
_KEY_FIELDS = ("type", "choices", "setting", "managed", "required")
_TYPES = ("bool", "string", "url", "choice", "number", "integer", "string_table", "host_port", "socket_addr")
_BUILDS = ("settings", "obsctl-telemetry")
_URL = re.compile(r"^https?://[^/\s]+")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):([0-9]{1,5})$")


def profile_names():
    """The names of the profiles (``NAME`` of ``app_profiles/NAME.toml``), sorted."""
    try:
        entries = os.listdir(PROFILE_DIR)
    except OSError:
        return []
    return sorted(name[:-5] for name in entries if name.endswith(".toml"))


def load_profile(name):
    """The profile ``name`` as a dict, checked (format: app_profiles/README.md).

    Returns ``{"name", "application", "versions", "description", "build",
    "parser", "identify": [str], "legacy": {key: where it moved}, "keys":
    {"TABLE.KEY": {"type", "choices", "setting", "managed", "required"}}}``
    with ``keys`` in file order.

    Raises:
        TomlWriteError: no such profile (the message lists the known ones), or
            the profile file itself is malformed (the message names the field).
    """
    require_tomlkit()
    known = profile_names()
    if not isinstance(name, _STRING_TYPES) or not _PROFILE_NAME.match(name) or name not in known:
        raise TomlWriteError("unknown application profile %r; known profiles: %s (files in %s)"
                             % (name, ", ".join(known) or "none", PROFILE_DIR))
    path = os.path.join(PROFILE_DIR, name + ".toml")
    with open(path, "rb") as handle:
        text = handle.read().decode("utf-8")
    try:
        data = tomlkit.parse(text).unwrap()
    except TOMLKitError as exc:
        raise TomlWriteError("application profile %s (%s) is not valid TOML: %s" % (name, path, exc))

    def bad(what):
        return TomlWriteError("application profile %s (%s): %s" % (name, path, what))

    unknown = sorted(set(data) - set(_PROFILE_KEYS))
    if unknown:
        raise bad("unknown field(s) %s; known: %s" % (", ".join(unknown), ", ".join(_PROFILE_KEYS)))
    for field in ("application", "versions", "description", "build"):
        if not isinstance(data.get(field), _STRING_TYPES) or not data[field]:
            raise bad("%s must be a non-empty string" % field)
    if data["build"] not in _BUILDS:
        raise bad("build must be one of %s" % ", ".join(_BUILDS))
    if data.get("parser") not in (None, "obsctl"):
        raise bad("parser must be \"obsctl\" or left out")
    identify = data.get("identify", [])
    legacy = data.get("legacy", {})
    if not isinstance(identify, list) or not all(isinstance(key, _STRING_TYPES) for key in identify):
        raise bad("identify must be a list of top-level key names")
    if not isinstance(legacy, dict) or not all(isinstance(value, _STRING_TYPES) for value in legacy.values()):
        raise bad("[legacy] must map a key to where it moved (a string)")
    keys = data.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise bad("[keys] must list at least one key")
    checked = {}
    for path_key, spec in keys.items():
        if not isinstance(spec, dict):
            raise bad("keys.%s must be a table" % path_key)
        unknown = sorted(set(spec) - set(_KEY_FIELDS))
        if unknown:
            raise bad("keys.%s: unknown field(s) %s; known: %s" % (path_key, ", ".join(unknown), ", ".join(_KEY_FIELDS)))
        if spec.get("type") not in _TYPES:
            raise bad("keys.%s: type must be one of %s" % (path_key, ", ".join(_TYPES)))
        if (spec["type"] == "choice") != isinstance(spec.get("choices"), list):
            raise bad("keys.%s: choices (a list) goes with type choice, and only with it" % path_key)
        if data["build"] == "settings" and spec.get("managed") and spec.get("setting") not in _TELEMETRY_INPUT_KEYS:
            raise bad("keys.%s: a managed key of a build = \"settings\" profile needs setting = one of %s"
                      % (path_key, ", ".join(_TELEMETRY_INPUT_KEYS)))
        if path_key.split(".")[0] in legacy:
            raise bad("keys.%s: %s is also a legacy key" % (path_key, path_key.split(".")[0]))
        checked[path_key] = {"type": spec["type"], "choices": spec.get("choices"), "setting": spec.get("setting"),
                             "managed": bool(spec.get("managed")), "required": bool(spec.get("required"))}
    return {"name": name, "application": data["application"], "versions": data["versions"],
            "description": data["description"], "build": data["build"], "parser": data.get("parser"),
            "identify": list(identify), "legacy": dict(legacy), "keys": checked}


def _profile(profile):
    return load_profile(profile) if isinstance(profile, _STRING_TYPES) else profile


def _label(profile):
    return "profile %s (%s %s)" % (profile["name"], profile["application"], profile["versions"])


def _tables_of(profile):
    """Every table path a profile's keys imply: ``{"metrics"}`` for ``metrics.enabled``."""
    tables = set()
    for path_key in profile["keys"]:
        parts = path_key.split(".")
        for depth in range(1, len(parts)):
            tables.add(".".join(parts[:depth]))
    return tables


def _flatten(mapping, leaves, prefix=""):
    """``[(dotted path, value)]`` of a nested mapping, not descending into a key of ``leaves`` (its value is one value)."""
    items = []
    for key, value in mapping.items():
        path_key = prefix + str(key)
        items.append((path_key, value))
        if isinstance(value, dict) and path_key not in leaves:
            items.extend(_flatten(value, leaves, path_key + "."))
    return items


def _socket_addr(value):
    """True if ``value`` parses as a Rust ``std::net::SocketAddr``: ``A.B.C.D:PORT`` or ``[V6]:PORT``."""
    match = _HOST_PORT.match(value)
    if not match or int(match.group(2)) > 65535:
        return False
    host = match.group(1)
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
        else:
            ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _type_problem(spec, value):
    """What is wrong with ``value`` for a key of this spec, or None."""
    kind = spec["type"]
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind == "number" else int):
            return "expected %s" % ("a number" if kind == "number" else "an integer")
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return "expected a finite number"
        return None
    if kind == "string_table":
        if not isinstance(value, dict) or not all(
                isinstance(k, _STRING_TYPES) and isinstance(v, _STRING_TYPES) for k, v in value.items()):
            return "expected a table of strings, e.g. { \"deployment.environment\" = \"prod\" }"
        return None
    if not isinstance(value, _STRING_TYPES):
        return "expected a string"
    if kind == "choice" and value not in spec["choices"]:
        return "expected one of %s" % ", ".join(spec["choices"])
    if kind == "url" and not _URL.match(value):
        return "expected an http:// or https:// URL, e.g. http://127.0.0.1:4317"
    if kind == "host_port":
        match = _HOST_PORT.match(value)
        if not match or not 0 < int(match.group(2)) < 65536:
            return "expected HOST:PORT, e.g. 127.0.0.1:9464"
    if kind == "socket_addr" and not _socket_addr(value):
        return ("expected an IP address and a port, e.g. 127.0.0.1:9464 or [::1]:9464 (the application "
                "parses it as a socket address: no host name)")
    return None


def profile_problems(profile, telemetry, where="telemetry"):
    """Every way ``telemetry`` (the plain ``[telemetry]`` table) breaks ``profile``.

    The serde ``deny_unknown_fields`` rule at every level: a key or table the
    profile does not list is a problem, so is a value of the wrong type, a
    table written as a plain value, a legacy key, a missing required key.

    Returns:
        A list of ``"telemetry.KEY: what is wrong"`` strings (empty = fits).
    """
    profile = _profile(profile)
    problems = []
    if not isinstance(telemetry, dict):
        return ["%s: expected a table, got %s" % (where, type(telemetry).__name__)]
    tables = _tables_of(profile)
    refused = []
    for path_key, value in _flatten(telemetry, profile["keys"]):
        name = "%s.%s" % (where, path_key)
        if any(path_key.startswith(parent + ".") for parent in refused):
            continue  # inside a table already refused as a whole
        if "." not in path_key and path_key in profile["legacy"]:
            problems.append("%s: a legacy key of %s; it moved to %s" % (name, profile["name"],
                                                                        profile["legacy"][path_key]))
        elif path_key in profile["keys"]:
            problem = _type_problem(profile["keys"][path_key], value)
            if problem:
                problems.append("%s: %s, got %r" % (name, problem, value))
        elif path_key in tables:
            if not isinstance(value, dict):
                problems.append("%s: expected a [%s] table, got %r" % (name, name, value))
        else:
            refused.append(path_key)
            problems.append("%s: not accepted by %s (it accepts only %s)" % (
                name, profile["name"], ", ".join("%s.%s" % (where, k) for k in profile["keys"])))
    for path_key, spec in profile["keys"].items():
        if spec["required"] and _lookup(telemetry, path_key) is _MISSING:
            problems.append("%s.%s: required by %s, missing" % (where, path_key, profile["name"]))
    return problems


_MISSING = object()


def _lookup(mapping, path_key):
    for part in path_key.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return _MISSING
        mapping = mapping[part]
    return mapping


def check_telemetry(profile, telemetry, origin="the application's TOML", validate=None):
    """Validate a plain ``[telemetry]`` table against ``profile``; the one profile check.

    ``validate``, when given and the profile has ``parser = "obsctl"``, is
    called with ``{"telemetry": telemetry}`` afterwards (obsctl's own parser,
    obsctl.config.parse_telemetry, for value ranges) and must raise on an
    invalid table.

    Raises:
        TomlWriteError: every problem of :func:`profile_problems`, one per line,
            with the profile's name and application; or ``validate``'s error.
    """
    profile = _profile(profile)
    problems = profile_problems(profile, telemetry)
    if problems:
        raise TomlWriteError("%s: [telemetry] does not fit %s (%s; unknown keys are refused at every "
                             "level):\n  %s" % (origin, _label(profile), profile["description"],
                                                "\n  ".join(problems)))
    if validate is not None and profile["parser"] == "obsctl":
        try:
            validate({"telemetry": telemetry})
        except Exception as exc:  # the validator's own error type, e.g. obsctl.config.ConfigError
            raise TomlWriteError("%s: [telemetry] is not valid for %s:\n%s" % (origin, _label(profile), exc))


def check_text(text, profile, origin="the application's TOML", validate=None):
    """Check an application's whole TOML text: its ``[telemetry]`` against ``profile``.

    The file must be TOML, have a ``[telemetry]`` table that fits the profile
    (:func:`check_telemetry`) and not be another application's file
    (``identify`` of the other profiles). Its other tables are the
    application's business and are not checked.

    Returns:
        A one-line summary naming the profile.

    Raises:
        TomlWriteError: what is wrong and how to fix it.
    """
    profile = _profile(profile)
    data = parse(text, origin)
    _check_identity(profile, data, origin)
    if "telemetry" not in data:
        raise TomlWriteError("%s has no [telemetry] table (%s)" % (origin, _label(profile)))
    check_telemetry(profile, data["telemetry"], origin, validate)
    return "%s: [telemetry] fits %s" % (origin, _label(profile))


def _check_identity(profile, data, origin):
    """Refuse a file whose top-level keys say it is another application's."""
    for other in profile_names():
        if other == profile["name"]:
            continue
        candidate = load_profile(other)
        marks = candidate["identify"]
        if marks and candidate["application"] != profile["application"] and all(key in data for key in marks):
            raise TomlWriteError(
                "%s is a %s file (its top-level keys %s are those of profile %s), but %s was chosen: "
                "choose the profile of this application (telemetry_config_node_profile / --app-profile %s); "
                "nothing was changed" % (origin, candidate["application"], ", ".join(marks), other,
                                         _label(profile), other))


def _strangers(profile, telemetry):
    """Paths under ``[telemetry]`` that ``profile`` neither accepts nor removes as legacy."""
    tables = _tables_of(profile)
    return [path_key for path_key, _value in _flatten(telemetry, profile["keys"])
            if path_key not in profile["keys"] and path_key not in tables
            and not ("." not in path_key and path_key in profile["legacy"])]


def _mismatch(profile, telemetry, origin):
    """Refuse existing ``[telemetry]`` keys the chosen profile does not accept (not a guess)."""
    strangers = _strangers(profile, telemetry)
    if not strangers:
        return
    fits = [other for other in profile_names()
            if other != profile["name"] and not _strangers(load_profile(other), telemetry)]
    raise TomlWriteError(
        "%s: its [telemetry] has %s, which %s does not accept%s: choose the profile the file is written for, "
        "or remove those keys if the application no longer reads them; nothing was changed"
        % (origin, ", ".join("telemetry." + key for key in strangers), _label(profile),
           " (the file looks written for profile %s)" % " or ".join(fits) if fits else ""))


def profile_tables(profile, telemetry, extra=None, origin="the application's TOML"):
    """The ``[telemetry]`` keys ``profile`` writes for the flat settings ``telemetry``, as nested dicts.

    ``build = "obsctl-telemetry"``: :func:`telemetry_tables`; ``build =
    "settings"``: each managed key from its ``setting`` (a None or "" setting
    leaves the key out, unless it is required). ``extra`` (nested like the
    file, e.g. ``{"metrics": {"cardinality_limit": 500}}``) is laid over it.
    Nothing is dropped that the profile requires; nothing is kept that it
    does not accept.

    Raises:
        TomlWriteError: a bad setting, an ``extra`` key the profile does not
            accept (named, with the profile), a required key left out.
    """
    profile = _profile(profile)
    if profile["build"] == "obsctl-telemetry":
        want = telemetry_tables(telemetry)
    else:
        _check_telemetry_input(telemetry)
        want = {}
        for path_key, spec in profile["keys"].items():
            value = telemetry.get(spec["setting"]) if spec["managed"] else None
            if value is None or value == "":
                continue
            table = want
            parts = path_key.split(".")
            for part in parts[:-1]:
                table = table.setdefault(part, {})
            table[parts[-1]] = value
    if extra:
        if not isinstance(extra, dict):
            raise TomlWriteError("extra [telemetry] settings: expected a mapping nested like the file, e.g. "
                                 "{metrics: {enabled: true}}, got %s" % type(extra).__name__)
        _overlay(want, extra)
    for path_key, spec in profile["keys"].items():
        if spec["required"] and _lookup(want, path_key) in (_MISSING, None, ""):
            setting = " (setting %s)" % spec["setting"] if spec["setting"] else ""
            raise TomlWriteError("%s: telemetry.%s%s is required by %s: give it a value; nothing was changed" % (
                origin, path_key, setting, _label(profile)))
    problems = profile_problems(profile, want)
    if problems:
        raise TomlWriteError("%s: asked for what %s cannot do (%s); nothing was changed:\n  %s"
                             % (origin, _label(profile), profile["description"], "\n  ".join(problems)))
    return want


def _overlay(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _overlay(base[key], value)
        else:
            base[key] = value


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


def _new_table(values, tables, prefix):
    table = tomlkit.table()
    for key, value in values.items():
        if prefix + key in tables and isinstance(value, dict):
            table[key] = _new_table(value, tables, prefix + key + ".")
        else:
            table[key] = _inline(value) if isinstance(value, dict) else value
    return table


def _merge_table(table, want, profile, prefix, origin):
    """Set the wanted keys in the tomlkit ``table`` (path ``prefix``), remove managed keys not wanted."""
    tables = _tables_of(profile)
    for key, value in want.items():
        path_key = prefix + key
        if path_key in tables:
            continue
        _set_managed(table, key, value)
    for path_key, spec in profile["keys"].items():
        if spec["managed"] and path_key.startswith(prefix) and "." not in path_key[len(prefix):]:
            key = path_key[len(prefix):]
            if key not in want and key in table:
                del table[key]
    order = []  # new sub-tables in the order of the profile's keys
    for path_key in profile["keys"]:
        if path_key.startswith(prefix):
            head = path_key[len(prefix):].split(".")[0]
            if prefix + head in tables and head not in order:
                order.append(head)
    for name in order:
        sub = want.get(name, {})
        if name not in table:
            if sub:
                table[name] = _new_table(sub, tables, prefix + name + ".")
                table[name].add(tomlkit.nl())
            continue
        if not _is_table(table[name]):
            raise TomlWriteError("%s: telemetry.%s%s is %s, not a [telemetry.%s%s] table; write it as one and run "
                                 "again, nothing was changed" % (origin, prefix, name, _shape(table[name]), prefix,
                                                                 name))
        _merge_table(table[name], sub, profile, prefix + name + ".", origin)


def merge_telemetry(text, telemetry, origin="the application's TOML", validate=None, profile=DEFAULT_PROFILE,
                    extra=None):
    """Write the ``[telemetry]`` keys an application profile allows into the application's TOML text.

    ``profile`` (a name of :func:`profile_names`, default
    :data:`DEFAULT_PROFILE`) says what the application accepts; the wanted
    keys are :func:`profile_tables` of the flat settings ``telemetry`` and
    the nested ``extra``. Every other table, key and comment of ``text`` is
    kept byte for byte (tomlkit keeps the source formatting of what it does
    not change). Under ``[telemetry]``: the profile's managed keys are set (a
    key already holding the right value is left untouched, so a second merge
    returns ``text`` unchanged) or removed when not wanted; other keys the
    profile accepts are kept; the profile's legacy keys directly under
    ``[telemetry]`` are removed. Missing tables are appended.

    Refused, with nothing changed: a file whose top-level keys say it is
    another application's (``identify``); a ``[telemetry]`` with keys the
    profile does not accept (the file tells it is written for another
    profile); settings or ``extra`` the application cannot take. The result
    is checked against the profile (:func:`check_telemetry`, unknown keys
    refused at every level, types checked) and, when the profile has
    ``parser = "obsctl"``, by ``validate`` (called with ``{"telemetry": <the
    merged table as plain dicts>}``, e.g. obsctl.config.parse_telemetry).

    Returns:
        ``(new_text, removed)``: the merged text, and the legacy keys removed,
        as ``["telemetry.enabled", ...]`` in the profile's ``[legacy]`` order.

    Raises:
        TomlWriteError: ``text`` is not TOML, ``telemetry`` (the key) is not a
            table, a mismatch or refusal above (the message names the key and
            the profile), or the result does not validate.
    """
    require_tomlkit()
    profile = _profile(profile)
    want = profile_tables(profile, telemetry, extra, origin)
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise TomlWriteError("%s is not valid TOML (%s); fix it first, nothing was changed" % (origin, exc))
    _check_identity(profile, doc.unwrap(), origin)
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
    _mismatch(profile, outer.unwrap(), origin)
    removed = []
    for key in profile["legacy"]:
        if key in outer and not isinstance(outer[key], tomlkit.items.Table):
            del outer[key]
            removed.append("telemetry." + key)
    _merge_table(outer, want, profile, "", origin)
    merged = tomlkit.dumps(doc)
    if merged.endswith("\n\n") and not text.endswith("\n\n"):
        merged = merged.rstrip("\n") + "\n"  # the blank line after an appended table at the end
    check_telemetry(profile, tomlkit.parse(merged).unwrap()["telemetry"],
                    "%s (merged, nothing was changed)" % origin, validate)
    return merged, removed
