"""s3fs-fuse (1.90+) in the foreground: argv, environment, log handling, collectors.

Credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN of s3fs's environment, which s3fs reads before any
passwd file. ``-o curldbg`` makes s3fs log each HTTP request and response
with timestamps, which :class:`~obsctl.collectors.s3fs_log.S3fsLogCollector`
pairs into request latency and status codes.

Log level (:data:`LOG_LEVEL_KERNEL`, :data:`LOG_LEVEL_LOG`): where the
kernel source gives every FUSE quantity (:attr:`obsctl.drivers.PlanContext.kernel_complete`:
the eBPF source loads, or tracefs pairs on 6.18+), s3fs runs at
``dbglevel=warn``: its FUSE callback lines (``[INF] s3fs.cpp:s3fs_OP``, and
at ``dbg`` the read/write sizes) would only feed numbers the kernel already
owns. What obsctl still reads from the log does not need ``info``, in s3fs
1.90's source (s3fs-fuse/s3fs-fuse tag v1.90):

* the ``[CURL DBG]`` request/response lines are printed by
  ``S3FS_LOW_CURLDBG`` (src/s3fs_logger.h:170-179), which checks no log level
  at all, only ``curldbg`` (``S3fsCurl::is_verbose``, src/curl.cpp:1968-1971);
* ``[ERR] ... ### CURLE_...`` and the failed-request lines of
  ``RequestPerform`` (src/curl.cpp:2343-2394) are ``S3FS_PRN_ERR``, warnings
  ``S3FS_PRN_WARN`` (src/s3fs_logger.h:233-234): kept at ``warn``, so
  s3fs's warnings still reach the journal (:meth:`S3fsDriver.forward`);
* the one ``info`` line obsctl used, ``RequestPerform(2316): HTTP response
  code 200`` (``S3FS_PRN_INFO3``) as the start-up check's success, is
  replaced by the curl response line before it (:meth:`S3fsDriver.startup_verdict`).

Elsewhere s3fs runs at ``dbglevel=dbg`` (its log is the only source of
FUSE ops and bytes for s3fs there). bench/s3fs_log_level.py measures the
difference (docs/benchmarks.md).

Line buffering: s3fs 1.90 writes its log with stdio to stdout, which is a pipe
to obsctl, so the C library buffers it in 4 KiB blocks (seen: the log file of
s3fs -f grew 8192, then 12288 bytes; the request that failed showed up only
when later lines filled the block). An HTTP 403 at close could stay unseen
until the next 4 KiB of log, on a quiet mount for ever. So obsctl starts s3fs
through coreutils' ``stdbuf -oL`` (line-buffered stdout, LD_PRELOAD of its
libstdbuf; s3fs is exec'ed in place, same pid) when ``stdbuf`` is on PATH.
"""

from __future__ import annotations

import shutil

from obsctl.drivers.base import CREDS, DISTRO_DRIVERS, DocRow, Driver, OptionRule


def line_buffered(argv: list[str]) -> list[str]:
    """``argv`` run with a line-buffered stdout: ``["stdbuf", "-oL", *argv]`` (coreutils,
    stdbuf(1)) when both ``stdbuf`` and ``argv[0]`` are found on PATH, else ``argv``
    unchanged (a missing driver keeps its own "not found" error)."""
    stdbuf = shutil.which("stdbuf")
    if stdbuf is None or shutil.which(argv[0]) is None:
        return argv
    return [stdbuf, "-oL", *argv]


#: Options refused for s3fs, from the s3fs 1.90 man page (doc/man/s3fs.1,
#: OPTIONS). obsctl's own settings are: credentials in AWS_* of s3fs's
#: environment, url / endpoint / use_path_request_style from the mount spec,
#: ``-f -o dbglevel=dbg|warn -o curldbg`` on stdout (collectors and redaction read
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

#: s3fs's log level when the kernel gives every FUSE quantity (see module doc).
LOG_LEVEL_KERNEL = "warn"
#: s3fs's log level when its log feeds FUSE ops and bytes: ``dbg`` is the lowest
#: level that logs FUSE reads and writes (``[DBG] s3fs.cpp:s3fs_read``).
LOG_LEVEL_LOG = "dbg"

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
        runs="`[stdbuf -oL] s3fs BUCKET[:/PREFIX] MP -f -o dbglevel=warn` (FUSE numbers from the kernel: eBPF, "
             "or tracefs on 6.18+) or `dbglevel=dbg` (else) `-o curldbg [-o url=ENDPOINT -o use_path_request_style] "
             "[-o endpoint=REGION] [-o ro] [-o allow_other]` (stdbuf: its log line-buffered, when on PATH)",
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
        level = LOG_LEVEL_KERNEL if context.kernel_complete else LOG_LEVEL_LOG
        argv = [self.binary, source, spec.mountpoint, "-f", "-o", f"dbglevel={level}", "-o", "curldbg"]
        if spec.endpoint:
            argv += ["-o", f"url={spec.endpoint}", "-o", "use_path_request_style"]
        if spec.region:
            argv += ["-o", f"endpoint={spec.region}"]
        argv += self.spec_flags(spec, ["-o", "ro"], ["-o", "allow_other"])
        if spec.allow_non_empty:  # s3fs (and libfuse 2) refuse a non-empty mountpoint without it
            argv += ["-o", "nonempty"]
        for option in options:
            argv += ["-o", option]
        return line_buffered(argv)

    def forward(self, line):
        return line if any(m in line for m in _FORWARD_MARKERS) else None

    has_startup_check = True

    def startup_verdict(self, line):
        """s3fs checks the bucket (GET /BUCKET/) from its FUSE init, after the
        mount appears: the first final HTTP answer is that check's answer (2xx
        ok, anything else failed): curldbg's ``[CURL DBG] < HTTP/1.1 200 OK``
        (printed at every dbglevel) or ``RequestPerform: HTTP response code N``
        (the success line is ``info`` only, failures ``err``: s3fs 1.90
        src/curl.cpp:2316, 2343-2394); ``s3fs_check_service``
        and ``s3fs_exit_fuseloop`` errors, ``CURLE_COULDNT_CONNECT`` and
        ``bucket or key not found`` end it too."""
        head = line.find("[CURL DBG] < HTTP/")
        if head >= 0:
            code = line[head + 18:].partition(" ")[2][:3]
            if code[:1] == "1" or not code.isdigit():
                return None  # 100 Continue: not the answer
            return "ok" if code[:1] == "2" else "failed"
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
