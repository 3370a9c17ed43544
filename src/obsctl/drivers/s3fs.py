"""s3fs-fuse (1.90+) in the foreground: argv, environment, log handling, collectors.

Credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN of s3fs's environment, which s3fs reads before any
passwd file. ``-o dbglevel=dbg -o curldbg`` makes s3fs log each HTTP
request and response with timestamps, which :class:`~obsctl.collectors.
s3fs_log.S3fsLogCollector` pairs into request latency and status codes.
"""

from __future__ import annotations

from obsctl.drivers import Driver, LaunchPlan
from obsctl.drivers.rclone import reject_credential_options

_ERROR_MARKERS = ("[ERR]", "[CRT]", "s3fs:")
_FORWARD_MARKERS = ("[ERR]", "[CRT]", "[WAN]", "s3fs:")
_STARTUP_FAILURES = ("CURLE_COULDNT_CONNECT", "CURLE_COULDNT_RESOLVE", "bucket or key not found",
                     "s3fs_exit_fuseloop", "unable to connect", "Check bucket failed")


class S3fsDriver(Driver):
    """``s3fs BUCKET[:/PREFIX] MOUNTPOINT -f -o ...``."""

    name = "s3fs"
    binary = "s3fs"

    def plan(self, spec, creds):
        bucket, prefix = spec.bucket_and_prefix()
        reject_credential_options(spec.options, self.name)
        env = self.base_env(spec)
        hidden = []
        if creds is not None:
            env["AWS_ACCESS_KEY_ID"] = creds.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = creds.secret_access_key
            if creds.session_token:
                env["AWS_SESSION_TOKEN"] = creds.session_token
            hidden += creds.secrets()
        source = bucket + (f":/{prefix}" if prefix else "")
        argv = [self.binary, source, spec.mountpoint, "-f", "-o", "dbglevel=dbg", "-o", "curldbg"]
        if spec.endpoint:
            argv += ["-o", f"url={spec.endpoint}", "-o", "use_path_request_style"]
        if spec.region:
            argv += ["-o", f"endpoint={spec.region}"]
        if spec.read_only:
            argv += ["-o", "ro"]
        if spec.allow_other:
            argv += ["-o", "allow_other"]
        for option in spec.options:
            argv += ["-o", option.lstrip("-")] if not option.startswith("-") else [option]
        return LaunchPlan(argv=argv, env=env, fstype="fuse.s3fs", secrets=hidden)

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
        from obsctl.collectors.s3fs_log import S3fsLogCollector
        return [S3fsLogCollector(instruments)]
