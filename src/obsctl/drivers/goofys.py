"""goofys (kahing/goofys 0.24) in the foreground: argv, environment, log handling.

Facts from goofys's source (github.com/kahing/goofys, commit 350ff31):

* command line: ``goofys [flags] BUCKET[:PREFIX] MOUNTPOINT`` (internal/flags.go,
  urfave/cli: flags before the two arguments); ``-f`` keeps it in the
  foreground, where it logs to stderr (main.go, ``InitLoggers(!flags.Foreground)``).
* credentials: the AWS SDK for Go's default chain, whose first provider is the
  environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
* endpoint / region: ``--endpoint URL``, ``--region R``; path-style requests
  unless ``--subdomain``. FUSE mount options: ``-o ro``, ``-o allow_other``.
* mount type: jacobsa/fuse with ``Subtype: "goofys"`` (api/api.go), shown as
  ``fuse.goofys`` in /proc/self/mountinfo (jacobsa/fuse mount_linux.go:
  ``fstype += "." + subtype``).
* stop: SIGTERM makes goofys unmount its mountpoint and exit (main.go,
  ``registerSIGINTHandler``), unless ``--cache`` runs catfs in between.
* log lines: ``2006/01/02 15:04:05.000000 NAME.LEVEL message`` (api/common/logger.go).

goofys reports no statistics of its own: the kernel collector
(:mod:`obsctl.collectors.fuse_trace`) and the generic collectors observe it.
"""

from __future__ import annotations

import re

from obsctl.drivers.base import (CMDLINE, RELEASE_DRIVERS, SPEC, DocRow, LevelledLog, LongFlagDriver, OptionRule,
                                 Release)

#: Options refused for goofys, from its option reference (internal/flags.go of
#: goofys 0.24). obsctl's own settings: credentials in AWS_* of goofys's
#: environment, endpoint / region / bucket from the mount spec, ``-f`` (the
#: supervisor needs the foreground process and its stderr).
REFUSED_OPTIONS = (
    OptionRule(("sse-c",), CMDLINE + " (--sse-c takes the base64 SSE-C key itself)",
               "goofys has no other way to take an SSE-C key: use --sse or --sse-kms=KEY-ID, or "
               "impl rclone (it reads RCLONE_S3_SSE_CUSTOMER_KEY from its environment)"),
    OptionRule(("profile",), "would make {impl} pick its own credentials profile",
               'use credentials_from = "profile" with profile = "NAME" (--profile NAME): obsctl reads '
               "the profile and passes the keys in the driver's environment"),
    OptionRule(("endpoint", "region"), "would override the endpoint / region obsctl set from the mount spec", SPEC),
    OptionRule(("cache",),
               "would run catfs between the kernel and {impl}, mount on another directory and keep {impl} "
               "from unmounting on SIGTERM (goofys main.go), so obsctl could not stop the mount cleanly",
               "remove it; use impl rclone with cache_mode for a local cache"),
    OptionRule(("f", "help", "h", "version", "v"),
               "is set by obsctl or would make {impl} exit at once (obsctl runs it with -f)", "remove it"),
)

#: ``2026/11/21 21:00:00.000000 main.ERROR message`` (goofys and geesefs logger.go).
LOG_LINE = re.compile(
    r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+ )?(?P<logger>[\w-]+)\.(?P<level>[A-Z]+) (?P<message>.*)$")
_ERROR_LEVELS = {"ERROR", "FATAL", "PANIC"}
_FORWARD_LEVELS = _ERROR_LEVELS | {"WARNING", "INFO"}


class GoofysDriver(LevelledLog, LongFlagDriver):
    """``goofys -f [--endpoint E] [--region R] [-o ro] [-o allow_other] [OPTIONS] BUCKET[:PREFIX] MOUNTPOINT``."""

    name = "goofys"
    #: ``main.FATAL Mounting file system: ...`` names why the mount failed (main.go)
    log_line = LOG_LINE
    binary = "goofys"
    installed_by = RELEASE_DRIVERS
    refused_options = REFUSED_OPTIONS
    #: The type in /proc/self/mountinfo (jacobsa/fuse: ``fuse.`` + Subtype).
    fstype = "fuse.goofys"
    #: A bare binary attached to the GitHub release (no checksum file published).
    release = Release("0.24.0", {"x86_64": "https://github.com/kahing/goofys/releases/download/v0.24.0/goofys"})
    doc = DocRow(
        binary="goofys 0.24 (release file)",
        runs="`goofys -f [--endpoint=ENDPOINT] [--region=REGION] [-o ro] [-o allow_other] [OPTIONS] "
             "BUCKET[:PREFIX] MP`, keys in AWS_* of its environment",
        collectors="proc_io, fuse_conn, probe (goofys reports no numbers of its own)")

    def source_arg(self, bucket: str, prefix: str) -> str:
        """``BUCKET`` or ``BUCKET:PREFIX`` (goofys and geesefs usage)."""
        return bucket + (f":{prefix}" if prefix else "")

    def own_flags(self, spec) -> list[str]:
        """Flags obsctl adds after ``-f`` and the mapped spec fields (geesefs: --print-stats)."""
        return []

    def command(self, spec, options, context, launch):
        bucket, prefix = spec.bucket_and_prefix()
        argv = [self.binary, "-f"]
        if spec.endpoint:
            argv.append(f"--endpoint={spec.endpoint}")
        if spec.region:
            argv.append(f"--region={spec.region}")
        argv += self.spec_flags(spec, ["-o", "ro"], ["-o", "allow_other"])
        argv += self.own_flags(spec)
        argv += self.flags(options)
        return argv + [self.source_arg(bucket, prefix), spec.mountpoint]

    def forward(self, line):
        """Info and above (goofys logs little at info: mount, signals, unmount); other
        output (a usage error, a Go panic) is forwarded too."""
        level = self.level(line)
        return line if level is None or level in _FORWARD_LEVELS else None

    def is_error(self, line):
        level = self.level(line)
        if level is None:  # usage errors and panics are not logrus lines
            return bool(line.strip())
        return level in _ERROR_LEVELS
