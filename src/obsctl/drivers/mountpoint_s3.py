"""Mountpoint for Amazon S3 (``mount-s3``, awslabs/mountpoint-s3 1.x) in the foreground.

Facts from mountpoint-s3's source (github.com/awslabs/mountpoint-s3, commit 58817ca):

* command line (mountpoint-s3/src/cli.rs, clap): ``mount-s3 [OPTIONS] BUCKET
  MOUNTPOINT`` with ``--foreground``, ``--prefix P/`` (must end in ``/``),
  ``--region``, ``--endpoint-url`` (+ ``--force-path-style`` for a non-AWS
  endpoint), ``--read-only``, ``--allow-other``, ``--otlp-endpoint``,
  ``--otlp-export-interval`` (seconds, >= 1).
* credentials: the AWS default chain; doc/CONFIGURATION.md names the
  environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
  (AWS_SESSION_TOKEN with them for temporary keys).
* mount type: fuser mounts with ``FSName("mountpoint-s3")`` and no subtype
  (mountpoint-s3-fs/src/fuse/config.rs), so /proc/self/mountinfo shows type
  ``fuse`` with source ``mountpoint-s3``.
* logs: in the foreground, tracing's text format on stdout
  (``2026-11-21T21:00:00.000000Z  WARN ThreadId(01) target: message``) and,
  without ``--log-directory``, syslog too (mountpoint-s3-fs/src/logging.rs);
  a start-up failure ends with ``Error: ...`` on stderr (anyhow from main).
  ``... is mounted at MOUNTPOINT`` on stdout once mounted (run.rs).
* own metrics: ``--otlp-endpoint URL`` exports its metrics (FUSE and S3
  request counts and latencies, throughput, cache) with OTLP http/protobuf
  only, delta temporality, exponential histograms (doc/METRICS.md); it
  appends ``/v1/metrics`` to an endpoint that does not end with it
  (mountpoint-s3-fs/src/metrics_otel.rs). obsctl points it at the mount's
  ``[telemetry.metrics]`` endpoint when that endpoint speaks http/protobuf;
  for a gRPC endpoint it cannot, and the kernel collector is the FUSE source.
"""

from __future__ import annotations

import re

from obsctl.drivers.base import RELEASE_DRIVERS, SPEC, DocRow, LongFlagDriver, OptionRule, PlanContext, Release

_PROFILE = ('use credentials_from = "profile" with profile = "NAME" (--profile NAME): obsctl reads the profile '
            "and passes the keys in the driver's environment")

#: Options refused for mount-s3, from its option reference (mountpoint-s3/src/cli.rs).
REFUSED_OPTIONS = (
    OptionRule(("profile",), "would make {impl} pick its own credentials profile", _PROFILE),
    OptionRule(("endpoint-url", "region", "prefix"),
               "would override the endpoint / region / prefix obsctl set from the mount spec", SPEC),
    OptionRule(("otlp-endpoint", "otlp-export-interval"),
               "would override where obsctl points {impl}'s own OTLP export",
               'set [telemetry.metrics] otlp_endpoint with otlp_protocol = "http/protobuf" (and '
               "export_interval_seconds); obsctl passes them to mount-s3"),
    OptionRule(("log-directory", "l", "no-log"),
               "would move or turn off {impl}'s log, which obsctl reads on stdout for failure messages",
               "remove it; obsctl forwards mount-s3's warnings and errors to the journal"),
    OptionRule(("foreground", "f", "help", "h", "version", "v"),
               "is set by obsctl or would make {impl} exit at once (obsctl runs it with --foreground)",
               "remove it"),
)

#: tracing_subscriber's default text format: time, level, thread id, target.
_LOG_LINE = re.compile(r"^\S+Z\s+(?P<level>TRACE|DEBUG|INFO|WARN|ERROR)\s+(?:ThreadId\(\d+\)\s+)?(?P<rest>.*)$")
#: The start-up failure anyhow prints from main (``Error: failed to ...``) and its ``Caused by:`` chain.
_FATAL_PREFIXES = ("Error: ",)


