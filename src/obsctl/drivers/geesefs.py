"""geesefs (yandex-cloud/geesefs 0.43) in the foreground: argv, environment, logs, stats.

geesefs is a goofys fork and keeps its command line, credential chain, log
format and SIGTERM handling (see :mod:`obsctl.drivers.goofys`). Facts from
geesefs's own source (github.com/yandex-cloud/geesefs, commit 6e2bbab):

* flags: core/cfg/flags.go. ``--endpoint`` defaults to Yandex Object Storage
  (``https://storage.yandexcloud.net``); without an endpoint in the mount spec
  obsctl passes ``https://s3.amazonaws.com``, the AWS value its usage text
  names. ``--log-file`` defaults to stderr in the foreground.
* mount type: ``Subtype: "geesefs"`` (core/goofys_fuse.go) -> ``fuse.geesefs``.
* ``--print-stats DURATION`` (default 30s) logs, every DURATION, one line
  ``I/O: R read/s, H % hits, W write/s; metadata: ...`` (core/goofys.go,
  ``StatPrinter``): :class:`~obsctl.collectors.geesefs_log.GeesefsStatsCollector`
  turns its read rate and hit ratio into cache hits and misses. obsctl sets
  the interval (:data:`STATS_SECONDS`) so the rates can be turned back into counts.
"""

from __future__ import annotations

from obsctl.drivers.base import CMDLINE, CREDS, RELEASE_DRIVERS, SPEC, DocRow, OptionRule, Release
from obsctl.drivers.goofys import GoofysDriver  # geesefs is a goofys fork: same command line and logs

#: ``--print-stats`` interval obsctl sets (seconds): the window of each stats line.
STATS_SECONDS = 10
#: Endpoint when the mount spec has none (geesefs's own usage text: "Possible
#: values: http://127.0.0.1:8081/, https://s3.amazonaws.com").
AWS_ENDPOINT = "https://s3.amazonaws.com"

#: Options refused for geesefs, from core/cfg/flags.go of geesefs 0.43.
REFUSED_OPTIONS = (
    OptionRule(("sse-c",), CMDLINE + " (--sse-c takes the base64 SSE-C key itself)",
               "geesefs has no other way to take an SSE-C key: use --sse or --sse-kms=KEY-ID, or "
               "impl rclone (it reads RCLONE_S3_SSE_CUSTOMER_KEY from its environment)"),
    OptionRule(("profile", "shared-config"),
               "would make {impl} read credentials from a profile or shared config file of its own choosing",
               'use credentials_from = "profile" with profile = "NAME" (--profile NAME): obsctl reads '
               "the profile and passes the keys in the driver's environment"),
    OptionRule(("iam",), "would switch {impl} to a metadata-service credential source instead of what obsctl "
               "passes it", "obsctl does not support instance credentials for geesefs; " + CREDS, prefix=True),
    OptionRule(("endpoint", "region", "project-id"),
               "would override the endpoint / region / bucket obsctl set from the mount spec", SPEC),
    OptionRule(("no-verify-ssl",), "would turn off TLS certificate checks of the endpoint",
               "add the endpoint's CA to the system trust store (update-ca-certificates)"),
    OptionRule(("log-file", "print-stats"),
               "would move {impl}'s log or change its stats interval; obsctl reads both on stderr for its "
               "metrics and failure messages", "remove it"),
    OptionRule(("pprof", "cluster", "cluster-me", "cluster-peer", "grpc-reflection", "debug-grpc"),
               "would open a network listener (pprof profiler or cluster gRPC) without authentication",
               "remove it; obsctl runs one geesefs per mount, not a cluster"),
    OptionRule(("f", "help", "h", "version", "v"),
               "is set by obsctl or would make {impl} exit at once (obsctl runs it with -f)", "remove it"),
)

_STATS_MARK = "I/O: "


class GeesefsDriver(GoofysDriver):
    """``geesefs -f --endpoint E [--region R] [-o ro] [-o allow_other] --print-stats 10s [OPTIONS] BUCKET[:PREFIX] MP``."""

    name = "geesefs"
    binary = "geesefs"
    installed_by = RELEASE_DRIVERS
    refused_options = REFUSED_OPTIONS
    fstype = "fuse.geesefs"
    #: Bare binaries attached to the GitHub release (the release workflow uploads no checksum).
    release = Release("0.43.2", {
        "x86_64": "https://github.com/yandex-cloud/geesefs/releases/download/v0.43.2/geesefs-linux-amd64",
        "aarch64": "https://github.com/yandex-cloud/geesefs/releases/download/v0.43.2/geesefs-linux-arm64"})
    doc = DocRow(
        binary="geesefs 0.43 (release file)",
        runs="`geesefs -f --endpoint=ENDPOINT [--region=REGION] [-o ro] [-o allow_other] --print-stats=10s "
             "[OPTIONS] BUCKET[:PREFIX] MP` (ENDPOINT `https://s3.amazonaws.com` when the spec has none: "
             "geesefs's own default is Yandex Object Storage), keys in AWS_*",
        collectors="geesefs_log (cache hits/misses from `--print-stats`), proc_io, fuse_conn, probe")

    def own_flags(self, spec):
        flags = [f"--print-stats={STATS_SECONDS}s"]
        if not spec.endpoint:
            flags.insert(0, f"--endpoint={AWS_ENDPOINT}")
        return flags

    def forward(self, line):
        """As goofys, without the stats lines (one every :data:`STATS_SECONDS`; they become metrics)."""
        if _STATS_MARK in line and self.level(line) == "INFO":
            return None
        return super().forward(line)

    def log_collectors(self, instruments, plan):
        from obsctl.collectors.geesefs_log import GeesefsStatsCollector  # start-up cost: collectors import the OpenTelemetry API, built once telemetry runs
        return [GeesefsStatsCollector(instruments, STATS_SECONDS)]
