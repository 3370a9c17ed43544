"""Runs INSIDE the QEMU guest (not collected by pytest): bindfs under ``obsctl mount``,
a known workload, and one JSON result line on the serial console.

scripts/kernel-images copies this file to /opt/obsctl-guest/workload.py of the guest's
root file system; the guest's /init (tests/kernels/guest/init) runs it with the guest's
obsctl venv (/opt/obsctl/bin/python) once /proc, /sys, /dev, tracefs and fusectl are
mounted, fuse is loaded and loopback is up. It asserts nothing: it collects what the
guest saw and tests/kernels/test_qemu_kernels.py asserts on the host.

The workload is the one of tests/integration/test_fuse_bpf.py (same sizes, same
ENOENT and EACCES). The numbers come from obsctl's real Prometheus endpoint on the
guest's loopback (``[telemetry.metrics] bind_address``), parsed with
prometheus_client's own text parser, and from ``obsctl status --json``.

On a kernel where obsctl has no kernel source at all (5.10: fuse.ko without BTF,
no fuse tracepoints; ``sources.kernel`` is ``none``) there is nothing to wait
for: the workload runs once the mount is up and the result says what obsctl
exported and logged (``warnings``) for it.

Output: exactly one line ``OBSCTL_KERNEL_RESULT <json>`` (see :func:`main` for its keys),
also when something failed (then ``error`` says what).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

MARKER = "OBSCTL_KERNEL_RESULT "
OBSCTL = "/opt/obsctl/bin/obsctl"
SRC = "/srv/src"
MNT = "/mnt/fuse"
RUNTIME = "/run/obsctl"
PROM = "127.0.0.1:9464"
READ_SIZE = 1_000_000
WRITE_SIZE = 300_000
#: the held file of :func:`held_file`: written, fsynced, written again, closed
HELD_SIZE, TAIL_SIZE = 50_000, 7_000
#: Software emulation (TCG) runs Python 10-30 times slower than the host: generous bounds.
WAIT = 300.0


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OBSCTL_RUNTIME_DIR": RUNTIME, "PYTHONUNBUFFERED": "1", "PATH": "/opt/obsctl/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    return e


def status_entry() -> dict | None:
    out = subprocess.run([OBSCTL, "status", "--json"], env=env(), capture_output=True, text=True, timeout=WAIT,
                         check=False)
    try:
        entries = json.loads(out.stdout or "[]")
    except ValueError:
        return None
    for e in entries:
        if os.path.normpath(str(e.get("mountpoint") or "")) == MNT:
            return e
    return None


def scrape() -> dict:
    """obsctl's Prometheus endpoint -> {"ops": {opcode: n}, "errors": {type: n},
    "latency": {opcode: [count, sum_ms]}, "read_bytes": n, "write_bytes": n, "mount_up": 0|1|None}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{PROM}/metrics", timeout=30).read().decode()
    out: dict = {"ops": {}, "errors": {}, "latency": {}, "read_bytes": 0, "write_bytes": 0, "mount_up": None}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "obsctl_fs_ops_total":
                out["ops"][s.labels["opcode"]] = int(s.value)
            elif s.name == "obsctl_errors_total":
                out["errors"][s.labels["error_type"]] = int(s.value)
            elif s.name == "obsctl_fs_latency_ms_count":
                out["latency"].setdefault(s.labels["opcode"], [0, 0.0])[0] = int(s.value)
            elif s.name == "obsctl_fs_latency_ms_sum":
                out["latency"].setdefault(s.labels["opcode"], [0, 0.0])[1] = float(s.value)
            elif s.name == "obsctl_fs_read_bytes_total":
                out["read_bytes"] = int(s.value)
            elif s.name == "obsctl_fs_write_bytes_total":
                out["write_bytes"] = int(s.value)
            elif s.name == "obsctl_mount_up":
                out["mount_up"] = int(s.value)
    return out


