"""Run ``obsctl`` as a user would: a subprocess of the installed console script.

* :func:`obsctl_command` - ``<venv>/bin/obsctl`` next to sys.executable, else
  ``[sys.executable, "-m", "obsctl"]``;
* :func:`run_obsctl` - one-shot commands (status, unmount, config check);
* :class:`ObsctlMount` - ``obsctl mount ...`` in the background, its stdout
  and stderr read live with a timestamp per line, stopped with a signal;
* mount-table, process and secret-scanning helpers the integration tests
  use to check what is really left on the host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "obsctl_command", "obsctl_env", "run_obsctl", "ObsctlMount", "status_json",
    "is_mounted", "mount_entry", "pid_alive", "processes_mentioning",
    "force_cleanup", "find_secret", "write_telemetry_toml", "s3_mount_args",
    "require_driver",
]


# --------------------------------------------------------------------------
# command and environment


def obsctl_command() -> list[str]:
    script = Path(sys.executable).parent / "obsctl"
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "obsctl"]


def obsctl_env(runtime_dir: str | os.PathLike[str] | None = None,
               access_key: str | None = None, secret_key: str | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for obsctl: the host's, minus anything that could
    redirect telemetry or credentials behind the test's back, plus the
    runtime dir and the S3 key given."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "AWS_ACCESS_KEY", "AWS_SECRET", "AWS_SESSION",
                             "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "RCLONE_"))
    }
    # loopback must never go through a proxy
    for var in ("NO_PROXY", "no_proxy"):
        env[var] = ",".join(filter(None, [env.get(var, ""), "127.0.0.1", "localhost", "::1"]))
    env["PYTHONUNBUFFERED"] = "1"
    if runtime_dir is not None:
        env["OBSCTL_RUNTIME_DIR"] = str(runtime_dir)
    if access_key is not None:
        env["AWS_ACCESS_KEY_ID"] = access_key
    if secret_key is not None:
        env["AWS_SECRET_ACCESS_KEY"] = secret_key
    env.update(extra or {})
    return env


def run_obsctl(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
               input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``obsctl ARGS`` to completion, capturing text stdout/stderr."""
    return subprocess.run(
        [*obsctl_command(), *args], env=env if env is not None else obsctl_env(),
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def status_json(env: dict[str, str]) -> list[dict]:
    """``obsctl status --json`` parsed; fails the test on a bad exit or bad JSON."""
    res = run_obsctl("status", "--json", env=env, timeout=30)
    assert res.returncode == 0, f"obsctl status --json exited {res.returncode}: {res.stderr}"
    try:
        data = json.loads(res.stdout)
    except ValueError as exc:
        raise AssertionError(f"obsctl status --json is not JSON ({exc}): {res.stdout!r}")
    assert isinstance(data, list), f"obsctl status --json is not a list: {data!r}"
    return data


def status_entry(env: dict[str, str], mountpoint: str | Path) -> dict | None:
    """The ``obsctl status --json`` entry of the mount at ``mountpoint``, or None.

    Paths are compared normalised, never resolved: an lstat of a hung mount's
    root would block the test in the kernel. More than one entry fails the test.
    """
    target = os.path.normpath(str(mountpoint))
    found = [e for e in status_json(env) if os.path.normpath(str(e.get("mountpoint") or "")) == target]
    assert len(found) <= 1, f"obsctl status --json has {len(found)} entries for {mountpoint}: {found}"
    return found[0] if found else None


def write_telemetry_toml(path: Path, *, metrics_endpoint: str | None = None,
                         traces_endpoint: str | None = None,
                         protocol: str | None = None,
                         export_interval_seconds: float = 2,
                         bind_address: str | None = None,
                         mode: str = "remote", service_name: str = "obsctl-test") -> Path:
    """A telemetry TOML in the nested shape of DESIGN section 3."""
    lines = ["[telemetry]", f'mode = "{mode}"', "",
             "[telemetry.resource]", f'service_name = "{service_name}"', ""]
    lines += ["[telemetry.traces]", f"enabled = {'true' if traces_endpoint else 'false'}"]
    if traces_endpoint:
        lines.append(f'otlp_endpoint = "{traces_endpoint}"')
    if protocol:
        lines.append(f'otlp_protocol = "{protocol}"')
    lines += ["", "[telemetry.metrics]", "enabled = true"]
    if metrics_endpoint:
        lines.append(f'otlp_endpoint = "{metrics_endpoint}"')
    if protocol:
        lines.append(f'otlp_protocol = "{protocol}"')
    lines.append(f"export_interval_seconds = {export_interval_seconds}")
    if bind_address:
        lines.append(f'bind_address = "{bind_address}"')
    path.write_text("\n".join(lines) + "\n")
    return path


#: driver name -> binary it needs
DRIVER_BINARIES = {"rclone": "rclone", "s3fs": "s3fs", "generic": "bindfs"}


def require_driver(impl: str) -> None:
    """Skip the calling test (with the reason) when the driver is not installed."""
    import shutil

    import pytest

    binary = DRIVER_BINARIES.get(impl, impl)
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (driver for --impl {impl}); "
                    f"scripts/dev-setup installs it")


