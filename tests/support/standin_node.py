"""A stand-in for the rust-dkg-engine node where telemetry_config's restart
depends on it (the real node cannot be built here).

    python3 standin_node.py --config /etc/rust-dkg-engine/config.toml

It does what the node does with its configuration file at start, and nothing
else (no network, no database). NODE = github.com/zeroxbt/rust-dkg-engine at
2b3201c627b0d2375947289216ba95415dce29ab, the commit tests/support/real_node.py
cites:

* It reads the file given with ``--config`` (src/config/loader.rs:41-51, the
  flag; the installer's unit passes ``--config /etc/rust-dkg-engine/config.toml``,
  tools/installer/templates/rust-dkg-engine.service, install.sh:14).
  A missing file, a file that is not TOML, no ``environment`` or one that is
  not development / testnet / mainnet is an error (loader.rs:89-107).
* ``[telemetry]`` may hold only ``metrics``, and ``[telemetry.metrics]`` only
  ``enabled`` (a boolean) and ``bind_address`` (a string): the structs are
  ``#[serde(deny_unknown_fields)]`` (src/logger/config.rs:25-39). Any other
  key, or a value of another type, fails the configuration's extraction
  (loader.rs:72).
* A configuration error ends the process before anything starts:
  ``build_core`` returns it with ``?`` (src/bootstrap/core.rs:28), ``main``
  returns it (src/main.rs:6-8), and Rust's ``Termination`` for an ``Err``
  prints ``Error: ...`` on stderr and exits with status 1. This stand-in does
  the same.
* Missing keys take the environment's defaults (loader.rs:58, figment
  defaults): metrics enabled in development, disabled in testnet and mainnet,
  bind address 127.0.0.1:9464 (src/config/defaults.rs:66-70, 263-270, 294,
  360, 446).
* With ``enabled = true`` the exporter listens on ``bind_address``
  (src/logger/mod.rs:57-88). An address that does not parse as a socket
  address, or one it cannot listen on (a port already held), is only a
  warning: the node runs on without /metrics (mod.rs:62-71, 82-86). This
  stand-in serves the node's exposition by running
  tests/support/real_node.py's :func:`real_node.run` (which listens on
  127.0.0.1 only: another host in ``bind_address`` is refused here, saying
  so, exit status 2).
* Without metrics it keeps running, serving nothing, until SIGTERM.

Exit status: 0 on SIGTERM/SIGINT, 1 a configuration error (message on
stderr, as the node), 2 a bad command line or a bind address this stand-in
cannot serve.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import tomllib
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_node  # noqa: E402  (tests/support/real_node.py, beside this file)

#: loader.rs:104 (the environments), defaults.rs:286-294, 352-360, 438-446
#: (metrics enabled by default in development only)
METRICS_ENABLED_BY_DEFAULT = {"development": True, "testnet": False, "mainnet": False}
#: defaults.rs:66-70
DEFAULT_BIND_ADDRESS = "127.0.0.1:9464"
#: logger/config.rs:27-29 and 34-38: field -> type
TELEMETRY_FIELDS: dict[str, type] = {"metrics": dict}
METRICS_FIELDS: dict[str, type] = {"enabled": bool, "bind_address": str}


class ConfigError(Exception):
    """The node's configuration cannot be loaded (the process must exit 1)."""


def _check_table(table: Any, where: str, fields: dict[str, type]) -> dict:
    """Refuse what serde's ``deny_unknown_fields`` refuses in ``table``
    (an unknown key) and a value of the wrong type."""
    if not isinstance(table, dict):
        raise ConfigError(f"invalid type for `{where}`: expected a table")
    for key, value in table.items():
        if key not in fields:
            expected = ", ".join(f"`{f}`" for f in fields)
            raise ConfigError(f"unknown field `{key}` in `{where}`, expected {expected}")
        if not isinstance(value, fields[key]):
            raise ConfigError(f"invalid type for `{where}.{key}`: expected {fields[key].__name__}")
    return table


def load(path: str) -> tuple[bool, str]:
    """Read the node's file ``path``.

    Returns:
        ``(metrics_enabled, bind_address)`` after the environment's defaults.

    Raises:
        ConfigError: the file is missing or not TOML, its environment is
            missing or unknown, or ``[telemetry]`` / ``[telemetry.metrics]``
            has a key the node does not know or a value of the wrong type.
    """
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    environment = doc.get("environment")
    if not isinstance(environment, str):
        raise ConfigError('set environment = "development|testnet|mainnet" in your config')
    environment = environment.strip().lower()  # loader.rs:122-124 normalize_env
    if environment not in METRICS_ENABLED_BY_DEFAULT:
        raise ConfigError(f"unknown environment: {environment}")
    telemetry = _check_table(doc.get("telemetry", {}), "telemetry", TELEMETRY_FIELDS)
    metrics = _check_table(telemetry.get("metrics", {}), "telemetry.metrics", METRICS_FIELDS)
    return (metrics.get("enabled", METRICS_ENABLED_BY_DEFAULT[environment]),
            metrics.get("bind_address", DEFAULT_BIND_ADDRESS))


def parse_socket_address(text: str) -> tuple[str, int] | None:
    """``"IP:PORT"`` or ``"[IPv6]:PORT"`` as Rust's ``SocketAddr::from_str``
    takes it (no host names), or None when it does not parse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version = 6
    else:
        version = 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version != version:
        return None
    return str(address), int(port)


def _wait_for_stop() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    signal.signal(signal.SIGINT, lambda *_a: stop.set())
    stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in; see the module docstring for what it does and its
    exit statuses."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("-c", "--config", required=True, help="the node's TOML file")
    args = parser.parse_args(argv)
    try:
        enabled, bind_address = load(args.config)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"Configuration loaded successfully from {args.config}", flush=True)
    if not enabled:
        return _wait_for_stop()
    address = parse_socket_address(bind_address)
    if address is None:  # mod.rs:62-71
        print(f"WARN Invalid metrics bind address; metrics exporter disabled bind_address={bind_address}",
              flush=True)
        return _wait_for_stop()
    host, port = address
    if host != "127.0.0.1":
        print(f"stand-in: bind_address {bind_address}: real_node.py serves on 127.0.0.1 only",
              file=sys.stderr, flush=True)
        return 2
    try:
        # Binds before anything else, then serves until SIGTERM/SIGINT.
        return real_node.run(["--port", str(port)])
    except OSError as exc:  # mod.rs:82-86
        print(f"WARN Failed to initialize Prometheus metrics exporter bind_address={bind_address} "
              f"error={exc}", flush=True)
        return _wait_for_stop()


if __name__ == "__main__":
    sys.exit(main())
