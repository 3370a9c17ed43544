"""The driver contract: :class:`Driver`, :class:`LaunchPlan`, :class:`PlanContext`, option rules.

One module per driver builds on this (the registry is :mod:`obsctl.drivers`). A driver turns a validated :class:`~obsctl.config.MountSpec`,
:class:`~obsctl.credentials.Credentials` and a :class:`PlanContext` into a
:class:`LaunchPlan` (argv and environment; the secret only ever in the
environment), names the mount type it creates, picks the lines of its log
worth forwarding and the lines that explain a failure, and builds its
collectors once telemetry is up. The contract is on :class:`Driver`.

This module must stay cheap to import: the supervisor spawns the driver
before the OpenTelemetry SDK is imported.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from obsctl.config import s3_bucket_and_prefix
from obsctl.credentials import S3_CREDENTIALS, CredentialShape
from obsctl.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from obsctl.collectors import LogCollector, PollingCollector
    from obsctl.config import MountSpec, TelemetryConfig
    from obsctl.credentials import Credentials
    from obsctl.instruments import Instruments

#: Environment variables never passed to a driver: credentials (the driver
#: gets its own, in its own variables) and variables that break a driver.
_SCRUBBED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")


#: Words that mark an option as carrying a credential whatever the driver
#: (checked after the driver's own table, so unknown or future options too).
CREDENTIAL_WORDS = ("secret", "access-key", "password", "passwd", "pass", "token", "credential")

_CMDLINE_RISK = ("on the {impl} command line, where every local user can read it in "
                 "/proc/PID/cmdline")
#: The role variables of obsctl.observability.fuse_driver that install drivers
#: (roles/fuse_driver/defaults/main.yml): from the distribution, from pinned release files.
DISTRO_DRIVERS = "fuse_driver_distro_drivers"
RELEASE_DRIVERS = "fuse_driver_release_drivers"
#: The texts the drivers' :class:`OptionRule` tables share (``{impl}`` is the driver's name).
#: What to do instead of a credential option.
CREDS = "pass credentials with credentials_from (--credentials-from env|stdin|profile|systemd)"
#: The risk of an option that takes a secret as its value.
CMDLINE = "would put a secret " + _CMDLINE_RISK
#: What to do instead of an option that overrides the spec's endpoint / region / source.
SPEC = "set endpoint, region and source in the mount spec (--endpoint, --region, SOURCE)"


@dataclass(frozen=True)
class Release:
    """How roles/fuse_driver installs a driver from a pinned release file (its defaults are generated
    from this by scripts/gen-driver-docs: ``fuse_driver_releases``).

    Attributes:
        version: the pinned version.
        files: ``{ARCH: URL}`` (``ansible_facts.architecture``: ``x86_64``, ``aarch64``).
        member: the program's path inside the archive (``bin/mount-s3``, ``juicefs``), or
            None when the downloaded file is the program itself.
        checksums: where the project publishes the sha256 of its files, or "" when it does not
            (the operator then verifies the file another way, docs/drivers.md).
    """

    version: str
    files: dict[str, str]
    member: str | None = None
    checksums: str = ""

    def role_entry(self, program: str) -> dict[str, Any]:
        """The driver's entry of the role's ``fuse_driver_releases`` (sha256 empty: the operator's to pin)."""
        entry: dict[str, Any] = {"version": self.version, "kind": "tar" if self.member else "binary",
                                 "program": program}
        if self.member:
            entry["member"] = self.member
        entry["files"] = {arch: {"url": url, "sha256": ""} for arch, url in self.files.items()}
        return entry


@dataclass(frozen=True)
class DocRow:
    """A driver's row of the table in docs/drivers.md (generated: scripts/gen-driver-docs).

    Attributes:
        binary: what the program is and where it comes from (``rclone >= 1.60 (Debian)``).
        runs: how obsctl runs it (a command line, Markdown).
        collectors: the collectors that observe it beyond the kernel's.
    """

    binary: str
    runs: str
    collectors: str
    #: The mount type column when :attr:`Driver.fstype` alone does not say it.
    mount_type: str = ""


@dataclass(frozen=True)
class OptionRule:
    """One refused driver option, from the driver's own option reference.

    Attributes:
        names: option names, normalised (lower case, no leading dashes,
            ``_`` -> ``-``): ``s3-sse-customer-key``, ``passwd-file``.
        risk: what the option would do ("would put ... on the command line").
        instead: the safe alternative, said to the operator.
        prefix: True: also refuse every ``NAME-...`` option (``rc`` covers
            ``rc-addr``, ``rc-no-auth`` ...).
        values: when set, refuse only when the value (lower case) contains
            one of these words (``dump`` only with ``auth``).
    """

    names: tuple[str, ...]
    risk: str
    instead: str
    prefix: bool = False
    values: tuple[str, ...] = ()
    #: Names the prefix would catch that are not refused (rclone's global --cache-dir vs. the cache backend).
    unless: tuple[str, ...] = ()

    def matches(self, name: str, value: str | None) -> bool:
        """True when option ``name`` (normalised) with ``value`` is refused by this rule."""
        if name in self.unless:
            return False
        hit = name in self.names or (self.prefix and any(name.startswith(n + "-") for n in self.names))
        if hit and self.values:
            return value is not None and any(v in value.lower() for v in self.values)
        return hit


@dataclass(frozen=True)
class PlanContext:
    """What a driver's :meth:`Driver.plan` needs to know besides the spec and the credentials.

    Built by the caller of ``plan`` (the supervisor, once per spawn, with
    :func:`obsctl.observer.plan_context`); a driver never reads these from anywhere else.

    Attributes:
        telemetry: the mount's validated telemetry configuration, or None for a
            plan built without one. Drivers with their own exporter point it at
            the configured endpoint (mountpoint-s3 ``--otlp-endpoint``).
        listen: False: the driver must open no listening socket, not even on
            loopback (telemetry mode ``none``: rclone runs without its rc API).
        kernel_complete: True when the kernel source gives every FUSE quantity
            on this host (:func:`obsctl.sources.kernel_complete`, Linux 6.18+):
            drivers may then drop the debug logging they need only for FUSE
            numbers (rclone logs at INFO instead of DEBUG).
    """

    telemetry: "TelemetryConfig | None" = None
    listen: bool = True
    kernel_complete: bool = False


def normalise_option(option: str) -> tuple[str, str | None]:
    """``"--S3_Sse-Customer-Key=V"`` -> ``("s3-sse-customer-key", "V")`` (the form rules use)."""
    key, value = split_option(option.strip().lstrip("-"))
    return key.lower().replace("_", "-"), value


@dataclass
class LaunchPlan:
    """What to run for one mount.

    Attributes:
        argv: the driver's command line (no secret in it, ever).
        env: the driver's complete environment.
        fstype: the mount type expected in /proc/self/mountinfo
            (``fuse.rclone``), or None for any FUSE type (generic driver).
        secrets: values redacted from every forwarded log line.
        extras: driver-specific data the collectors need (rclone rc URL ...).
    """

    argv: list[str]
    env: dict[str, str]
    fstype: str | None
    secrets: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


class Driver:
    """Base driver: the contract every module of :mod:`obsctl.drivers` fulfils.

    Subclasses set :attr:`name`, :attr:`binary`, :attr:`installed_by` and
    :attr:`fstype`, implement :meth:`command` and override the log hooks.
    A driver object holds no per-mount state: everything a launch depends on
    is an argument of :meth:`plan`.

    The contract of :meth:`plan` (``plan(spec, credentials, context)``):

    * in: the validated :class:`~obsctl.config.MountSpec`, the S3
      :class:`~obsctl.credentials.Credentials` or None (the driver then uses
      its own default chain; the generic driver never gets any), and a
      :class:`PlanContext` (telemetry configuration, whether a listening
      socket is allowed, whether the kernel gives every FUSE number);
    * out: a :class:`LaunchPlan`: ``argv`` (never a secret in it),
      ``env`` (the complete environment: obsctl's, without inherited keys or
      systemd's private variables, plus the credentials), ``fstype`` (the
      type the mount shows in /proc/self/mountinfo, or None for any FUSE
      type), ``secrets`` (every value to redact from forwarded log lines) and
      ``extras`` (what the driver's collectors need: rclone's rc URL ...);
    * errors: :class:`obsctl.config.ConfigError` when ``spec.options`` holds
      a refused option (all of them named at once, never their values);
      nothing is started or written, and no time is spent besides choosing a
      free loopback port (rclone rc).

    :meth:`plan` is a template: it checks the options, builds the
    environment with :meth:`base_env` and :meth:`credential_env`, then asks
    :meth:`command` for the argv. Options are read once, by
    :meth:`option_items`, for both the check and the argv.
    """

    name = ""
    binary = ""
    #: The role variable of obsctl.observability.fuse_driver that installs :attr:`binary`
    #: (:data:`DISTRO_DRIVERS` or :data:`RELEASE_DRIVERS`), or "" (generic: the operator's daemon).
    #: The role's argument_specs list the drivers of each (generated by scripts/gen-driver-docs).
    installed_by = ""
    #: With :data:`RELEASE_DRIVERS`: the pinned release file and its layout.
    release: Release | None = None
    #: The mount type in /proc/self/mountinfo (``fuse.rclone``), or None for any FUSE type.
    fstype: str | None = None
    #: How the mount spec's ``source`` is written for this driver (:meth:`check_source` checks it).
    source_form = "s3://BUCKET[/PREFIX]"
    #: True: the driver runs the command after ``--`` (``spec.command``, required); False: none is allowed.
    takes_command = False
    #: The ``cache_mode`` values the driver has (rclone's ``--vfs-cache-mode``); () for none.
    cache_modes: tuple[str, ...] = ()
    #: The credentials the driver takes (:data:`obsctl.credentials.S3_CREDENTIALS`), or None:
    #: obsctl reads none for it.
    credentials: CredentialShape | None = S3_CREDENTIALS
    #: The name of the driver's own FUSE-level source (``rclone_log``), "" for none, and the
    #: quantities of :data:`obsctl.sources.QUANTITIES` it gives when the kernel does not.
    log_source = ""
    log_gives: frozenset[str] = frozenset()
    #: Its row of the table in docs/drivers.md.
    doc = DocRow("", "", "")
    #: Options refused for this driver (see :meth:`check_options`).
    refused_options: tuple[OptionRule, ...] = ()
    #: ``(opcode label, errno name)`` answers of this driver that are the protocol working,
    #: not a failed operation, on top of :data:`obsctl.collectors.NOT_FAILURES` (which holds
    #: those of every daemon); the kernel collector does not count them in ``obsctl_errors_total``.
    protocol_answers: frozenset[tuple[str, str]] = frozenset()

    def option_items(self, options: list[str]) -> list[str]:
        """The single options a list of option elements stands for, as the driver gets them.

        A long flag given as two elements, ``["--dir-cache-time", "5s"]``,
        is one option ``--dir-cache-time=5s`` (the way Go's pflag and clap read
        a flag and the word after it); so a bare boolean flag must not be
        followed by a word that is not its value (write ``--flag=true`` or
        put ``--flag`` last). Every other element is one option. The check by
        name and the argv both use this list, so a value can neither pass the
        check as a separate "option" nor be shown in a refusal.
        """
        items: list[str] = []
        pending: str | None = None
        for element in options:
            if pending is not None and not element.startswith("-"):
                items.append(f"{pending}={element}")
                pending = None
                continue
            if pending is not None:
                items.append(pending)
                pending = None
            if element.startswith("--") and "=" not in element:
                pending = element
            else:
                items.append(element)
        if pending is not None:
            items.append(pending)
        return items

    def refuse_dash_option(self, option: str) -> str | None:
        """Why a raw ``-x`` / ``--flag`` option is refused, or None to check it by name."""
        return None

    def check_options(self, options: list[str]) -> None:
        """Refuse every option that could carry a secret or override what obsctl set up.

        Each option is checked against the driver's :attr:`refused_options`
        (taken from the driver's option reference), then against
        :data:`CREDENTIAL_WORDS`. All refused options are reported at once,
        by name; a value is never repeated (it may be the secret).

        Raises:
            ConfigError: one line per refused option: the option, the risk, what to do instead.
        """
        problems: list[str] = []
        for option in self.option_items(options):
            shown = split_option(option.strip())[0]
            dash = self.refuse_dash_option(option.strip())
            if dash:
                problems.append(f"{shown}: {dash}")
                continue
            name, value = normalise_option(option)
            rule = next((r for r in self.refused_options if r.matches(name, value)), None)
            if rule is not None:
                problems.append(f"{shown}: {rule.risk.format(impl=self.name)}; {rule.instead}")
            elif any(word in name for word in CREDENTIAL_WORDS):
                problems.append(
                    f"{shown}: would put a credential " + _CMDLINE_RISK.format(impl=self.name)
                    + "; " + CREDS)
        if problems:
            raise ConfigError(f"{self.name} option(s) refused:\n    " + "\n    ".join(problems))

    @property
    def needs_credentials(self) -> bool:
        """True when obsctl reads credentials for the driver (:attr:`credentials` is set)."""
        return self.credentials is not None

    def check_source(self, source: str) -> None:
        """Check the spec's ``source`` as the driver reads it (default: ``s3://BUCKET[/PREFIX]``).

        Raises:
            ValueError: the reason, naming :attr:`source_form`.
        """
        s3_bucket_and_prefix(source)

    def bucket_label(self, source: str) -> str:
        """The ``bucket`` label of the mount's metrics for ``source`` (default: the S3 bucket)."""
        return s3_bucket_and_prefix(source)[0]

    def check_spec(self, spec: "MountSpec") -> list[str]:
        """The rules this driver adds to the mount spec's own: its source, command, cache mode and
        credential source. Returns one message per problem (empty: the spec suits the driver).
        A command given to a driver without :attr:`takes_command` is refused by
        :func:`obsctl.mountspec.check_with_driver`, which names the drivers that take one."""
        problems: list[str] = []
        if self.takes_command and not spec.command:
            problems.append(f"impl {self.name} needs the FUSE daemon's command: "
                            f"obsctl mount SRC MOUNTPOINT --impl {self.name} -- COMMAND ARGS...")
        try:
            self.check_source(spec.source)
        except ValueError as exc:
            problems.append(str(exc))
        if spec.cache_mode and spec.cache_mode not in self.cache_modes:
            problems.append(f"cache_mode {spec.cache_mode!r}: " + (
                f"{self.name} has {', '.join(self.cache_modes)}" if self.cache_modes else
                f"{self.name} has no cache mode (cache_mode is an rclone option: --vfs-cache-mode)"))
        if self.credentials is not None and spec.credentials_from == "profile":
            if not self.credentials.profile:
                problems.append(f'credentials_from = "profile": {self.name} takes {self.credentials.describe()}, '
                                "which an AWS profile does not hold; use env, stdin or systemd")
            elif not spec.profile:
                problems.append('credentials_from = "profile" needs profile = "NAME" (--profile)')
        return problems

    @property
    def install_hint(self) -> str:
        """What installs :attr:`binary`, said to the operator (from :attr:`installed_by`), or ""."""
        if self.installed_by == DISTRO_DRIVERS:
            return (f"role obsctl.observability.fuse_driver ({DISTRO_DRIVERS}: [{self.name}]) "
                    f"or apt-get install {self.binary}")
        if self.installed_by == RELEASE_DRIVERS:
            return (f"role obsctl.observability.fuse_driver with {RELEASE_DRIVERS}: [{self.name}] "
                    "(and its sha256 in fuse_driver_releases, see docs/drivers.md)")
        return ""

    def missing_binary(self, spec: "MountSpec") -> str | None:
        """Why the driver's program cannot be run, or None when it is on PATH.

        Checked before anything is started (``obsctl mount`` exits 1 with this
        message, docs/operations.md). The program is :attr:`binary`, or the
        first word of the generic driver's command.

        Returns:
            ``"goofys: not found on PATH (...); install it with role
            obsctl.observability.fuse_driver: fuse_driver_release_drivers: [goofys]"``
            or None.
        """
        program = self.binary or (spec.command[0] if spec.command else "")
        if not program or shutil.which(program, path=os.environ.get("PATH")):
            return None
        where = os.environ.get("PATH", "")
        hint = f"; install it with {self.install_hint}" if self.install_hint else ""
        return f"{program}: not found on PATH ({where}), the {self.name} driver cannot start{hint}"

    def plan(self, spec: "MountSpec", credentials: "Credentials | None", context: PlanContext) -> LaunchPlan:
        """What to run for ``spec``: see the contract in the class docstring.

        Raises:
            ConfigError: a refused option in ``spec.options``.
        """
        self.check_options(spec.options)
        env = self.base_env(spec)
        launch = LaunchPlan(argv=[], env=env, fstype=self.fstype, secrets=self.credential_env(env, credentials))
        launch.argv = self.command(spec, self.option_items(spec.options), context, launch)
        return launch

    def command(self, spec: "MountSpec", options: list[str], context: PlanContext, launch: LaunchPlan) -> list[str]:
        """The driver's argv for ``spec``, with ``options`` (:meth:`option_items`, already checked).

        ``launch`` holds the environment and secrets built so far: a driver
        that needs more (rclone's rc password) adds to ``launch.env``,
        ``launch.secrets`` and ``launch.extras``.
        """
        raise NotImplementedError

    @staticmethod
    def spec_flags(spec: "MountSpec", read_only: list[str], allow_other: list[str]) -> list[str]:
        """The driver's words for the spec's ``read_only`` and ``allow_other`` (each only when set)."""
        return (list(read_only) if spec.read_only else []) + (list(allow_other) if spec.allow_other else [])

    def base_env(self, spec: "MountSpec") -> dict[str, str]:
        """obsctl's environment without credentials and systemd's private variables.

        AWS_CA_BUNDLE is dropped for a plain-http endpoint: rclone 1.60 fails
        with ``LoadCustomCABundleError ... unsupported transport`` otherwise
        (ENVIRONMENT.md).
        """
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        if spec.endpoint and spec.endpoint.startswith("http://"):
            env.pop("AWS_CA_BUNDLE", None)
        return env

    def credential_env(self, env: dict[str, str], creds: "Credentials | None") -> list[str]:
        """Put ``creds`` into ``env`` where the driver reads them; returns the secret values
        to redact from the driver's log (empty without credentials: the driver uses its
        profile or instance role).

        Default: the variables of the driver's :attr:`credentials` shape as they are named
        (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN: what the AWS SDKs
        read); rclone overrides it with its remote's own variables.
        """
        if creds is None:
            return []
        env.update(creds.as_env())
        return creds.secrets()

    def forward(self, line: str) -> str | None:
        """The line to copy to obsctl's stderr (journal), or None to drop it."""
        return line

    def is_error(self, line: str) -> bool:
        """True when the line explains a failure (kept for the failure message)."""
        return False

    #: True when the driver logs the outcome of its own start-up check and
    #: the mount is ready only once :meth:`startup_verdict` said ``ok``.
    has_startup_check = False

    def startup_verdict(self, line: str) -> str | None:
        """``"ok"`` / ``"failed"`` when ``line`` ends the driver's start-up check, else None."""
        return None

    def is_critical(self, line: str) -> bool:
        """True for an error line that names the root cause (preferred in failure messages)."""
        return False

    def log_collectors(self, instruments: "Instruments", plan: LaunchPlan) -> list["LogCollector"]:
        """Collectors fed with every log line of the driver."""
        return []

    def polling_collectors(self, instruments: "Instruments", plan: LaunchPlan) -> list["PollingCollector"]:
        """Driver-specific polling collectors (the generic ones are added by the supervisor)."""
        return []

    def verify(self, plan: LaunchPlan, root_empty: bool) -> str | None:
        """Driver-specific check once the mount root answered; a reason to fail, or None.

        ``root_empty`` tells whether the first directory read of the root
        returned nothing (some drivers show a missing bucket as an empty root).
        """
        return None

    def summary(self, line: str) -> str:
        """A human-readable form of an error line (JSON logs -> their message)."""
        return line


class LevelledLog:
    """Log hooks for a driver whose log lines carry a level and a message.

    Mix in before :class:`Driver` (``class X(LevelledLog, Driver)``) and set
    :attr:`log_line`: a compiled regex with the groups ``level`` (e.g.
    ``ERROR``) and ``message``, matched against the stripped line. The driver
    keeps its own :meth:`Driver.forward` and :meth:`Driver.is_error` (which
    levels count and what other output means differ per driver).
    """

    #: the driver's log-line pattern (groups ``level`` and ``message``)
    log_line: ClassVar[re.Pattern[str]]
    #: the level whose line names why the mount failed
    critical_level: ClassVar[str] = "FATAL"

    @classmethod
    def level(cls, line: str) -> str | None:
        """The level of a log line (``ERROR``), or None for output that is not a log line."""
        match = cls.log_line.match(line.strip())
        return match.group("level") if match else None

    def is_critical(self, line: str) -> bool:
        """A line at :attr:`critical_level` names why the mount failed."""
        return self.level(line) == self.critical_level

    def summary(self, line: str) -> str:
        """The message of a log line without time, logger and level; other output stripped."""
        match = self.log_line.match(line.strip())
        return match.group("message") if match else line.strip()


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (kernel-chosen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_option(option: str) -> tuple[str, str | None]:
    """``"key=value"`` -> ``("key", "value")``; ``"key"`` -> ``("key", None)``."""
    key, sep, value = option.partition("=")
    return key.strip(), (value if sep else None)


def long_flag(option: str) -> str:
    """A ``-o`` option as a long command-line flag: ``"stat-cache-ttl=1m"`` and
    ``"--stat-cache-ttl=1m"`` -> ``"--stat-cache-ttl=1m"``; ``"cheap"`` -> ``"--cheap"``.

    The name is kept as written (goofys has ``debug_fuse`` with an underscore);
    Go's flag package and clap both take ``--name=value`` for every long flag.
    """
    return "--" + option.strip().lstrip("-")


def refuse_short_flag(impl: str, option: str) -> str | None:
    """The reason a single-dash option (``-f``, ``-d``) is refused, or None.

    Short flags would bypass the check by name (``-o`` / ``-l`` are other
    options' short forms); obsctl asks for the long form, which the tables check.
    """
    if option.startswith("-") and not option.startswith("--"):
        return f"write the long form (--flag=value or flag=value): {impl} short flags are not checked by name"
    return None


class LongFlagDriver(Driver):
    """A driver whose options are long flags (Go's flag package, clap): goofys, geesefs, mount-s3.

    Options become ``--name[=value]`` (:func:`long_flag`); single-dash flags
    are refused (:func:`refuse_short_flag`).
    """

    def refuse_dash_option(self, option):
        return refuse_short_flag(self.name, option)

    @staticmethod
    def flags(options: list[str]) -> list[str]:
        """``options`` (:meth:`Driver.option_items`) as long flags."""
        return [long_flag(option) for option in options]