def require_ebpf(why: str = "") -> None:
    """Skip the calling test (with the reason, and ``why`` the test needs it) when the
    eBPF source cannot load here (no BTF, no privilege, OBSCTL_FUSE_BPF=off)."""
    import pytest

    from obsctl.collectors import fuse_bpf

    reason = fuse_bpf.unavailable_reason()
    if reason is None:
        probe, reason = fuse_bpf.shared_probe()
        if probe is not None:
            fuse_bpf.release_probe()
            return
    pytest.skip(f"eBPF source unavailable{why}: {reason}")


def s3_mount_args(bucket: str, mountpoint: Path, impl: str, endpoint: str,
                  telemetry: Path | None = None, *extra: str,
                  prefix: str = "", ready_timeout: float = 20) -> list[str]:
    """Arguments after ``obsctl mount`` for an S3 source."""
    source = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
    args = [source, str(mountpoint), "--impl", impl, "--endpoint", endpoint,
            "--region", "us-east-1", "--ready-timeout", str(ready_timeout)]
    if telemetry is not None:
        args += ["--telemetry-config", str(telemetry)]
    return args + list(extra)


# --------------------------------------------------------------------------
# mount table and processes


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and len(field_[i + 1:i + 4]) == 3 and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mount_entry(mountpoint: str | os.PathLike[str]) -> dict | None:
    """The /proc/self/mountinfo entry for ``mountpoint`` (last one wins), or None."""
    target = os.path.realpath(str(mountpoint))
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 10 or _unescape(parts[4]) != target:
                continue
            sep = parts.index("-")
            found = {"fstype": parts[sep + 1], "source": _unescape(parts[sep + 2]),
                     "options": parts[5], "line": line.rstrip("\n")}
    return found


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    return mount_entry(mountpoint) is not None


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def processes_mentioning(text: str, exclude: Iterable[int] = ()) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    skip = {os.getpid(), *exclude}
    out = []
    for pid in all_pids():
        if pid in skip:
            continue
        cmd = _cmdline(pid)
        if text in cmd and pid_alive(pid):
            out.append((pid, cmd))
    return out


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="utf-8") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def force_cleanup(mountpoint: str | os.PathLike[str]) -> list[str]:
    """Last-resort teardown: kill anything naming the mountpoint, lazy-unmount it.
    Returns what had to be done (empty when the product cleaned up itself)."""
    done = []
    for pid, cmd in processes_mentioning(str(mountpoint)):
        try:
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed {pid}: {cmd[:120]}")
        except ProcessLookupError:
            pass
    for _i in range(5):
        if not is_mounted(mountpoint):
            break
        for tool in (["fusermount3", "-uz"], ["fusermount", "-uz"], ["umount", "-l"]):
            if subprocess.run([*tool, str(mountpoint)], capture_output=True, check=False).returncode == 0:
                done.append(f"{tool[0]} {mountpoint}")
                break
        time.sleep(0.2)
    return done


# --------------------------------------------------------------------------
# obsctl mount in the background


_NOT_READY = re.compile(r"unmounted|not mounted|nothing is mounted|fail|error|cannot|can't", re.I)


def _is_ready_line(text: str) -> bool:
    """The contract: when ready obsctl prints a line containing "mounted"."""
    return re.search(r"\bmounted\b", text) is not None and not _NOT_READY.search(text)


@dataclass
class Line:
    time: float
    text: str