class MountpointS3Driver(LongFlagDriver):
    """``mount-s3 --foreground [--region R] [--endpoint-url E --force-path-style] [--prefix P/]
    [--read-only] [--allow-other] [--otlp-endpoint U --otlp-export-interval N] [OPTIONS] BUCKET MP``."""

    name = "mountpoint-s3"
    binary = "mount-s3"
    installed_by = RELEASE_DRIVERS
    refused_options = REFUSED_OPTIONS
    #: fuser with ``FSName("mountpoint-s3")`` and no subtype: plain ``fuse``.
    fstype = "fuse"
    #: A tar archive whose bin/ holds the program; signed (FILE.asc), no checksum (doc/INSTALL.md).
    release = Release("1.24.0", {
        "x86_64": "https://s3.amazonaws.com/mountpoint-s3-release/1.24.0/x86_64/mount-s3-1.24.0-x86_64.tar.gz"},
        member="bin/mount-s3")
    doc = DocRow(
        binary="mount-s3 1.x (release file)",
        runs="`mount-s3 --foreground [--region=REGION] [--endpoint-url=ENDPOINT --force-path-style] "
             "[--prefix=PREFIX/] [--read-only] [--allow-other] [--otlp-endpoint=URL --otlp-export-interval=N] "
             "[OPTIONS] BUCKET MP`, keys in AWS_*",
        collectors="its own OTLP export, proc_io, fuse_conn, probe",
        mount_type="fuse (source `mountpoint-s3`, no subtype)")

    @staticmethod
    def otlp_endpoint(context: PlanContext) -> str | None:
        """The endpoint mount-s3 exports its own metrics to, or None.

        The mount's ``[telemetry.metrics]`` endpoint when metrics are exported
        and its protocol is ``http/protobuf`` (the only one mount-s3 speaks);
        None in mode ``none``, when the context allows no listener, for a gRPC
        endpoint, or when no endpoint is set (obsctl does not guess what the
        OTEL_* environment would pick).
        """
        cfg = context.telemetry
        if cfg is None or not cfg.exports_metrics or not context.listen:
            return None
        endpoint = cfg.endpoint(cfg.metrics)
        if not endpoint or cfg.protocol(cfg.metrics, "metrics") != "http/protobuf":
            return None
        return endpoint

    def command(self, spec, options, context, launch):
        bucket, prefix = spec.bucket_and_prefix()
        argv = [self.binary, "--foreground"]
        if spec.region:
            argv.append(f"--region={spec.region}")
        if spec.endpoint:
            argv += [f"--endpoint-url={spec.endpoint}", "--force-path-style"]
        if prefix:
            argv.append(f"--prefix={prefix}/")
        argv += self.spec_flags(spec, ["--read-only"], ["--allow-other"])
        endpoint = self.otlp_endpoint(context)
        launch.extras["otlp_endpoint"] = endpoint
        if endpoint:
            assert context.telemetry is not None
            interval = max(1, round(context.telemetry.metrics.export_interval_seconds))
            argv += [f"--otlp-endpoint={endpoint}", f"--otlp-export-interval={interval}"]
        argv += self.flags(options)
        return argv + [bucket, spec.mountpoint]

    @staticmethod
    def level(line: str) -> str | None:
        """The tracing level of a mount-s3 log line (``WARN``), or None for other output."""
        match = _LOG_LINE.match(line.strip())
        return match.group("level") if match else None

    def forward(self, line):
        """Warnings, errors, and the lines that are not tracing output (``Error: ...``, ``... is mounted at``)."""
        level = self.level(line)
        return line if level is None or level in ("WARN", "ERROR") else None

    def is_error(self, line):
        level = self.level(line)
        if level is None:
            return line.startswith(_FATAL_PREFIXES) or line.startswith("Caused by") or line.startswith("    ")
        return level == "ERROR"

    def is_critical(self, line):
        """``Error: failed to ...`` is anyhow's report of why mount-s3 did not start."""
        return line.startswith(_FATAL_PREFIXES)

    def summary(self, line):
        match = _LOG_LINE.match(line.strip())
        return match.group("rest") if match else line.strip()
