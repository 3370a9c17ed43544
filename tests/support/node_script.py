"""What the stand-in node scripts share (tests/support/real_node.py, synthetic_node.py):
run until SIGTERM/SIGINT, say ``listening 127.0.0.1:PORT`` on stdout's first
line, and be started as a child process by a test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

#: the first stdout line of a node script, followed by ``PORT``
LISTENING = "listening 127.0.0.1:"


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (install in the script's main thread)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    signal.signal(signal.SIGINT, lambda *_a: stop.set())
    return stop


def announce(port: int) -> None:
    """Print the ``listening 127.0.0.1:PORT`` line :func:`start` waits for."""
    print(f"{LISTENING}{port}", flush=True)


def start(script: str, label: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Run ``script`` with ``args`` in a child process (``sys.executable``).

    Returns the process (stdout piped, text) and its ``127.0.0.1:PORT``
    scrape target once it listens. Raises AssertionError naming ``label``
    with what the child said when its first line is not the ``listening``
    line (the child is killed)."""
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith(LISTENING):
        rest = proc.communicate(timeout=10)[0] if proc.poll() is not None else ""
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"{label} {args}: {line!r} {rest!r}")
    return proc, line.split(" ", 1)[1]
