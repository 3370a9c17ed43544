"""What the bench scripts share: progress lines, the results file, the clean-up of their work directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

#: bench/results: where each script writes NAME-latest.json
RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    """One progress / result line on stderr (stdout carries a child collector's JSON)."""
    print(msg, file=sys.stderr, flush=True)


def write_results(name: str, results: dict) -> None:
    """Write ``results`` to bench/results/NAME-latest.json and say so."""
    out = RESULTS / f"{name}-latest.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"written {out}")


def remove_work(work: str) -> None:
    """Lazily unmount every mountpoint directly under ``work`` (``fusermount3 -u -z``) and remove it."""
    for name in os.listdir(work):
        subprocess.run(["fusermount3", "-u", "-z", os.path.join(work, name)], capture_output=True, check=False)
    shutil.rmtree(work, ignore_errors=True)


def poll_until_stdin_closes(collector: Any, interval: float = 0.5) -> None:
    """A child collector's loop: say ``ready`` on stdout, ``collector.poll()`` every
    ``interval`` seconds until the parent closes our stdin, then one last poll."""
    print("ready", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.wait(interval):
        collector.poll()
    collector.poll()