@dataclass
class ObsctlMount:
    """``obsctl mount ARGS`` running in the background."""

    args: Sequence[str]
    env: dict[str, str]
    log_dir: Path
    stdin_text: str | None = None
    proc: subprocess.Popen | None = None
    stdout_lines: list[Line] = field(default_factory=list)
    stderr_lines: list[Line] = field(default_factory=list)
    started_at: float = 0.0
    ready_at: float | None = None
    exited_at: float | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> "ObsctlMount":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [*obsctl_command(), "mount", *self.args], env=self.env,
            stdin=subprocess.PIPE if self.stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        if self.stdin_text is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(self.stdin_text.encode())
            self.proc.stdin.close()
        for stream, sink, name in ((self.proc.stdout, self.stdout_lines, "stdout"),
                                   (self.proc.stderr, self.stderr_lines, "stderr")):
            t = threading.Thread(target=self._pump, args=(stream, sink, name), daemon=True)
            t.start()
            self._threads.append(t)
        # reap obsctl as soon as it exits, like systemd or a shell would: a
        # zombie still answers kill(pid, 0), which `obsctl unmount` polls
        threading.Thread(target=self._reap, daemon=True).start()
        return self

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        with self._cond:
            self.exited_at = time.time()
            self._cond.notify_all()

    def _pump(self, stream, sink: list[Line], name: str) -> None:
        with open(self.log_dir / f"obsctl.{name}", "ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                text = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    now = time.time()
                    sink.append(Line(now, text))
                    if name == "stderr" and self.ready_at is None and _is_ready_line(text):
                        self.ready_at = now
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(l.text for l in self.stdout_lines)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(l.text for l in self.stderr_lines)

    def output(self) -> str:
        return f"--- obsctl stdout ---\n{self.stdout}\n--- obsctl stderr ---\n{self.stderr}"

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait for the "mounted" line on stderr; returns its arrival time.
        Fails (with obsctl's output) when obsctl exits first or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ready_at is None:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(0.2, remaining))
        if self.ready_at is None:
            rc = self.proc.poll() if self.proc else None
            self._join_output()
            raise AssertionError(
                f"obsctl mount did not print a 'mounted' line within {timeout}s "
                f"(exit code {rc})\n{self.output()}")
        return self.ready_at

    def wait_exit_or_ready(self, timeout: float) -> str:
        """Wait until obsctl exits ("exited") or says mounted ("ready");
        "timeout" when neither happened."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.ready_at is not None:
                    return "ready"
                if self.exited_at is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._cond.wait(min(0.2, remaining))
        self._join_output()
        return "exited"

    def signal(self, sig: int = signal.SIGTERM) -> float:
        assert self.proc is not None
        t = time.time()
        self.proc.send_signal(sig)
        return t

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"obsctl mount still running {timeout}s later\n{self.output()}")
        self._join_output()
        return rc

    def _join_output(self) -> None:
        for t in self._threads:
            t.join(5)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._join_output()


# --------------------------------------------------------------------------
# secrets


def find_secret(secret: str, *, since: float, roots: Iterable[Path],
                max_size: int = 8 * 1024 * 1024) -> list[str]:
    """Where ``secret`` appears: /proc/*/cmdline of every process and every
    regular file under ``roots`` modified at or after ``since`` (files larger
    than ``max_size`` are skipped). Returns locations only, never the secret."""
    needle = secret.encode()
    hits: list[str] = []
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if needle in fh.read():
                    hits.append(f"/proc/{pid}/cmdline ({_cmdline(pid).split(' ')[0]})")
        except OSError:
            pass
    seen: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        walker = ([(str(root.parent), [], [root.name])] if root.is_file()
                  else os.walk(root, followlinks=False))
        for dirpath, dirnames, filenames in walker:
            # never descend into FUSE mounts or pseudo filesystems
            dirnames[:] = [d for d in dirnames
                           if not os.path.ismount(os.path.join(dirpath, d))]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if path in seen:
                    continue
                seen.add(path)
                try:
                    st = os.lstat(path)
                    if not (st.st_mode & 0o170000 == 0o100000):  # regular files only
                        continue
                    if st.st_mtime < since and st.st_ctime < since:
                        continue
                    if st.st_size > max_size:
                        continue
                    with open(path, "rb") as fh:
                        if needle in fh.read():
                            hits.append(path)
                except OSError:
                    continue
    return hits