def wait_until(pred, what: str, timeouts: list[str], timeout: float = WAIT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - the endpoint may not answer yet
            pass
        time.sleep(0.5)
    timeouts.append(what)
    return False


def workload(result: dict) -> None:
    """The known workload (tests/integration/test_fuse_bpf.py); records what each step gave."""
    steps = result["steps"]
    try:
        os.stat(f"{MNT}/no-such-file")
        steps["lookup_enoent"] = "no error"
    except FileNotFoundError:
        steps["lookup_enoent"] = "ENOENT"
    data = os.urandom(WRITE_SIZE)
    with open(f"{MNT}/new.bin", "wb") as fh:
        fh.write(data)
    steps["written"] = os.stat(f"{SRC}/new.bin").st_size
    os.stat(f"{MNT}/new.bin")
    with open(f"{MNT}/read.bin", "rb") as fh:
        steps["read"] = len(fh.read())
    os.unlink(f"{MNT}/new.bin")
    try:
        open(f"{MNT}/locked", "rb").close()
        steps["open_locked"] = "no error"
    except PermissionError:
        steps["open_locked"] = "EACCES"
    with open(f"{SRC}/gone", "w") as fh:
        fh.write("x")
    os.stat(f"{MNT}/gone")
    os.unlink(f"{SRC}/gone")
    try:  # the dentry is cached (entry timeout 1 s): OPEN goes to the daemon, which answers ENOENT
        open(f"{MNT}/gone", "rb").close()
        steps["open_gone"] = "no error"
    except FileNotFoundError:
        steps["open_gone"] = "ENOENT"


def kernel_trace() -> dict:
    return ((status_entry() or {}).get("sources") or {}).get("kernel_trace") or {}


def held_file(result: dict, timeouts: list[str]) -> None:
    """Written bytes count when the daemon says they are stored (docs/metrics.md, "Written and
    refused bytes"): a file written and held open is pending, not written; its FSYNC answered 0
    commits them; what is written after is committed at close (bindfs answers FLUSH with
    ENOSYS, so by the RELEASE). Records the written-bytes growth at each step in
    result["commit"] (the host asserts on it)."""
    steps = result["commit"] = {}
    before = scrape()["write_bytes"]
    fd = os.open(f"{MNT}/held.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, os.urandom(HELD_SIZE))
        polls = kernel_trace().get("polls", 0)
        wait_until(lambda: kernel_trace().get("polls", 0) >= polls + 2, "two polls after the held write", timeouts)
        steps["held_written"] = scrape()["write_bytes"] - before
        steps["held_pending"] = kernel_trace().get("pending_write_bytes")
        os.fsync(fd)
        wait_until(lambda: scrape()["write_bytes"] - before >= HELD_SIZE, "bytes committed by fsync", timeouts)
        steps["fsync_written"] = scrape()["write_bytes"] - before
        os.write(fd, os.urandom(TAIL_SIZE))
    finally:
        os.close(fd)
    wait_until(lambda: scrape()["write_bytes"] - before >= HELD_SIZE + TAIL_SIZE, "bytes committed at close",
               timeouts)
    polls = kernel_trace().get("polls", 0)
    wait_until(lambda: kernel_trace().get("polls", 0) >= polls + 1, "a poll after the close", timeouts)
    steps["close_written"] = scrape()["write_bytes"] - before
    steps["close_pending"] = kernel_trace().get("pending_write_bytes")
    os.unlink(f"{MNT}/held.bin")


def fuse_kind() -> str:
    """``module`` (listed in /proc/modules), ``builtin`` (a filesystem without a module) or ``absent``."""
    with open("/proc/modules") as fh:
        if any(line.split(" ", 1)[0] == "fuse" for line in fh):
            return "module"
    with open("/proc/filesystems") as fh:
        return "builtin" if any(line.split()[-1] == "fuse" for line in fh if line.strip()) else "absent"


def main() -> int:
    """Keys of the result: kernel, fuse_before_obsctl (absent | builtin), fuse (builtin |
    module, once obsctl mounted), module_btf, steps, timeouts,
    baseline / metrics (scrapes before and after the workload), status (sources),
    commit (written bytes held, fsynced, closed: :func:`held_file`),
    live (obsctl status's live counters), requester (this thread's comm[tid]),
    no_kernel_source (True when obsctl said sources.kernel ``none``), unmount_rc,
    obsctl_rc, warnings (obsctl's WARNING lines, whole log), tracebacks (their
    count in the whole log), log (obsctl's output, tail), error."""
    result: dict = {"kernel": os.uname().release, "steps": {}, "timeouts": [],
                    # /init loads no fuse module: obsctl must (collectors.fuse_bpf.load_fuse_module)
                    "fuse_before_obsctl": fuse_kind(),
                    "vmlinux_btf": os.path.exists("/sys/kernel/btf/vmlinux")}
    timeouts = result["timeouts"]
    proc = None
    log_path = "/run/obsctl-mount.log"
    t0 = time.monotonic()
    try:
        os.makedirs(SRC, exist_ok=True)
        os.makedirs(MNT, exist_ok=True)
        with open(f"{SRC}/read.bin", "wb") as fh:
            fh.write(os.urandom(READ_SIZE))
        with open(f"{SRC}/locked", "w") as fh:
            fh.write("x")
        os.chmod(f"{SRC}/locked", 0)
        tel = "/run/telemetry.toml"
        with open(tel, "w") as fh:
            fh.write("[telemetry]\nmode = \"remote\"\n\n[telemetry.traces]\nenabled = false\n\n"
                     "[telemetry.metrics]\nenabled = true\nexport_interval_seconds = 1\n"
                     f"bind_address = \"{PROM}\"\n")
        log = open(log_path, "wb")
        # the daemon without CAP_DAC_OVERRIDE/READ_SEARCH: root's open of the mode-000 file fails in bindfs
        proc = subprocess.Popen(
            [OBSCTL, "mount", SRC, MNT, "--impl", "generic", "--telemetry-config", tel,
             "--ready-timeout", str(int(WAIT)), "--", "setpriv", "--bounding-set",
             "-dac_override,-dac_read_search", "bindfs", "-f", SRC, MNT],
            env=env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def watching() -> bool:
            """The kernel source watches the connection, or obsctl said it has none
            (``sources.kernel`` ``none``: then the mount being up is enough)."""
            sources = (status_entry() or {}).get("sources") or {}
            if (sources.get("kernel_trace") or {}).get("connection") is not None:
                return True
            return sources.get("kernel") == "none" and os.path.ismount(MNT) and scrape()["mount_up"] == 1

        if not wait_until(lambda: watching() or proc.poll() is not None,
                          "kernel source watching the connection (or none, and the mount up)", timeouts):
            raise RuntimeError("obsctl never watched the connection")
        if proc.poll() is not None:
            raise RuntimeError(f"obsctl mount exited with {proc.returncode}")
        result["mounted_after_s"] = round(time.monotonic() - t0, 1)
        result["fuse"] = fuse_kind()
        result["module_btf"] = os.path.exists("/sys/kernel/btf/fuse")
        # fusectl (in fuse.ko) only now, so nothing but obsctl and bindfs loaded the module first
        subprocess.run(["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"], check=False)
        no_kernel = result["no_kernel_source"] = ((status_entry() or {}).get("sources") or {}).get("kernel") == "none"
        if not no_kernel:
            wait_until(lambda: sum(scrape()["ops"].values()) > 0, "first counted request", timeouts)
        result["baseline"] = scrape()
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/comm") as fh:
            result["requester"] = f"{fh.read().strip()}[{tid}]"
        workload(result)
        if not no_kernel:
            wait_until(lambda: {"eacces", "enoent"} <= set(scrape()["errors"]), "eacces and enoent exported",
                       timeouts)
            wait_until(lambda: scrape()["read_bytes"] >= READ_SIZE and scrape()["write_bytes"] >= WRITE_SIZE,
                       "read and write bytes exported", timeouts)
        time.sleep(2)  # one more poll (export interval 1 s): nothing late
        result["metrics"] = scrape()
        st = status_entry() or {}
        result["status"] = st.get("sources")
        result["live"] = st.get("live")
        if not no_kernel:  # without a kernel source no written bytes are counted to wait for
            held_file(result, timeouts)
    except Exception:  # noqa: BLE001 - reported to the host in the result line
        result["error"] = traceback.format_exc()
    finally:
        if proc is not None:
            if proc.poll() is None:
                un = subprocess.run([OBSCTL, "unmount", MNT, "--timeout", str(int(WAIT))], env=env(),
                                    capture_output=True, text=True, timeout=WAIT + 30, check=False)
                result["unmount_rc"] = un.returncode
            try:
                result["obsctl_rc"] = proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                result["obsctl_rc"] = "killed"
            with open(log_path, "rb") as fh:
                text = fh.read().decode(errors="replace")
            # obsctl's log format: "obsctl: LEVEL: logger: message" (obsctl.cli._setup_logging)
            result["warnings"] = [line for line in text.splitlines() if line.startswith("obsctl: WARNING: ")]
            result["tracebacks"] = text.count("Traceback (most recent call last)")
            result["log"] = text[-4000:]
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        sys.stdout.write("\n" + MARKER + json.dumps(result, sort_keys=True) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
