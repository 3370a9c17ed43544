"""s3fs-fuse (1.90+) in the foreground: argv, environment, log handling, collectors.

Credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN of s3fs's environment, which s3fs reads before any
passwd file. ``-o dbglevel=dbg -o curldbg`` makes s3fs log each HTTP
request and response with timestamps, which :class:`~obsctl.collectors.
s3fs_log.S3fsLogCollector` pairs into request latency and status codes.
"""

from __future__ import annotations

from obsctl.drivers.base import CREDS, DISTRO_DRIVERS, DocRow, Driver, OptionRule


#: Options refused for s3fs, from the s3fs 1.90 man page (doc/man/s3fs.1,
#: OPTIONS). obsctl's own settings are: credentials in AWS_* of s3fs's
#: environment, url / endpoint / use_path_request_style from the mount spec,
#: ``-f -o dbglevel=dbg -o curldbg`` on stdout (collectors and redaction read
#: it). SSE-C keys stay allowed through ``use_sse=custom:FILE`` / ``load_sse_c=FILE``:
#: the key is in a 0600 file, only its path is on the command line.
REFUSED_OPTIONS = (
    OptionRule(("passwd-file",),
               "would make {impl} read keys from a clear-text passwd file instead of what obsctl passes it",
               CREDS),
    OptionRule(("profile",), "would make {impl} pick its own credentials profile",
               'use credentials_from = "profile" with profile = "NAME" (--profile NAME)'),
    OptionRule(("iam-role", "ecs", "imdsv1only", "ibm-iam-auth", "ibm-iam-endpoint"),
               "would switch {impl} to another credential source than the one obsctl passes it "
               "(imdsv1only also drops IMDSv2's protection)",
               "obsctl does not support instance or container credentials for s3fs; " + CREDS),
    OptionRule(("url", "host", "endpoint", "bucket"),
               "would override the endpoint / region / bucket obsctl set from the mount spec",
               "set endpoint, region and source in the mount spec (--endpoint, --region, SOURCE)"),
    OptionRule(("dbglevel", "curldbg", "logfile", "no-time-stamp-msg"),
               "would change or move s3fs's debug log, which obsctl reads on stdout for its metrics and "
               "redacts before it reaches the journal (curldbg=body would log object data)",
               "remove it; obsctl forwards s3fs's warnings and errors to the journal"),
    OptionRule(("no-check-certificate", "ssl-verify-hostname"),
               "would turn off TLS certificate or host name checks of the endpoint",
               "add the endpoint's CA to the system trust store (update-ca-certificates)"),
)

_ERROR_MARKERS = ("[ERR]", "[CRT]", "s3fs:")
_FORWARD_MARKERS = ("[ERR]", "[CRT]", "[WAN]", "s3fs:")
_STARTUP_FAILURES = ("CURLE_COULDNT_CONNECT", "CURLE_COULDNT_RESOLVE", "bucket or key not found",
                     "s3fs_exit_fuseloop", "unable to connect", "Check bucket failed")


class S3fsDriver(Driver):
    """``s3fs BUCKET[:/PREFIX] MOUNTPOINT -f -o ...``."""

    name = "s3fs"
    binary = "s3fs"
    installed_by = DISTRO_DRIVERS
    refused_options = REFUSED_OPTIONS
    fstype = "fuse.s3fs"
    #: s3fs logs FUSE callbacks once at entry (no latency); read/write sizes at dbglevel=dbg only.
    log_source = "s3fs_log"
    log_gives = frozenset({"fs_ops", "fs_bytes"})
    doc = DocRow(
        binary="s3fs >= 1.90 (Debian)",
        runs="`s3fs BUCKET[:/PREFIX] MP -f -o dbglevel=dbg -o curldbg [-o url=ENDPOINT -o use_path_request_style] "
             "[-o endpoint=REGION] [-o ro] [-o allow_other]`",
        collectors="s3fs_log, proc_io, fuse_conn, probe")

    def option_items(self, options):
        """Each s3fs option once: ``["-o", "multireq_max=8"]`` is the option ``multireq_max=8``
        (obsctl adds the ``-o``), and ``-o a,b`` is two options to s3fs (FUSE splits on commas).
        A lone ``-o`` at the end stays, and is refused by :meth:`refuse_dash_option`."""
        items: list[str] = []
        for index, option in enumerate(options):
            if option == "-o" and index + 1 < len(options):
                continue
            items += [item for item in option.split(",") if item.strip()]
        return items

    def refuse_dash_option(self, option):
        """s3fs takes its options as ``-o NAME[=VALUE]``; a raw flag (``-d``, ``-opasswd_file=F``)
        would bypass the name check, and obsctl already runs it with ``-f``."""
        if option.startswith("-"):
            return "give s3fs options as NAME[=VALUE] (obsctl passes each with -o and runs s3fs with -f)"
        return None

    def command(self, spec, options, context, launch):
        bucket, prefix = spec.bucket_and_prefix()
        source = bucket + (f":/{prefix}" if prefix else "")
        argv = [self.binary, source, spec.mountpoint, "-f", "-o", "dbglevel=dbg", "-o", "curldbg"]
        if spec.endpoint:
            argv += ["-o", f"url={spec.endpoint}", "-o", "use_path_request_style"]
        if spec.region:
            argv += ["-o", f"endpoint={spec.region}"]
        argv += self.spec_flags(spec, ["-o", "ro"], ["-o", "allow_other"])
        if spec.allow_non_empty:  # s3fs (and libfuse 2) refuse a non-empty mountpoint without it
            argv += ["-o", "nonempty"]
        for option in options:
            argv += ["-o", option]
        return argv

    def forward(self, line):
        return line if any(m in line for m in _FORWARD_MARKERS) else None

    has_startup_check = True

    def startup_verdict(self, line):
        """s3fs checks the bucket (GET /BUCKET/) from its FUSE init, after the
        mount appears: the first ``RequestPerform: HTTP response code N`` is
        that check's answer (2xx ok, anything else failed); ``s3fs_check_service``
        and ``s3fs_exit_fuseloop`` errors, ``CURLE_COULDNT_CONNECT`` and
        ``bucket or key not found`` end it too."""
        if "RequestPerform" in line and "HTTP response code" in line:
            code = line.split("HTTP response code", 1)[1].strip()[:1]
            return "ok" if code == "2" else "failed"
        if any(marker in line for marker in _STARTUP_FAILURES):
            return "failed"
        return None

    def is_error(self, line):
        return any(m in line for m in _ERROR_MARKERS) and "LowSetLogLevel" not in line

    def is_critical(self, line):
        """The line naming the root cause: the HTTP status of a failed request,
        a connection error, a missing bucket, or s3fs's own fatal message."""
        if "LowSetLogLevel" in line or "retry to connect by signature version 2" in line:
            return False
        return ("HTTP response code" in line or "CURLE_" in line or "bucket or key not found" in line
                or line.startswith("s3fs:"))

    def summary(self, line):
        """``2026-...Z [CRT] s3fs.cpp:fn(123): message`` -> ``message``."""
        head, sep, message = line.partition("): ")
        message = message if sep and "[" in head else line
        return message.split(" Body Text:", 1)[0].strip()

    def log_collectors(self, instruments, plan):
        from obsctl.collectors.s3fs_log import S3fsLogCollector  # start-up cost: collectors import the OpenTelemetry API, built once telemetry runs
        return [S3fsLogCollector(instruments)]
