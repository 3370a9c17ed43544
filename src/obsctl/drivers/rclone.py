"""rclone mount (rclone 1.60+): argv, environment, log handling, collectors.

The S3 remote is defined entirely by ``RCLONE_CONFIG_OBSCTL_*`` environment
variables (rclone's documented "config file from the environment" feature)
with ``--config ""`` so rclone neither reads nor writes a config file. The rc
API listens on a free loopback port with a random user and password that
also travel only in the environment (``RCLONE_RC_USER``, ``RCLONE_RC_PASS``).

Logging: ``--use-json-log --log-level DEBUG`` makes rclone log every FUSE
operation on entry and exit, which :class:`~obsctl.collectors.rclone_log.
RcloneLogCollector` pairs into per-operation latency and byte counts. When
the kernel gives all of those (:func:`obsctl.sources.kernel_complete`, Linux
6.18+) rclone runs at ``INFO`` instead: its other sources (rc API, errors in
the log) need no more, and debug logging costs rclone CPU (bench/fuse_trace.py).
"""

from __future__ import annotations

import json
import secrets as _secrets
import socket
import subprocess

from obsctl.config import ConfigError
from obsctl.drivers import Driver, LaunchPlan, redact, split_option
from obsctl.sources import kernel_complete

REMOTE = "obsctl"
_FORWARD_LEVELS = {"critical", "error", "warning", "notice"}
_ERROR_LEVELS = {"critical", "error", "fatal"}
_CREDENTIAL_WORDS = ("secret", "access_key", "access-key", "password", "pass", "token")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (kernel-chosen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reject_credential_options(options: list[str], impl: str) -> None:
    """Refuse options that would put a credential on the command line.

    Raises:
        ConfigError: naming the option (never its value).
    """
    for option in options:
        key = split_option(option.lstrip("-"))[0].lower()
        if any(word in key for word in _CREDENTIAL_WORDS) and key not in ("passwd_file",):
            raise ConfigError(
                f"option {key!r} would put a credential on the {impl} command line, where every "
                "local user can read it in /proc/PID/cmdline; use --credentials-from instead")


class RcloneDriver(Driver):
    """``rclone mount obsctl:BUCKET/PREFIX MOUNTPOINT`` in the foreground."""

    name = "rclone"
    binary = "rclone"

    def plan(self, spec, creds):
        bucket, prefix = spec.bucket_and_prefix()
        reject_credential_options(spec.options, self.name)
        env = self.base_env(spec)
        prefix_env = f"RCLONE_CONFIG_{REMOTE.upper()}_"
        env.update({
            prefix_env + "TYPE": "s3",
            prefix_env + "PROVIDER": "Other" if spec.endpoint else "AWS",
            prefix_env + "ENV_AUTH": "false",
        })
        if spec.endpoint:
            env[prefix_env + "ENDPOINT"] = spec.endpoint
        if spec.region:
            env[prefix_env + "REGION"] = spec.region
        hidden = []
        if creds is not None:
            env[prefix_env + "ACCESS_KEY_ID"] = creds.access_key_id
            env[prefix_env + "SECRET_ACCESS_KEY"] = creds.secret_access_key
            if creds.session_token:
                env[prefix_env + "SESSION_TOKEN"] = creds.session_token
            hidden += creds.secrets()
        remote = f"{REMOTE}:{bucket}" + (f"/{prefix}" if prefix else "")
        argv = [self.binary, "mount", remote, spec.mountpoint, "--config", "",
                "--use-json-log", "--log-level", "INFO" if kernel_complete() else "DEBUG"]
        extras: dict = {}
        if self.listen:
            rc_port = free_loopback_port()
            rc_user, rc_pass = "obsctl", _secrets.token_urlsafe(24)
            env["RCLONE_RC_USER"], env["RCLONE_RC_PASS"] = rc_user, rc_pass
            hidden.append(rc_pass)
            argv += ["--rc", "--rc-addr", f"127.0.0.1:{rc_port}", "--rc-enable-metrics"]
            extras = {"rc_url": f"http://127.0.0.1:{rc_port}", "rc_auth": (rc_user, rc_pass)}
        if spec.read_only:
            argv.append("--read-only")
        if spec.allow_other:
            argv.append("--allow-other")
        if spec.cache_mode:
            argv += ["--vfs-cache-mode", spec.cache_mode]
        for option in spec.options:
            argv.append(self._flag(option))
        return LaunchPlan(argv=argv, env=env, fstype="fuse.rclone", secrets=hidden, extras=extras)

    @staticmethod
    def _flag(option: str) -> str:
        """``-o`` option -> rclone flag: ``ro`` -> --read-only, ``key=v`` -> --key=v."""
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
        from obsctl.collectors.rclone_log import RcloneLogCollector
        return [RcloneLogCollector(instruments)]

    def polling_collectors(self, instruments, plan):
        if "rc_url" not in plan.extras:
            return []
        from obsctl.collectors.rclone_rc import RcloneRcCollector
        return [RcloneRcCollector(instruments, plan.extras["rc_url"], auth=plan.extras["rc_auth"])]
