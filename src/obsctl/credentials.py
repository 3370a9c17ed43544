"""Where the S3 credentials come from (DESIGN section 3), in memory only.

Sources, chosen by ``credentials_from``:

* ``env``: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN of
  obsctl's own environment (removed from it once read, so no child other
  than the driver inherits them);
* ``stdin``: env-file lines ``KEY=VALUE`` with those names on standard input;
* ``profile``: a section of the AWS shared credentials file
  (``$AWS_SHARED_CREDENTIALS_FILE`` or ``~/.aws/credentials``);
* ``systemd``: the file ``$CREDENTIALS_DIRECTORY/s3`` that systemd decrypted
  from ``LoadCredentialEncrypted=s3:...`` (env-file lines as for stdin).

The result only ever reaches the driver's environment. :class:`Credentials`
hides the secret from ``repr``.
"""

from __future__ import annotations

import configparser
import os
import sys
from dataclasses import dataclass, field
from typing import IO

from obsctl.errors import ConfigError

#: Name of the systemd credential (LoadCredentialEncrypted=s3:FILE).
SYSTEMD_CREDENTIAL_NAME = "s3"

#: The environment variables of S3 credentials, in the order they are written.
ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class Credentials:
    """An S3 access key pair (and session token); the secret never shows in repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        """The values that must never appear in argv, files or logs."""
        return [s for s in (self.secret_access_key, self.session_token) if s]

    def as_env(self) -> dict[str, str]:
        """``{AWS_ACCESS_KEY_ID: ..., AWS_SECRET_ACCESS_KEY: ...[, AWS_SESSION_TOKEN: ...]}``."""
        values = (self.access_key_id, self.secret_access_key, self.session_token)
        return {key: value for key, value in zip(ENV_KEYS, values) if value}

    def env_text(self) -> str:
        """``KEY=VALUE`` lines that :func:`parse_env_lines` reads back: the clear text of the
        systemd credential (``$CREDENTIALS_DIRECTORY/s3``) and of ``--credentials-from stdin``."""
        return "".join(f"{key}={value}\n" for key, value in self.as_env().items())


def _from_mapping(values: dict[str, str], origin: str) -> Credentials:
    key = values.get("AWS_ACCESS_KEY_ID", "").strip()
    secret = values.get("AWS_SECRET_ACCESS_KEY", "").strip()
    if not key or not secret:
        missing = [n for n, v in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret)) if not v]
        raise ConfigError(f"no S3 credentials in {origin}: {', '.join(missing)} missing")
    return Credentials(key, secret, values.get("AWS_SESSION_TOKEN", "").strip() or None)


def parse_env_lines(text: str, origin: str) -> Credentials:
    """Parse ``KEY=VALUE`` lines (``#`` comments, optional ``export``, quotes).

    Raises:
        ConfigError: a line that is not KEY=VALUE (its number is given, never
            its content, which may be a secret) or a missing key.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{origin}: line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return _from_mapping(values, origin)


def from_env(environ: dict[str, str] | None = None, scrub: bool = True) -> Credentials:
    """Read (and by default remove) the AWS_* variables of ``environ``/os.environ."""
    env = os.environ if environ is None else environ
    creds = _from_mapping({k: env.get(k, "") for k in ENV_KEYS}, "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    if scrub:
        for k in ENV_KEYS:
            env.pop(k, None)
    return creds


def from_stdin(stream: IO[str] | None = None) -> Credentials:
    """Read env-file lines from ``stream`` (default sys.stdin) until EOF."""
    stream = sys.stdin if stream is None else stream
    if stream is None or stream.isatty():
        raise ConfigError(
            "--credentials-from stdin: standard input is a terminal or closed; "
            "pipe AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines into obsctl")
    return parse_env_lines(stream.read(), "standard input")


def from_profile(profile: str, path: str | None = None) -> Credentials:
    """Read ``[profile]`` of the AWS shared credentials file.

    Raises:
        ConfigError: file missing or unreadable, no such profile, or the
            profile lacks aws_access_key_id / aws_secret_access_key.
    """
    path = path or os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"--profile {profile}: cannot read {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"--profile {profile}: {path} is not an AWS credentials file: {exc.message.splitlines()[0]}") from None
    if not parser.has_section(profile):
        raise ConfigError(f"--profile {profile}: no [{profile}] section in {path} (has: {', '.join(parser.sections()) or 'none'})")
    section = parser[profile]
    return _from_mapping(
        {"AWS_ACCESS_KEY_ID": section.get("aws_access_key_id", ""),
         "AWS_SECRET_ACCESS_KEY": section.get("aws_secret_access_key", ""),
         "AWS_SESSION_TOKEN": section.get("aws_session_token", "")},
        f"profile [{profile}] of {path}")


def from_systemd(directory: str | None = None) -> Credentials:
    """Read ``$CREDENTIALS_DIRECTORY/s3`` (systemd LoadCredentialEncrypted=s3:...)."""
    directory = directory or os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            "--credentials-from systemd: CREDENTIALS_DIRECTORY is not set; run under a unit with "
            f"LoadCredentialEncrypted={SYSTEMD_CREDENTIAL_NAME}:/etc/obsctl/credentials/NAME.cred")
    path = os.path.join(directory, SYSTEMD_CREDENTIAL_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_env_lines(handle.read(), f"systemd credential {path}")
    except OSError as exc:
        raise ConfigError(f"--credentials-from systemd: cannot read {path}: {exc.strerror}") from None


def resolve(source: str, profile: str | None = None) -> Credentials:
    """Credentials from ``source`` (env | stdin | profile | systemd). Raises ConfigError."""
    if source == "env":
        return from_env()
    if source == "stdin":
        return from_stdin()
    if source == "profile":
        return from_profile(profile or "default")
    if source == "systemd":
        return from_systemd()
    raise ConfigError(f"--credentials-from {source!r}: expected env, stdin, profile or systemd")
