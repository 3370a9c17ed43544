"""Where a driver's credentials come from (DESIGN section 3), in memory only.

What a driver's credentials *are* is its :class:`CredentialShape` (its
:attr:`obsctl.drivers.Driver.credentials`): the S3 drivers take
:data:`S3_CREDENTIALS` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN); juicefs adds its metadata engine's META_PASSWORD.

Sources, chosen by ``credentials_from``:

* ``env``: the shape's variables in obsctl's own environment (removed from it
  once read, so no child other than the driver inherits them);
* ``stdin``: env-file lines ``KEY=VALUE`` with those names on standard input;
* ``profile``: a section of the AWS shared credentials file
  (``$AWS_SHARED_CREDENTIALS_FILE`` or ``~/.aws/credentials``): the AWS keys only;
* ``systemd``: the file ``$CREDENTIALS_DIRECTORY/s3`` that systemd decrypted
  from ``LoadCredentialEncrypted=s3:...`` (env-file lines as for stdin).

The result only ever reaches the driver's environment. :class:`Credentials`
hides every secret from ``repr``.
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
_AWS_PAIR = ENV_KEYS[:2]


@dataclass(frozen=True)
class CredentialShape:
    """The credentials a driver takes: which environment variables, which of them required.

    Attributes:
        names: every variable of the shape, in the order they are written
            (the S3 keys of :data:`ENV_KEYS` first when the shape has them).
        required: the variables that must be set (a read without them fails).
        public: the variables whose value is not a secret (an access key id);
            every other value is redacted from the driver's log.
        what: how the operator calls them, for messages ("S3 credentials").
    """

    names: tuple[str, ...]
    required: tuple[str, ...] = ()
    public: tuple[str, ...] = ("AWS_ACCESS_KEY_ID",)
    what: str = "S3 credentials"

    @property
    def profile(self) -> bool:
        """True when an AWS shared-credentials profile can give this shape (it holds the AWS key pair)."""
        return all(name in self.names for name in _AWS_PAIR)

    def describe(self) -> str:
        """``"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (required), AWS_SESSION_TOKEN"``: for docs and messages."""
        return ", ".join(name + (" (required)" if name in self.required else "") for name in self.names)


#: The shape of every S3 driver: an access key pair, a session token with temporary keys.
S3_CREDENTIALS = CredentialShape(names=ENV_KEYS, required=_AWS_PAIR)


@dataclass(frozen=True)
class Credentials:
    """A driver's credentials: ``{ENV_NAME: value}`` of its :class:`CredentialShape`.

    ``Credentials("AKID", "SECRET", "TOKEN")`` is an S3 key pair; ``extra``
    holds the other variables of the shape (juicefs's META_PASSWORD). No
    secret shows in repr.
    """

    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str | None = field(default=None, repr=False)
    extra: dict[str, str] = field(default_factory=dict, repr=False)
    public: tuple[str, ...] = field(default=("AWS_ACCESS_KEY_ID",), repr=False)

    def secrets(self) -> list[str]:
        """The values that must never appear in argv, files or logs."""
        return [value for key, value in self.as_env().items() if key not in self.public]

    def as_env(self) -> dict[str, str]:
        """``{AWS_ACCESS_KEY_ID: ..., AWS_SECRET_ACCESS_KEY: ...[, AWS_SESSION_TOKEN: ...], **extra}``
        (only the variables that are set)."""
        values = (self.access_key_id, self.secret_access_key, self.session_token)
        env = {key: value for key, value in zip(ENV_KEYS, values) if value}
        env.update({key: value for key, value in self.extra.items() if value})
        return env

    @property
    def has_s3_keys(self) -> bool:
        """True when the S3 key pair is set (a shape with optional keys may have none)."""
        return bool(self.access_key_id and self.secret_access_key)

    def env_text(self) -> str:
        """``KEY=VALUE`` lines that :func:`parse_env_lines` reads back: the clear text of the
        systemd credential (``$CREDENTIALS_DIRECTORY/s3``) and of ``--credentials-from stdin``."""
        return "".join(f"{key}={value}\n" for key, value in self.as_env().items())


def _from_mapping(values: dict[str, str], origin: str, shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """The credentials of ``shape`` in ``values``.

    Raises:
        ConfigError: a required variable is missing, or one of the S3 key pair is set without the other.
    """
    found = {name: values.get(name, "").strip() for name in shape.names}
    missing = [name for name in shape.required if not found[name]]
    pair = [name for name in _AWS_PAIR if name in shape.names]
    if not missing and any(found[name] for name in pair):
        missing = [name for name in pair if not found[name]]
    if missing:
        raise ConfigError(f"no {shape.what} in {origin}: {', '.join(missing)} missing")
    extra = {name: value for name, value in found.items() if name not in ENV_KEYS and value}
    return Credentials(found.get("AWS_ACCESS_KEY_ID", ""), found.get("AWS_SECRET_ACCESS_KEY", ""),
                       found.get("AWS_SESSION_TOKEN") or None, extra, shape.public)


def parse_env_lines(text: str, origin: str, shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """Parse ``KEY=VALUE`` lines (``#`` comments, optional ``export``, quotes) as the credentials of ``shape``.

    Raises:
        ConfigError: a line that is not KEY=VALUE (its number is given, never
            its content, which may be a secret) or a missing key.
    """
    return _from_mapping(env_lines(text, origin), origin, shape)


def env_lines(text: str, origin: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as ``{KEY: VALUE}`` (every key, whatever the shape).

    Raises:
        ConfigError: a line that is not KEY=VALUE (its number is given, never its content).
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
    return values


def from_mapping(values: dict[str, str], origin: str, shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """The credentials of ``shape`` in ``{ENV_NAME: value}`` (names outside the shape are ignored).

    Raises:
        ConfigError: a required variable is missing (named, never a value).
    """
    return _from_mapping(values, origin, shape)


def from_env(environ: dict[str, str] | None = None, scrub: bool = True,
             shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """Read (and by default remove) the variables of ``shape`` in ``environ``/os.environ."""
    env = os.environ if environ is None else environ
    creds = _from_mapping({k: env.get(k, "") for k in shape.names}, f"the environment ({shape.describe()})", shape)
    if scrub:
        for k in shape.names:
            env.pop(k, None)
    return creds


def from_stdin(stream: IO[str] | None = None, shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """Read env-file lines from ``stream`` (default sys.stdin) until EOF."""
    stream = sys.stdin if stream is None else stream
    if stream is None or stream.isatty():
        raise ConfigError(
            "--credentials-from stdin: standard input is a terminal or closed; "
            f"pipe KEY=VALUE lines of {shape.describe()} into obsctl")
    return parse_env_lines(stream.read(), "standard input", shape)


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


def from_systemd(directory: str | None = None, shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """Read ``$CREDENTIALS_DIRECTORY/s3`` (systemd LoadCredentialEncrypted=s3:...)."""
    directory = directory or os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            "--credentials-from systemd: CREDENTIALS_DIRECTORY is not set; run under a unit with "
            f"LoadCredentialEncrypted={SYSTEMD_CREDENTIAL_NAME}:/etc/obsctl/credentials/NAME.cred")
    path = os.path.join(directory, SYSTEMD_CREDENTIAL_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_env_lines(handle.read(), f"systemd credential {path}", shape)
    except OSError as exc:
        raise ConfigError(f"--credentials-from systemd: cannot read {path}: {exc.strerror}") from None


def resolve(source: str, profile: str | None = None, shape: CredentialShape = S3_CREDENTIALS) -> Credentials:
    """Credentials of ``shape`` from ``source`` (env | stdin | profile | systemd).

    Raises:
        ConfigError: nothing usable in ``source``, or ``profile`` for a shape without the AWS key pair.
    """
    if source == "env":
        return from_env(shape=shape)
    if source == "stdin":
        return from_stdin(shape=shape)
    if source == "profile":
        if not shape.profile:
            raise ConfigError(f"--credentials-from profile: an AWS profile holds no {shape.what} "
                              f"({shape.describe()}); use env, stdin or systemd")
        return from_profile(profile or "default")
    if source == "systemd":
        return from_systemd(shape=shape)
    raise ConfigError(f"--credentials-from {source!r}: expected env, stdin, profile or systemd")
