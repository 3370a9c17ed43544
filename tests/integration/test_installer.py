"""install.sh, for real.

Two kinds of tests:

- On this host, the cases that stop before anything changes (a table of
  wrong or conflicting flags, a missing answer without a terminal, not root,
  an unsupported OS, unreachable package sources): message and exit code.
  Each also points PIP_INDEX_URL at a closed loopback port, so a regression
  that let one of them through would stop at the package-source check
  (exit 5) instead of installing on this machine.
- In fresh systemd containers of the project's image (scripts/systemd-image,
  ``obsctl-systemd:bookworm``; host network; the checkout bind-mounted
  read-only at /src/obsctl), install.sh runs as an operator would run it:
  real apt, real PyPI (through a pip cache in .cache/installer), a real S3
  mount of this test's moto_server on the host's loopback, telemetry to the
  real OTLP receiver of tests/support on the host's loopback. Containers are
  named ``installer-*`` and removed at the end.

The secret of the S3 key is looked for in install.sh's output, its log, every
file of the container (/run, a RAM file system where systemd decrypts unit
credentials for the unit, and the FUSE mountpoint excepted) and in
/proc/*/cmdline of every process of this machine (containers included),
sampled every 0.1 s while install.sh runs.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Iterable

import pytest

yaml = pytest.importorskip("yaml")

from support.data import BUCKET_OBJECTS, unique_bucket_name
from support.net import closed_port
from support.obsctl import all_pids

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "install.sh"
IMAGE = os.environ.get("OBSCTL_IMAGE", "obsctl-systemd:bookworm")
CACHE = REPO / ".cache" / "installer"
SRC = "/src/obsctl"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: What a container run may change besides the installer's own work: the
#: bind-mounted caches (pip, apt archives) and temporary files.
#: (-xdev keeps find out of FUSE mounts and the other bind mounts.)
PRUNE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/cache", "/var/cache/apt", "/src")

# Exit codes, as docs/install.md and install.sh --help document them.
E_ANSIBLE, E_USAGE, E_ROOT, E_OS, E_SOURCES, E_ANSWER, E_DECLINED, E_BOOTSTRAP, E_IMAGES = range(1, 10)


# ---------------------------------------------------------------------------
# on this host: everything that must stop before a change

def _host_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PIP_INDEX_URL"] = f"http://127.0.0.1:{closed_port()}/simple"
    env.update(extra)
    return env


BAD_FLAGS = [
    # (args, exit code, message)
    (["--bogus"], E_USAGE, "unknown argument: --bogus"),
    (["--observability", "cloud"], E_USAGE, "--observability must be none, remote or local"),
    (["--observability"], E_USAGE, "--observability needs 1 value(s)"),
    (["--enable-telemetry", "--observability", "local"], E_USAGE, "it conflicts with --observability local"),
    (["--observability", "none", "--otlp-endpoint", "http://127.0.0.1:4317"], E_USAGE,
     "--otlp-endpoint conflicts with --observability none"),
    (["--otlp-endpoint", "otel:4317"], E_USAGE, "--otlp-endpoint must be an http:// or https:// URL"),
    (["--enable-telemetry", "--otlp-protocol", "udp"], E_USAGE, "--otlp-protocol must be grpc or http/protobuf"),
    (["--service-name", "x"], E_USAGE, "need telemetry: add --observability remote|local"),
    (["--enable-telemetry", "--resource-attribute", "novalue"], E_USAGE, "--resource-attribute must be KEY=VALUE"),
    (["--mount", "s3://bucket"], E_USAGE, "--mount needs 2 value(s)"),
    (["--mount", "s3://bucket", "--yes"], E_USAGE, "--mount needs 2 value(s), got the flag --yes"),
    (["--mount", "bucket", "/mnt/x"], E_USAGE, "source must be s3://BUCKET[/PREFIX]"),
    (["--mount", "s3://bucket", "mnt/x"], E_USAGE, "mountpoint must be an absolute path other than /"),
    (["--mount", "s3://one-b", "/mnt/x", "--mount", "s3://two-b", "/srv/x"], E_USAGE,
     "two mountpoints end in 'x'"),
    (["--impl", "rclone"], E_USAGE, "--impl, --endpoint and --region apply to mounts"),
    (["--mount", "s3://bucket", "/mnt/x", "--impl", "goofys"], E_USAGE, "--impl must be rclone or s3fs"),
    (["--mount", "s3://bucket", "/mnt/x", "--endpoint", "minio:9000"], E_USAGE, "--endpoint must be an http://"),
    (["--uninstall", "--mount", "s3://bucket", "/mnt/x"], E_USAGE, "--uninstall takes no other flag"),
    (["--secret-access-key", "abc"], E_USAGE, "credentials are never taken from the command line"),
    (["--stack-images", "/nonexistent.tar"], E_USAGE, "--stack-images is for --observability local"),
    (["--enable-telemetry", "--node-config", "etc/app.toml"], E_USAGE, "--node-config needs an absolute path"),
    (["--no-credentials"], E_USAGE, "--no-credentials applies to mounts"),
    (["--enable-telemetry", "--node-metrics-address", "127.0.0.1:9464"], E_USAGE,
     "--node-metrics-address, --node-dashboards and --restart-node need --node-config PATH"),
    (["--enable-telemetry", "--restart-node"], E_USAGE, "need --node-config PATH"),
    (["--observability", "local", "--node-config", "/etc/os-release", "--node-metrics-address", "0.0.0.0:9464"],
     E_USAGE, "--node-metrics-address must be a loopback IP:PORT (the node parses a socket address, "
     "not a host name), e.g. 127.0.0.1:9464 (got '0.0.0.0:9464')"),
    (["--otlp-endpoint", "http://127.0.0.1:4317", "--no-containers"], E_USAGE,
     "--no-containers is for --observability local, or remote with --node-config (the agent)"),
    (["--otlp-endpoint", "http://127.0.0.1:4317", "--node-config", "/etc/os-release", "--node-dashboards", "/etc"],
     E_USAGE, "--node-dashboards is for --observability local"),
    (["--observability", "local", "--node-config", "/etc/os-release", "--node-dashboards", "etc"],
     E_USAGE, "--node-dashboards needs an existing absolute directory"),
]

NO_ANSWER = [
    # (args, message): no terminal (stdin /dev/null), no --yes
    (["--enable-telemetry"], "missing answer (no terminal to ask on): the OTLP endpoint; pass --otlp-endpoint URL"),
    (["--mount", "s3://bucket", "/mnt/x"],
     "missing answer (no terminal to ask on): the S3 credentials of the mounts; export AWS_ACCESS_KEY_ID"),
    (["--observability", "local"], "missing answer (no terminal to ask on): confirmation of the local stack; pass --yes"),
    (["--yes", "--observability", "remote"], "missing answer with --yes: the OTLP endpoint; pass --otlp-endpoint URL"),
]

#: Paths install.sh writes on this host if it gets past its checks.
HOST_FOOTPRINT = ("/opt/obsctl-installer", "/var/log/obsctl-install.log", "/opt/obsctl", "/etc/obsctl")


def _run_host(args: list[str], env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess:
    before = {p: os.path.lexists(p) for p in HOST_FOOTPRINT}
    argv = [str(INSTALL), *args]
    if user == "nobody":
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, check=False)
    after = {p: os.path.lexists(p) for p in HOST_FOOTPRINT}
    assert before == after, f"install.sh changed {HOST_FOOTPRINT} on a failing run: {before} -> {after}"
    return proc


@pytest.mark.no_fuse
@pytest.mark.parametrize("args,code,message", BAD_FLAGS, ids=[" ".join(c[0]) for c in BAD_FLAGS])
def test_bad_flag(args, code, message):
    proc = _run_host(args, _host_env())
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


@pytest.mark.no_fuse
@pytest.mark.parametrize("args,message", NO_ANSWER, ids=[" ".join(c[0]) for c in NO_ANSWER])
def test_missing_answer_without_terminal(args, message):
    if os.geteuid() != 0:
        pytest.skip("the answer checks come after the root check: run as root")
    started = time.monotonic()
    proc = _run_host(args, _host_env())
    assert proc.returncode == E_ANSWER, proc.stderr
    assert message in proc.stderr
    assert time.monotonic() - started < 30  # it never waits for an answer


@pytest.mark.no_fuse
def test_not_root():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run install.sh as nobody")
    proc = _run_host(["--mount", "s3://bucket", "/mnt/x"], _host_env(), user="nobody")
    assert proc.returncode == E_ROOT, proc.stderr
    assert "run as root: sudo " in proc.stderr


@pytest.mark.no_fuse
def test_unsupported_os(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the OS check comes after the root check: run as root")
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=fedora\nVERSION_ID="40"\n')
    proc = _run_host(["--yes"], _host_env(OBSCTL_INSTALL_OS_RELEASE=str(os_release)))
    assert proc.returncode == E_OS, proc.stderr
    assert "unsupported OS 'fedora 40'" in proc.stderr
    assert "supported: debian 12, " in proc.stderr  # meta/platforms.yml


@pytest.mark.no_fuse
def test_package_sources_unreachable():
    if os.geteuid() != 0:
        pytest.skip("the source check comes after the root check: run as root")
    proc = _run_host(["--yes"], _host_env())
    assert proc.returncode == E_SOURCES, proc.stderr
    assert "cannot reach the package sources: http://127.0.0.1:" in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert re.search(r"^ 1\. package sources \(PyPI, apt\) +failed$", proc.stdout, re.M)


@pytest.mark.no_fuse
def test_help_lists_every_flag_and_exit_code():
    proc = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for flag in ("--observability", "--enable-telemetry", "--otlp-endpoint", "--otlp-protocol",
                 "--service-name", "--resource-attribute", "--mount", "--impl", "--endpoint", "--region",
                 "--node-config", "--node-metrics-address", "--node-dashboards", "--restart-node",
                 "--no-containers", "--stack-images", "--yes", "--dry-run", "--uninstall", "--version", "--help"):
        assert flag in proc.stdout
    assert f"{E_IMAGES} local mode" in proc.stdout.replace("\n", " ")


@pytest.mark.no_fuse
def test_script_is_one_function_called_on_its_last_line():
    lines = INSTALL.read_text().rstrip("\n").splitlines()
    assert lines[-1] == 'main "$@"; exit'
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    assert body[0] == "main() {"
    assert body[-2] == "}"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/dev-setup installs it)")
    proc = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------------------
# in containers

class CmdlineWatch:
    """Samples /proc/*/cmdline of every process every 0.1 s for a secret."""

    def __init__(self, secret: str) -> None:
        self.needle = secret.encode()
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in all_pids():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                if self.needle in raw:
                    self.hits.append(raw.split(b"\0")[0].decode(errors="replace"))
            self.samples += 1
            self._stop.wait(0.1)

    def __enter__(self) -> "CmdlineWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class Container:
    """A fresh systemd container of the project's image (host network)."""

    def __init__(self, tag: str, systemd: bool = True) -> None:
        self.name = f"installer-{tag}-{uuid.uuid4().hex[:6]}"
        for sub in ("pip", "apt/partial"):
            (CACHE / sub).mkdir(parents=True, exist_ok=True)
        argv = [
            "docker", "run", "-d", "--name", self.name, "--network", "host",
            "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined",
            "--security-opt", "seccomp=unconfined", "--device", "/dev/fuse",
            "-v", f"{REPO}:{SRC}:ro",
            "-v", f"{CACHE / 'pip'}:/cache/pip",
            "-v", f"{CACHE / 'apt'}:/var/cache/apt/archives",
        ]
        if os.path.isfile(HOST_CA_BUNDLE):
            # This machine reaches PyPI through a TLS proxy whose CA is in the
            # host's bundle; a real host behind it has the same bundle.
            argv += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        if systemd:
            argv += ["--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                     "--tmpfs", "/run", "--tmpfs", "/run/lock", IMAGE]
        else:
            argv += ["--entrypoint", "/bin/sleep", IMAGE, "infinity"]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def wait_booted(self, timeout: float = 120) -> None:
        """Until systemd says running (or degraded)."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.sh("systemctl is-system-running --wait 2>&1", timeout=timeout).stdout.strip()
            if out in ("running", "degraded"):
                return
            time.sleep(1)
        raise AssertionError(f"{self.name}: systemd did not come up: {out}")

    def exec(self, argv: list[str], env_names: Iterable[str] = (), env: dict[str, str] | None = None,
             timeout: float = 1200, tty: bool = False, input_text: str | None = None
             ) -> subprocess.CompletedProcess:
        """``docker exec``; ``env_names`` pass this process's variables by name only
        (``-e NAME``: the value never appears in an argv)."""
        cmd = ["docker", "exec", "-i"]
        for name in env_names:
            cmd += ["-e", name]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        cmd += [self.name, *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              input=input_text if input_text is not None else "")

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.exec(["sh", "-c", script], timeout=timeout)

    def snapshot(self) -> set[str]:
        """Every path of the container's root file system but PRUNE."""
        prune = " -o ".join(f"-path {p}" for p in PRUNE)
        out = self.sh(f"find / -xdev \\( {prune} \\) -prune -o -print", timeout=300)
        return set(out.stdout.splitlines())

    def units(self) -> str:
        return self.sh("systemctl list-unit-files --no-legend 'obsctl*'; "
                       "systemctl list-units --all --no-legend 'obsctl*'").stdout

    def files_containing(self, secret: str) -> list[str]:
        """Files of the container (PRUNE aside) that contain ``secret`` (given on stdin)."""
        roots = "/etc /opt /var /root /usr/local /home /srv /tmp"
        proc = self.exec(["sh", "-c", f"grep -rlF -f /dev/stdin --exclude-dir=apt {roots} 2>/dev/null || true"],
                         input_text=secret + "\n", timeout=300)
        return [p for p in proc.stdout.splitlines() if p]

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", "-v", self.name], capture_output=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def docker_image():
    """dockerd and the project's systemd image (built once, cached)."""
    if os.geteuid() != 0:
        pytest.skip("container tests need root (dockerd, FUSE in containers)")
    proc = subprocess.run([str(REPO / "scripts" / "systemd-image")], capture_output=True, text=True,
                          timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.skip(f"docker cannot run here: {proc.stderr.strip()[-300:]}")
    return IMAGE


@pytest.fixture
def container(docker_image, request):
    made: list[Container] = []

    def make(tag: str, systemd: bool = True) -> Container:
        c = Container(tag, systemd=systemd)
        made.append(c)
        if systemd:
            c.wait_booted()
        return c

    yield make
    for c in made:
        c.remove()


def _install_env(s3_auth_server) -> dict[str, str]:
    """The S3 key of the auth server in this process's environment (read by
    ``docker exec -e NAME``), without the host's CA variables."""
    os.environ["AWS_ACCESS_KEY_ID"] = s3_auth_server.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3_auth_server.secret_key
    return {"PIP_CACHE_DIR": "/cache/pip"}


@pytest.fixture
def s3_key(s3_auth_server):
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    yield _install_env(s3_auth_server)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _bucket(server, tag: str) -> str:
    name = unique_bucket_name(f"installer-{tag}")
    server.create_bucket(name, BUCKET_OBJECTS)
    return name


def _steps(stdout: str) -> list[tuple[int, str, str]]:
    """The numbered step lines: (number, label, status)."""
    return [(int(m.group(1)), m.group(2).strip(), m.group(3))
            for m in re.finditer(r"^ ?(\d+)\. (.+?) +(ok|changed|failed|skipped|would change)(?: \(.*\))?$",
                                 stdout, re.M)]


def _assert_no_secret(secret: str, c: Container, watch: CmdlineWatch, *texts: str) -> None:
    assert watch.samples > 10, "the /proc sampler did not run"
    assert not watch.hits, f"secret in the argv of: {sorted(set(watch.hits))}"
    for text in texts:
        assert secret not in text
    log = c.sh("cat /var/log/obsctl-install.log /tmp/obsctl-install-*.log 2>/dev/null").stdout
    assert secret not in log
    assert c.files_containing(secret) == []


@pytest.mark.container
def test_none_mode_second_run_and_uninstall(container, s3_auth_server, s3_key):
    """Mode none: a real S3 mount, obsctl status ready; a second run changes
    nothing; --uninstall removes every file the installer created."""
    c = container("none")
    bucket = _bucket(s3_auth_server, "none")
    secret = s3_auth_server.secret_key
    before = c.snapshot()
    args = [f"{SRC}/install.sh", "--yes", "--mount", f"s3://{bucket}", "/mnt/data",
            "--endpoint", s3_auth_server.endpoint, "--region", "us-east-1"]
    with CmdlineWatch(secret) as watch:
        first = c.exec(args, env_names=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), env=s3_key)
    assert first.returncode == 0, first.stdout + first.stderr
    steps = _steps(first.stdout)
    assert [step[0] for step in steps] == list(range(1, len(steps) + 1)), first.stdout
    labels = [step[1] for step in steps]
    for role in ("fuse_driver", "obsctl", "telemetry_config", "fuse_mounts"):
        assert any(f"({role})" in label for label in labels), first.stdout
    assert all(step[2] != "failed" for step in steps), first.stdout
    assert "full log in /var/log/obsctl-install.log" in first.stdout
    assert "obsctl status" in first.stdout and "ready" in first.stdout, first.stdout
    listing = c.sh("ls /mnt/data").stdout.split()
    assert "hello.txt" in listing, listing
    assert c.sh("cat /mnt/data/hello.txt").stdout == BUCKET_OBJECTS["hello.txt"].decode()
    assert "active" in c.sh("systemctl is-active obsctl-mount@data.service").stdout
    _assert_no_secret(secret, c, watch, first.stdout, first.stderr)
    installed = c.snapshot()
    created = installed - before

    with CmdlineWatch(secret) as watch:
        second = c.exec(args, env_names=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), env=s3_key)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "No change: this host was already as asked." in second.stdout, second.stdout
    assert all(step[2] in ("ok", "skipped") for step in _steps(second.stdout)), second.stdout
    _assert_no_secret(secret, c, watch, second.stdout, second.stderr)

    gone = c.exec([f"{SRC}/install.sh", "--uninstall", "--yes"], env=s3_key)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "Removed:" in gone.stdout and "Kept: bucket data" in gone.stdout
    assert c.sh("findmnt /mnt/data").returncode != 0
    assert c.units().strip() == ""
    # The bucket's data is untouched.
    assert sorted(s3_auth_server.list_keys(bucket)) == sorted(BUCKET_OBJECTS)
    after = c.snapshot()
    owned = set(c.sh("cat /var/lib/dpkg/info/*.list").stdout.splitlines())
    # merged /usr: dpkg lists /lib/..., the find sees /usr/lib/... too
    owned |= {"/usr" + p for p in owned if p.startswith(("/lib/", "/bin/", "/sbin/"))}
    # update-alternatives links of the packages (/usr/bin/open -> run-mailcap ...)
    alternatives = c.sh("cat /var/lib/dpkg/alternatives/*").stdout.splitlines()
    owned |= {p for p in alternatives if p.startswith("/")}
    # Kept on purpose (docs/install.md): the distribution packages (owned by
    # dpkg), dpkg/apt's own state, the systemd-creds host key, the byte code
    # Python writes next to packaged modules.
    # /etc/mailcap is generated by the mailcap package's trigger.
    kept_prefixes = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/log/apt/", "/var/lib/systemd/", "/etc/alternatives/",
                     "/var/lib/python/", "/etc/systemd/system/multi-user.target.wants",
                     "/etc/systemd/system/timers.target.wants")
    left = sorted(p for p in created & after
                  if p not in owned and not p.startswith(kept_prefixes) and "__pycache__" not in p
                  and p not in ("/var/log/dpkg.log", "/var/log/alternatives.log", "/etc/ld.so.cache",
                                "/var/lib/dpkg", "/var/lib/systemd", "/etc/fuse.conf", "/etc/mailcap"))
    assert left == [], f"left after --uninstall: {left[:40]}"
    for path in ("/opt/obsctl", "/opt/obsctl-installer", "/etc/obsctl", "/var/log/obsctl-install.log",
                 "/etc/systemd/system/obsctl-mount@.service", "/mnt/data"):
        assert path in created, f"{path} was not created by the install (test premise)"
        assert path not in after, f"{path} left after --uninstall"


@pytest.mark.container
def test_dry_run_changes_nothing(container, s3_auth_server, s3_key):
    """--dry-run on a fresh container: prints what would change, and the file
    system (caches and temporary files aside) and the units are unchanged."""
    c = container("dry")
    bucket = _bucket(s3_auth_server, "dry")
    before, units_before = c.snapshot(), c.units()
    run = c.exec([f"{SRC}/install.sh", "--dry-run", "--yes", "--enable-telemetry", "--otlp-endpoint",
                  "http://127.0.0.1:4317", "--mount", f"s3://{bucket}", "/mnt/dry",
                  "--endpoint", s3_auth_server.endpoint],
                 env_names=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), env=s3_key)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dry run (changes nothing)" in run.stdout
    assert re.search(r"^ +would change: .+", run.stdout, re.M), run.stdout
    assert "would change" in run.stdout and "task(s) would change" in run.stdout
    assert c.snapshot() == before
    assert c.units() == units_before
    assert s3_auth_server.secret_key not in run.stdout + run.stderr


def _pty_run(argv: list[str], answers: list[tuple[str, str]], timeout: float = 1500) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal, answering each prompt (regex) in
    order. Returns (exit code, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvp(argv[0], argv)
    out = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = select.select([fd], [], [], 1.0)[0]
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            while pending and re.search(pending[0][0], out.decode(errors="replace").rsplit("\n", 1)[-1]):
                os.write(fd, pending.pop(0)[1].encode() + b"\r")
                time.sleep(0.2)
    status = os.waitpid(pid, 0)[1]
    os.close(fd)
    assert not pending, f"prompts not seen: {[prompt[0] for prompt in pending]}\n{out.decode(errors='replace')}"
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.container
def test_remote_prompts_on_a_terminal_equal_the_flags(container, s3_auth_server, otlp, s3_key):
    """--enable-telemetry answered on a pseudo-terminal (endpoint, labels, key
    not echoed) mounts and exports to the real OTLP receiver; the same
    install given as flags then changes nothing."""
    c = container("remote")
    bucket = _bucket(s3_auth_server, "remote")
    secret = s3_auth_server.secret_key
    service = f"installer-{uuid.uuid4().hex[:6]}"
    argv = ["docker", "exec", "-it", "-e", "PIP_CACHE_DIR=/cache/pip", c.name, f"{SRC}/install.sh",
            "--enable-telemetry", "--mount", f"s3://{bucket}", "/mnt/remote",
            "--endpoint", s3_auth_server.endpoint, "--region", "us-east-1"]
    answers = [
        (r"OTLP endpoint of your collector .*: $", otlp.grpc_endpoint),
        (r"service\.name of the mounts \[obsctl-mount\]: $", service),
        (r"resource attributes, .*: $", "deployment.environment=installer-test"),
        (r"AWS access key id \(not echoed\): $", s3_auth_server.access_key),
        (r"AWS secret access key \(not echoed\): $", secret),
    ]
    with CmdlineWatch(secret) as watch:
        code, shown = _pty_run(argv, answers)
    assert code == 0, shown
    assert secret not in shown
    assert "obsctl status" in shown and "ready" in shown, shown
    _assert_no_secret(secret, c, watch)

    otlp.wait_for(lambda: any(r.get("service.name") == service for r in otlp.all_resource_attributes()),
                  timeout=90, message=f"nothing from service.name={service}")
    resources = [r for r in otlp.all_resource_attributes() if r.get("service.name") == service]
    assert resources[0].get("deployment.environment") == "installer-test"
    otlp.wait_for(lambda: otlp.points("obsctl_mount_up") or otlp.spans("mount"), timeout=90,
                  message="neither obsctl_mount_up nor a mount span arrived")

    with CmdlineWatch(secret) as watch:
        again = c.exec([f"{SRC}/install.sh", "--yes", "--otlp-endpoint", otlp.grpc_endpoint,
                        "--service-name", service, "--resource-attribute", "deployment.environment=installer-test",
                        "--mount", f"s3://{bucket}", "/mnt/remote", "--endpoint", s3_auth_server.endpoint,
                        "--region", "us-east-1"],
                       env_names=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), env=s3_key)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No change: this host was already as asked." in again.stdout, again.stdout
    _assert_no_secret(secret, c, watch, again.stdout, again.stderr)


@pytest.mark.container
def test_local_mode_stops_at_missing_images(container, s3_key):
    """Local mode without the stack's images stops in the observability_stack
    role's preflight with its message and exit code 9, before any other role."""
    if not (REPO / "roles" / "observability_stack" / "tasks").is_dir():
        pytest.skip("role obsctl.observability.observability_stack is not in this tree yet")
    c = container("local")
    run = c.exec([f"{SRC}/install.sh", "--observability", "local", "--yes"], env=s3_key)
    assert run.returncode == E_IMAGES, run.stdout + run.stderr
    assert "observability_stack: images not available:" in run.stderr
    assert "--stack-images" in run.stderr
    assert c.sh("test -e /etc/obsctl || test -e /opt/obsctl").returncode != 0


@pytest.mark.container
def test_without_systemd_mounts_run_in_the_background(container, s3_auth_server, s3_key):
    """No systemd as PID 1: the mount runs under `obsctl mount` in the
    background, and install.sh says it will not survive a reboot."""
    c = container("nosystemd", systemd=False)
    bucket = _bucket(s3_auth_server, "nosd")
    run = c.exec([f"{SRC}/install.sh", "--yes", "--mount", f"s3://{bucket}", "/mnt/nosd",
                  "--endpoint", s3_auth_server.endpoint, "--region", "us-east-1"],
                 env_names=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), env=s3_key)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "will NOT survive a reboot" in run.stdout
    assert "hello.txt" in c.sh("ls /mnt/nosd").stdout
    # The engine's spec, run by obsctl mount --config (fuse_mounts_service_manager none).
    assert "obsctl mount --config /etc/obsctl/mounts/nosd.toml" in c.sh("ps -eo args").stdout
    assert 'credentials_from = "env"' in c.sh("cat /etc/obsctl/mounts/nosd.toml").stdout


# ---------------------------------------------------------------------------
# the node (rust-dkg-engine): its config.toml, its /metrics scraped

#: A config.toml as the node's own installer writes it (github.com/zeroxbt/rust-dkg-engine,
#: tools/installer/install.sh, write_config_toml, lines 553-624 at 2b3201c), metrics off:
#: install.sh must turn them on.
NODE_CONFIG_TOML = """environment = "testnet"
app_data_path = "/var/lib/rust-dkg-engine"

[managers.repository]
host = "127.0.0.1"
port = 3306
database = "operationaldb"
user = "root"
password = "node-db-password"
max_connections = 120
min_connections = 1

[managers.network]
port = 9000
idle_connection_timeout_secs = 300

[managers.triple_store]
backend = "blazegraph"
url = "http://127.0.0.1:9999"
connect_max_retries = 10
connect_retry_frequency_ms = 10000
max_concurrent_operations = 25
collection_fetch_page_concurrency = 2
collection_fetch_max_token_ids_per_page = 50

[managers.triple_store.timeouts]
query_ms = 60000
insert_ms = 300000
ask_ms = 10000


[http_api]
enabled = true
port = 8900

[http_api.rate_limiter]
enabled = false
time_window_seconds = 60
max_requests = 10

[http_api.auth]
enabled = true
ip_whitelist = ["127.0.0.1", "::1"]

[telemetry]
# Metrics are counters/gauges/histograms for dashboards and alerts.

[telemetry.metrics]
enabled = false
bind_address = "127.0.0.1:9464"
"""
NODE_CONFIG = "/etc/rust-dkg-engine/config.toml"
NODE_METRICS = "127.0.0.1:9464"
STACK_DIR = "/etc/obsctl/observability-stack"


def _put_node_config(c: Container) -> None:
    proc = c.exec(["sh", "-c", f"mkdir -p {os.path.dirname(NODE_CONFIG)} && cat > {NODE_CONFIG}"],
                  input_text=NODE_CONFIG_TOML)
    assert proc.returncode == 0, proc.stderr


def _check_node_file(c: Container) -> None:
    """The node's file after the run: [telemetry] is exactly what rust-dkg-engine
    accepts (its serde deny_unknown_fields structs), metrics on at the address."""
    text = c.sh(f"cat {NODE_CONFIG}").stdout
    doc = tomllib.loads(text)
    original = tomllib.loads(NODE_CONFIG_TOML)
    assert {k: v for k, v in doc.items() if k != "telemetry"} == \
        {k: v for k, v in original.items() if k != "telemetry"}
    assert doc["telemetry"] == {"metrics": {"enabled": True, "bind_address": NODE_METRICS}}, text
    # The profile check (deny unknown fields, as the node's serde structs) on the host.
    check = c.exec(["/opt/obsctl/bin/obsctl", "config", "check", "--app-profile", "rust-dkg-engine", NODE_CONFIG])
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.container
def test_local_mode_with_the_node_config_scrapes_the_node(container, tmp_path):
    """install.sh --observability local --node-config FILE in a fresh container:
    without the stack's images it stops before any change (exit 9, node file
    untouched); with --no-containers the stack's configuration is written, its
    Prometheus scrapes the node's address as job rust-dkg-engine, the node's
    own dashboards are provisioned, and the node's file is written."""
    if not (REPO / "roles" / "observability_stack" / "tasks").is_dir():
        pytest.skip("role obsctl.observability.observability_stack is not in this tree yet")
    c = container("node-local")
    _put_node_config(c)
    base = [f"{SRC}/install.sh", "--yes", "--observability", "local", "--node-config", NODE_CONFIG]
    stopped = c.exec(base, env={"PIP_CACHE_DIR": "/cache/pip"})
    assert stopped.returncode == E_IMAGES, stopped.stdout + stopped.stderr
    assert "local stack's images are not loaded" in stopped.stderr
    assert c.sh(f"cat {NODE_CONFIG}").stdout == NODE_CONFIG_TOML

    run = c.exec([*base, "--no-containers", "--node-dashboards", f"{SRC}/tests/fixtures/node/dashboards"],
                 env={"PIP_CACHE_DIR": "/cache/pip"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "No containers (--no-containers)" in run.stdout
    assert re.search(r"local observability stack \(observability_stack\) +changed", run.stdout), run.stdout
    prometheus = yaml.safe_load(c.sh(f"cat {STACK_DIR}/prometheus/prometheus.yml").stdout)
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["rust-dkg-engine"]["static_configs"] == [{"targets": [NODE_METRICS]}]
    assert jobs["rust-dkg-engine"]["metrics_path"] == "/metrics"
    if shutil.which("promtool"):
        config = dict(prometheus)
        config.pop("otlp")  # Prometheus 3 only (test_stack_render checks it)
        config.pop("rule_files")
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(config))
        check = subprocess.run(["promtool", "check", "config", str(copy)], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    dashboards = c.sh(f"ls {STACK_DIR}/grafana/extra-dashboards/rust-dkg-engine").stdout.split()
    assert sorted(dashboards) == sorted(p.name for p in (REPO / "tests/fixtures/node/dashboards").glob("*.json"))
    assert c.sh(f"grep -rl 'DS_PROMETHEUS' {STACK_DIR}/grafana/extra-dashboards").stdout == ""
    # No Docker, no container, no unit.
    assert c.sh("command -v docker").returncode != 0
    assert c.sh("test -e /etc/systemd/system/obsctl-observability-stack.service").returncode != 0
    _check_node_file(c)


@pytest.mark.container
def test_remote_mode_with_the_node_config_renders_the_agent(container):
    """Remote mode with --node-config: a collector agent scrapes the node and
    exports OTLP to the endpoint. Without the collector image its bring-up
    stops first (exit 9, the reason printed, nothing changed); with
    --no-containers its configuration is written: the collector alone."""
    c = container("node-remote")
    _put_node_config(c)
    base = [f"{SRC}/install.sh", "--yes", "--otlp-endpoint", "http://127.0.0.1:4317",
            "--node-config", NODE_CONFIG]
    stopped = c.exec(base, env={"PIP_CACHE_DIR": "/cache/pip"})
    assert stopped.returncode == E_IMAGES, stopped.stdout + stopped.stderr
    collector = yaml.safe_load((REPO / "roles/observability_stack/defaults/main.yml").read_text())[
        "observability_stack_images"]["collector"]
    assert f"observability_stack: images not available: {collector}." in stopped.stderr
    assert "agent's collector image is not loaded" in stopped.stderr
    print(f"agent bring-up skipped: {collector} cannot be had here (no registry, no archive)")
    assert c.sh(f"cat {NODE_CONFIG}").stdout == NODE_CONFIG_TOML

    run = c.exec([*base, "--no-containers"], env={"PIP_CACHE_DIR": "/cache/pip"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"collector agent for the node \(observability_stack\) +changed", run.stdout), run.stdout
    compose = yaml.safe_load(c.sh(f"cat {STACK_DIR}/docker-compose.yml").stdout)
    assert list(compose["services"]) == ["collector"]
    assert compose["services"]["collector"]["image"] == collector
    otel = yaml.safe_load(c.sh(f"cat {STACK_DIR}/otelcol.yaml").stdout)
    jobs = {job["job_name"]: job for job in otel["receivers"]["prometheus"]["config"]["scrape_configs"]}
    assert list(jobs) == ["rust-dkg-engine"]  # obsctl has no Prometheus endpoint here: it exports OTLP
    assert jobs["rust-dkg-engine"]["static_configs"] == [{"targets": [NODE_METRICS]}]
    assert otel["exporters"] == {"otlp_grpc/backend": {"endpoint": "127.0.0.1:4317", "tls": {"insecure": True}}}
    assert c.sh(f"test -e {STACK_DIR}/prometheus").returncode != 0
    _check_node_file(c)
    record = c.sh("cat /opt/obsctl-installer/state.json").stdout
    assert '"agent": true' in record, record

    gone = c.exec([f"{SRC}/install.sh", "--uninstall", "--yes"])
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert c.sh(f"test -e {STACK_DIR}").returncode != 0
