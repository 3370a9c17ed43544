"""``python -m obsctl.tomlcheck FILE``: validate the ``[telemetry]`` tables of any TOML file.

``obsctl config check`` reads a telemetry-only file and refuses any other
table. An application's own config (a node's ``/etc/<app>/config.toml``) into
which role telemetry_config merged the ``[telemetry]`` tables has other tables
that are not obsctl's; this checks only ``[telemetry]``, with obsctl's own
parser (:func:`obsctl.config.parse_telemetry`), so the role can validate the
merged file before it replaces the old one (``ansible.builtin.copy``
``validate:``).

Exit status: 0 valid; 1 invalid, unreadable or no ``[telemetry]`` table (the
reason on stderr); 2 bad usage.
"""

from __future__ import annotations

import sys
from typing import Sequence

from obsctl import tomlio
from obsctl.config import ConfigError, TelemetryConfig, parse_telemetry


def check_text(text: str, origin: str = "TOML file") -> TelemetryConfig:
    """Validate the ``[telemetry]`` tables of ``text``; other tables are ignored.

    Raises:
        obsctl.tomlio.TomlWriteError: ``text`` is not TOML or has no ``[telemetry]`` table.
        obsctl.config.ConfigError: the telemetry tables are invalid (the message
            names the key and how to fix it).
    """
    data = tomlio.parse(text, origin)
    if "telemetry" not in data:
        raise tomlio.TomlWriteError(f"{origin} has no [telemetry] table")
    return parse_telemetry({"telemetry": data["telemetry"]}, origin)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m obsctl.tomlcheck FILE``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m obsctl.tomlcheck FILE", file=sys.stderr)
        return 2
    path = args[0]
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
        check_text(text, path)
    except (OSError, UnicodeDecodeError, ConfigError, tomlio.TomlWriteError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: [telemetry] is valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
