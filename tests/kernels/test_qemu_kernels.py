"""obsctl's kernel FUSE source on Debian's own older kernels, booted under QEMU.

scripts/kernel-images builds (once, cached under .cache/kernels/) Debian 11's
5.10, Debian 12's 6.1 and Debian 13's 6.12 kernel packages from the distribution
archive and one debootstrap root file system with obsctl, bindfs and libbpf in
it (.cache/kernels/images.json lists them). Each kernel boots here with
qemu-system-x86_64 under software emulation (TCG: this machine has /dev/kvm but
no vmx), no network device at all (``-nic none``); the guest's /init
(tests/kernels/guest/init) loads fuse and runs tests/kernels/guest/workload.py:
bindfs under ``obsctl mount``, the workload of tests/integration/test_fuse_bpf.py,
and one JSON line on the serial console with what obsctl's Prometheus endpoint
and ``obsctl status --json`` said. This test asserts on it:

* the source each kernel must give: eBPF ``tracepoint`` hooks from 6.12 (the fuse
  tracepoints), eBPF ``fentry`` hooks before (FUSE built in, or a module with
  its BTF: CONFIG_DEBUG_INFO_BTF_MODULES); a module without BTF cannot be
  hooked (Debian 11's 5.10: module BTF came in 5.11), and no fuse tracepoints
  exist there either: then the mount must still work, with exactly one
  warning naming why eBPF and the tracepoints are not used, ``obsctl status
  --json`` naming the source in use (``kernel`` ``none``: for a generic driver
  no FUSE numbers at all) with both reasons, nothing invented on the
  metrics, and clean exit codes;
* for every kernel: ``obsctl unmount`` and ``obsctl mount`` exit 0, no traceback;
* per-opcode counts for every request of the workload, one latency sample per
  request (latency count == request count for every opcode: every end had its
  start), ENOENT and EACCES exactly once each, read and write bytes exactly
  what the workload moved (whole files: no page rounding, docs/metrics.md);
* the workload's thread named among the requesters (``obsctl top``);
* written bytes counted at the commit, not at the WRITE (docs/metrics.md, "Written and
  refused bytes"): a file held open after its write is pending (written +0), its
  fsync commits it, the rest is committed at close (the file handle read from
  ``fuse_write_in`` / ``fuse_fsync_in`` / ``fuse_release_in`` on each kernel).

The run needs the images: without .cache/kernels/images.json the test skips
with the reason, except under ``OBSCTL_KERNELS_REQUIRED=1`` (scripts/test's
``kernels`` group, which builds them first), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernels

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KERNEL_IMAGES_DIR", ROOT / ".cache" / "kernels"))
MANIFEST = CACHE / "images.json"
MARKER = "OBSCTL_KERNEL_RESULT "
#: one boot under TCG took 25-35 s on this 2-core machine; generous for a loaded CI machine
BOOT_TIMEOUT = float(os.environ.get("OBSCTL_QEMU_TIMEOUT", "900"))
#: the workload of tests/kernels/guest/workload.py
READ_SIZE, WRITE_SIZE = 1_000_000, 300_000
HELD_SIZE, TAIL_SIZE = 50_000, 7_000
OPCODES = ("lookup", "getattr", "open", "read", "write", "create", "unlink", "flush", "release")


def _kernels() -> list:
    if not MANIFEST.exists():
        return [pytest.param(None, id="no-images")]
    kernels = json.loads(MANIFEST.read_text())["kernels"]
    return [pytest.param(k, id=k["label"]) for k in kernels]


def _version(release: str) -> tuple[int, int]:
    major, minor = release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()))


def expected_source(kernel: dict) -> tuple[str, str]:
    """(eBPF hook family or "fallback", why) for a kernel of the manifest.

    The rule of obsctl.collectors.fuse_bpf.FAMILIES: the fuse tracepoints came in
    6.12 (fs/fuse/fuse_trace.h); before, fentry on fs/fuse/dev.c's functions,
    which needs their BTF: in vmlinux when FUSE is built in (CONFIG_FUSE_FS=y),
    in /sys/kernel/btf/fuse when it is a module built with
    CONFIG_DEBUG_INFO_BTF_MODULES=y.
    """
    if _version(kernel["release"]) >= (6, 12):
        return "tracepoint", "Linux 6.12+ has the fuse tracepoints"
    if kernel["fuse"] == "y":
        return "fentry", "no fuse tracepoints before 6.12; FUSE built in: its functions are in vmlinux's BTF"
    if kernel["btf_modules"]:
        return "fentry", "no fuse tracepoints before 6.12; fuse.ko with module BTF (/sys/kernel/btf/fuse)"
    return "fallback", "fuse.ko without module BTF: fentry cannot name its functions, and no tracepoints"


def boot(kernel: dict, initrd: str, log: Path) -> tuple[dict, float]:
    """Boot ``kernel`` with the initramfs; (the guest's result, seconds). Fails with the console's tail."""
    accel = os.environ.get("OBSCTL_QEMU_ACCEL", "tcg")
    cmd = ["qemu-system-x86_64", "-accel", accel, "-cpu", "max" if accel == "tcg" else "host",
           "-smp", "2", "-m", "2048", "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", kernel["vmlinuz"], "-initrd", initrd,
           # panic=1 + -no-reboot: a guest whose /init dies ends the run instead of hanging it.
           # no_timer_check: skip the boot-time check that the timer interrupt ticks within a
           # busy-wait (arch/x86/kernel/apic/io_apic.c timer_irq_works, notimercheck); under
           # software emulation on a loaded host the 5.10 guest missed it and panicked
           # ("IO-APIC + timer doesn't work!", check_timer) before /init
           "-append", "console=ttyS0 panic=1 loglevel=4 no_timer_check"]
    start = time.monotonic()
    with open(log, "wb") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=BOOT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{kernel['release']}: no power-off within {BOOT_TIMEOUT:.0f} s; console: {log}\n"
                        + log.read_text(errors="replace")[-3000:])
    took = time.monotonic() - start
    console = log.read_text(errors="replace")
    lines = [line for line in console.splitlines() if line.startswith(MARKER)]
    assert proc.returncode == 0 and len(lines) == 1, (
        f"{kernel['release']}: qemu rc={proc.returncode}, {len(lines)} result lines; console {log}:\n{console[-4000:]}")
    return json.loads(lines[0][len(MARKER):]), took


@pytest.mark.parametrize("kernel", _kernels())
def test_kernel_source_numbers(kernel, tmp_path, kernel_summary):
    """One Debian kernel: the source it must give and the workload's numbers, exact."""
    if kernel is None:
        reason = f"{MANIFEST} missing: run scripts/kernel-images (scripts/test's kernels group does)"
        if os.environ.get("OBSCTL_KERNELS_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 missing: scripts/dev-setup installs qemu-system-x86")
    initrd = json.loads(MANIFEST.read_text())["initrd"]
    logs = ROOT / ".cache" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"kernel-{kernel['label']}.console"
    result, took = boot(kernel, initrd, log)
    where = f"{kernel['release']} ({kernel['package']} {kernel['version']}); console: {log}"
    assert not result.get("error"), f"{where}\n{result['error']}\n{result.get('log', '')}"
    assert result["timeouts"] == [], (where, result["timeouts"], result.get("log"))
    assert result["kernel"] == kernel["release"], where
    assert result["fuse"] == {"y": "builtin", "m": "module"}[kernel["fuse"]], (where, result["fuse"])
    # a modular fuse was not loaded when obsctl started (the guest's /init loads none): obsctl
    # loaded it before its probe, so the fentry kernels below still get the eBPF source
    assert result["fuse_before_obsctl"] == {"y": "builtin", "m": "absent"}[kernel["fuse"]], (where, result)
    if kernel["fuse"] == "m":
        assert result["module_btf"] == kernel["btf_modules"], (where, result["module_btf"])
    # the mount ended cleanly whatever the source: unmount and the supervisor exit 0
    assert result.get("unmount_rc") == 0 and result.get("obsctl_rc") == 0 and result.get("tracebacks") == 0, (
        where, result.get("unmount_rc"), result.get("obsctl_rc"), result.get("log"))
    # bindfs under obsctl did what the workload asked, seen by the guest's own system calls
    assert result["steps"] == {"lookup_enoent": "ENOENT", "written": WRITE_SIZE, "read": READ_SIZE,
                               "open_locked": "EACCES", "open_gone": "ENOENT"}, (where, result["steps"])

    family, why = expected_source(kernel)
    sources = result["status"]
    trace = sources["kernel_trace"]
    if family == "fallback":
        # not a silent pass: the mount worked, and obsctl said once, in its log and in its
        # status, why neither eBPF nor the tracepoints could be used (obsctl.sources.kernel_source)
        assert result["no_kernel_source"] is True, (where, sources)
        assert sources["kernel"] == "none", (where, sources)
        # --impl generic has no driver log: nothing feeds the FUSE quantities (docs/metrics.md)
        assert {sources[q] for q in ("fs_ops", "fs_latency", "fs_bytes", "fs_errors")} == {None}, (where, sources)
        assert trace["source"] == "tracefs" and trace["support"] == "none", (where, trace)
        assert "has no fuse:fuse_request_send/_end tracepoints (they came in 6.12)" in trace["reason"], (where, trace)
        assert "fuse.ko has no BTF" in trace["ebpf_unavailable"], (where, trace)
        assert len(result["warnings"]) == 1, (where, result["warnings"])
        warning = result["warnings"][0]
        assert ("eBPF FUSE source unavailable (" in warning and "fuse.ko has no BTF" in warning
                and "nor the tracefs source (" in warning and "no FUSE operation numbers for this mount" in warning), (
            where, warning)
        # nothing invented: no FUSE numbers exported, the mount reported up
        after = result["metrics"]
        assert after["ops"] == {} and after["read_bytes"] == 0 and after["write_bytes"] == 0, (where, after)
        assert after["errors"] == {} and after["mount_up"] == 1, (where, after)
        kernel_summary.append(
            f"{kernel['label']:>5}  {where.split(';', 1)[0]}: no kernel source (status: kernel {sources['kernel']!r}, "
            f"eBPF: {trace['ebpf_unavailable']}; tracefs: {trace['reason']}); {why}; bindfs mounted and worked, "
            f"one warning, no FUSE numbers exported, unmount rc 0; boot + workload {took:.0f} s")
        return
    # the eBPF source loaded: nothing to warn about
    assert result["warnings"] == [], (where, result["warnings"])
    assert sources["kernel"] == "ebpf" and trace["source"] == "ebpf", (where, sources)
    assert trace["hooks"] == family, (where, why, trace)
    assert {sources[q] for q in ("fs_ops", "fs_latency", "fs_bytes", "fs_errors")} == {"kernel"}, (where, sources)
    assert trace["map_full"] == 0 and trace["not_sent"] == 0, (where, trace)

    # what obsctl exported for it (Prometheus endpoint, after the workload)
    before, after = result["baseline"], result["metrics"]
    for op in OPCODES:
        assert after["ops"].get(op, 0) > before["ops"].get(op, 0), (where, op, before["ops"], after["ops"])
    for op, n in after["ops"].items():
        count, total_ms = after["latency"].get(op, (0, 0.0))
        # every request counted has its latency: the start hook saw every request that ended
        assert count == n and total_ms > 0, (where, op, n, after["latency"].get(op))
    assert after["errors"] == {"eacces": 1, "enoent": 1}, (where, after["errors"])
    # whole files read and written: exact (docs/metrics.md, page rounding)
    assert after["read_bytes"] == READ_SIZE and after["write_bytes"] == WRITE_SIZE, (where, after)
    assert trace["ends"] >= sum(after["ops"].values()), (where, trace, after["ops"])
    requesters = result["live"]["requesters"] or {}
    assert requesters.get(result["requester"], 0) >= 10, (where, result["requester"], requesters)
    # written bytes: pending while the file is held open, committed by its fsync, the rest at close
    assert result["commit"] == {"held_written": 0, "held_pending": HELD_SIZE, "fsync_written": HELD_SIZE,
                                "close_written": HELD_SIZE + TAIL_SIZE, "close_pending": 0}, (where, result["commit"])

    kernel_summary.append(
        f"{kernel['label']:>5}  {where.split(';', 1)[0]}: eBPF {family} ({trace['reason']}); "
        f"FUSE {result['fuse']}{' with module BTF' if result['module_btf'] else ''}; "
        f"{sum(after['ops'].values())} requests, {len(after['ops'])} opcodes, read {after['read_bytes']} B, "
        f"write {after['write_bytes']} B, errors {after['errors']}; held file: written +0 while open, "
        f"+{result['commit']['fsync_written']} at fsync, +{result['commit']['close_written']} at close; "
        f"boot + workload {took:.0f} s")
