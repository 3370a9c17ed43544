"""rclone mount (rclone 1.60+): argv, environment, log handling, collectors.

The S3 remote is defined entirely by ``RCLONE_CONFIG_OBSCTL_*`` environment
variables (rclone's documented "config file from the environment" feature)
with ``--config ""`` so rclone neither reads nor writes a config file. The rc
API listens on a free loopback port with a random user and password that
also travel only in the environment (``RCLONE_RC_USER``, ``RCLONE_RC_PASS``).

Logging: ``--use-json-log --log-level DEBUG`` makes rclone log every FUSE
operation on entry and exit, which :class:`~obsctl.collectors.rclone_log.
RcloneLogCollector` pairs into per-operation latency and byte counts. When
the kernel gives all of those (:attr:`obsctl.drivers.PlanContext.kernel_complete`, Linux
6.18+) rclone runs at ``INFO`` instead: its other sources (rc API, errors in
the log) need no more, and debug logging costs rclone CPU (bench/fuse_trace.py).
"""

from __future__ import annotations

import json
import secrets as _secrets
import subprocess

from obsctl.drivers.base import CMDLINE, CREDS, DISTRO_DRIVERS, DocRow, Driver, OptionRule, free_loopback_port, split_option
from obsctl.redact import redact

REMOTE = "obsctl"
#: rclone reads the remote ``obsctl:`` from these variables ("config file from the environment").
_ENV_PREFIX = f"RCLONE_CONFIG_{REMOTE.upper()}_"
#: Backend flag prefixes of rclone 1.60 other than s3 (docs/content/flags.md, "Backend Flags").
_OTHER_BACKENDS = (
    "acd", "alias", "azureblob", "b2", "box", "cache", "chunker", "combine", "compress", "crypt", "drive",
    "dropbox", "fichier", "filefabric", "ftp", "gcs", "gphotos", "hasher", "hdfs", "hidrive", "http",
    "internetarchive", "jottacloud", "koofr", "local", "mailru", "mega", "netstorage", "onedrive", "oos",
    "opendrive", "pcloud", "premiumizeme", "putio", "qingstor", "seafile", "sftp", "sharefile", "sia", "skip",
    "smb", "storj", "sugarsync", "swift", "union", "uptobox", "webdav", "yandex", "zoho")
_FORWARD_LEVELS = {"critical", "error", "warning", "notice"}
_ERROR_LEVELS = {"critical", "error", "fatal"}


#: Options refused for rclone, from the rclone 1.60 option reference
#: (docs/content/flags.md: global and s3 backend flags; docs/content/commands/
#: rclone_mount.md: mount flags). obsctl's own flags are: the remote in
#: RCLONE_CONFIG_OBSCTL_* with ``--config ""``, ``--use-json-log --log-level
#: DEBUG`` on stdout (collectors and redaction read it), the rc on 127.0.0.1
#: with a random user/password, rclone in the foreground.
REFUSED_OPTIONS = (
    OptionRule(("s3-access-key-id", "s3-secret-access-key", "s3-session-token"), CMDLINE, CREDS),
    OptionRule(("s3-sse-customer-key", "s3-sse-customer-key-base64", "s3-sse-customer-key-md5"), CMDLINE,
               "give rclone the SSE-C key in obsctl's environment instead (rclone reads every flag from "
               "RCLONE_<FLAG>, e.g. RCLONE_S3_SSE_CUSTOMER_KEY, set from a systemd credential), never in -o"),
    OptionRule(("header", "header-upload", "header-download"),
               "can put an Authorization or other secret header " + "on the {impl} command line (/proc/PID/cmdline)",
               "remove it; obsctl authenticates with credentials_from"),
    OptionRule(("s3-env-auth", "s3-profile", "s3-shared-credentials-file", "password-command", "ask-password"),
               "would make {impl} take credentials from somewhere other than what obsctl passes it",
               'use credentials_from = "profile" with profile = "NAME" (obsctl reads the shared '
               "credentials file and passes the keys in rclone's environment)"),
    OptionRule(("config",),
               'would replace obsctl\'s --config "" (the remote is defined in rclone\'s environment) with a '
               "config file that can redefine the remote or hold keys in clear text",
               "set endpoint, region, profile and cache_mode in the mount spec; other rclone settings as -o flags"),
    OptionRule(("s3-endpoint", "s3-provider", "s3-region"),
               "would override the endpoint / region obsctl configured",
               "set endpoint and region in the mount spec (--endpoint, --region)"),
    OptionRule(("rc",),
               "would change the rc API that obsctl runs for its collectors on 127.0.0.1 with a random user "
               "and password (an rc beyond loopback or without auth lets others call operations/* and "
               "delete objects)",
               "remove it; obsctl's rc is private to the mount (docs/security.md)", prefix=True),
    OptionRule(("log-file", "log-level", "log-format", "log-systemd", "syslog", "syslog-facility",
                "use-json-log", "verbose", "quiet", "stats-log-level"),
               "would change or move rclone's log, which obsctl reads on stdout for its metrics and "
               "redacts before it reaches the journal",
               "remove it; obsctl forwards rclone's warnings and errors to the journal"),
    OptionRule(("dump",), "would log authentication data (--dump auth)",
               "use --dump headers (rclone removes Authorization unless auth is dumped)", values=("auth",)),
    OptionRule(("daemon",), "would put rclone in the background, out of obsctl's supervision",
               "remove it; obsctl runs the mount in the background itself (systemd unit)"),
    OptionRule(("no-check-certificate",), "would turn off TLS certificate checks of the endpoint",
               "give the endpoint's CA with --ca-cert=/path/ca.pem"),
    OptionRule(_OTHER_BACKENDS,
               "is a flag of another rclone backend (obsctl's remote is type s3): it has no effect and "
               "several of them carry passwords", "remove it", prefix=True,
               unless=("cache-dir",)),  # a global flag, not the cache backend's
)


class RcloneDriver(Driver):
    """``rclone mount obsctl:BUCKET/PREFIX MOUNTPOINT`` in the foreground."""

    name = "rclone"
    binary = "rclone"
    installed_by = DISTRO_DRIVERS
    refused_options = REFUSED_OPTIONS
    fstype = "fuse.rclone"
    #: ``--vfs-cache-mode`` (rclone docs/content/commands/rclone_mount.md, "VFS File Caching").
    cache_modes = ("off", "minimal", "writes", "full")
    #: Every FUSE operation logged on entry and exit at DEBUG (ENVIRONMENT.md): all four quantities.
    log_source = "rclone_log"
    log_gives = frozenset({"fs_ops", "fs_latency", "fs_bytes", "fs_errors"})
    doc = DocRow(
        binary="rclone >= 1.60 (Debian)",
        runs='`rclone mount obsctl:BUCKET[/PREFIX] MP --config "" --use-json-log --log-level INFO` (kernel '
             "6.18+, FUSE numbers from the kernel) or `DEBUG` (older kernels) `[--rc --rc-addr 127.0.0.1:PORT "
             "--rc-enable-metrics (not in telemetry mode none)] [--read-only] [--allow-other] "
             "[--vfs-cache-mode M]`, remote from `RCLONE_CONFIG_OBSCTL_*`",
        collectors="rclone_log, rclone_rc, proc_io, fuse_conn, probe")
    #: rclone mount (bazil.org/fuse) answers every GETXATTR with EIO, "function not
    #: implemented" -- seen with rclone v1.60.1 ``--debug-fuse``: ``<- Getxattr ...
    #: "security.capability"`` / ``-> Getxattr error=EIO: function not implemented``. The
    #: kernel asks for security.capability before each write and goes on (the write
    #: succeeds): an answer, not a failed operation
    #: (tests/fixtures/fuse_trace/rclone-write-getxattr-eio.txt).
    protocol_answers = frozenset({("getxattr", "eio")})

    def refuse_dash_option(self, option):
        """Short flags (``-v``, ``-vv``, ``-q``) change the log obsctl reads; refuse every
        single-dash flag and ask for the long form, which the table checks by name."""
        if option.startswith("-") and not option.startswith("--"):
            return "write the long form (--flag or flag=value): short flags such as -v / -q change rclone's log"
        return None

    def credential_env(self, env, creds):
        """The keys in the remote's own variables (``RCLONE_CONFIG_OBSCTL_*``), with the
        remote's type, provider, endpoint and region set by :meth:`command`."""
        if creds is None:
            return []
        env[_ENV_PREFIX + "ACCESS_KEY_ID"] = creds.access_key_id
        env[_ENV_PREFIX + "SECRET_ACCESS_KEY"] = creds.secret_access_key
        if creds.session_token:
            env[_ENV_PREFIX + "SESSION_TOKEN"] = creds.session_token
        return list(creds.secrets())

    def command(self, spec, options, context, launch):
        bucket, prefix = spec.bucket_and_prefix()
        env = launch.env
        env.update({
            _ENV_PREFIX + "TYPE": "s3",
            _ENV_PREFIX + "PROVIDER": "Other" if spec.endpoint else "AWS",
            _ENV_PREFIX + "ENV_AUTH": "false",
        })
        if spec.endpoint:
            env[_ENV_PREFIX + "ENDPOINT"] = spec.endpoint
        if spec.region:
            env[_ENV_PREFIX + "REGION"] = spec.region
        remote = f"{REMOTE}:{bucket}" + (f"/{prefix}" if prefix else "")
        argv = [self.binary, "mount", remote, spec.mountpoint, "--config", "",
                "--use-json-log", "--log-level", "INFO" if context.kernel_complete else "DEBUG"]
        if context.listen:
            rc_port = free_loopback_port()
            rc_user, rc_pass = "obsctl", _secrets.token_urlsafe(24)
            env["RCLONE_RC_USER"], env["RCLONE_RC_PASS"] = rc_user, rc_pass
            launch.secrets.append(rc_pass)
            argv += ["--rc", "--rc-addr", f"127.0.0.1:{rc_port}", "--rc-enable-metrics"]
            launch.extras.update(rc_url=f"http://127.0.0.1:{rc_port}", rc_auth=(rc_user, rc_pass))
        argv += self.spec_flags(spec, ["--read-only"], ["--allow-other"])
        if spec.allow_non_empty:  # rclone refuses a non-empty mountpoint itself without it
            argv.append("--allow-non-empty")
        if spec.cache_mode:
            argv += ["--vfs-cache-mode", spec.cache_mode]
        return argv + [self._flag(option) for option in options]

    @staticmethod
    def _flag(option: str) -> str:
        """One option (of :meth:`option_items`) -> one rclone flag: ``ro`` -> ``--read-only``,
        ``allow_other`` -> ``--allow-other``, ``key_name=v`` -> ``--key-name=v``, ``--flag[=v]`` unchanged."""
        if option.startswith("-"):
            return option
        key, value = split_option(option)
        if key == "ro":
            return "--read-only"
        if key == "allow_other":
            return "--allow-other"
        key = key.replace("_", "-")
        return f"--{key}" if value is None else f"--{key}={value}"

    @staticmethod
    def _parse(line: str) -> dict | None:
        if not line.startswith("{"):
            return None
        try:
            record = json.loads(line)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def forward(self, line):
        record = self._parse(line)
        if record is None:  # plain lines come before JSON logging starts
            return None if (" DEBUG : " in line or " INFO  : " in line) else line
        return line if record.get("level") in _FORWARD_LEVELS else None

    def is_error(self, line):
        record = self._parse(line)
        if record is None:
            return bool(line.strip()) and " DEBUG : " not in line and " INFO  : " not in line
        return record.get("level") in _ERROR_LEVELS

    def summary(self, line):
        record = self._parse(line)
        if record is None:
            return line.strip()
        obj = record.get("object")
        return f"{obj}: {record.get('msg', '')}".strip() if obj else str(record.get("msg", "")).strip()

    def verify(self, plan, root_empty):
        """A missing bucket shows as an empty root in rclone's VFS; ask rclone itself.

        Only when the root listed empty: ``rclone lsjson --max-depth 1`` of
        the same remote, with the same environment, in a child process (no
        listener needed). rclone exits 3 ("directory not found") for a missing
        bucket or prefix; the listing of an empty one costs one request.
        """
        if not root_empty:
            return None
        remote = plan.argv[2]
        try:
            proc = subprocess.run([self.binary, "lsjson", "--config", "", "--max-depth", "1", "--no-modtime",
                                   "--no-mimetype", remote], env=plan.env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return f"rclone could not list {remote.split(':', 1)[1]} within 30 s"
        if proc.returncode == 0:
            return None
        last = redact((proc.stderr.strip().splitlines() or [""])[-1], plan.secrets)
        if proc.returncode == 3 or "directory not found" in last:
            return f"bucket or prefix {remote.split(':', 1)[1]} does not exist ({last})"
        return f"rclone cannot list {remote.split(':', 1)[1]}: {last}"

    def log_collectors(self, instruments, plan):
        from obsctl.collectors.rclone_log import RcloneLogCollector  # start-up cost: collectors import the OpenTelemetry API, built once telemetry runs
        return [RcloneLogCollector(instruments)]

    def polling_collectors(self, instruments, plan):
        if "rc_url" not in plan.extras:
            return []
        from obsctl.collectors.rclone_rc import RcloneRcCollector  # start-up cost: collectors import the OpenTelemetry API, built once telemetry runs
        return [RcloneRcCollector(instruments, plan.extras["rc_url"], auth=plan.extras["rc_auth"])]
