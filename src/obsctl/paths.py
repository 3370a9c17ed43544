"""Where obsctl keeps its files on a host: one definition, read by the CLI, ``obsctl top`` and the tests.

* the runtime directory (state files, :mod:`obsctl.statefile`):
  :data:`DEFAULT_RUNTIME_DIR`, or ``$OBSCTL_RUNTIME_DIR``.
"""

from __future__ import annotations

import os

#: Where the per-mount state files live (under ``mounts/``); OBSCTL_RUNTIME_DIR overrides it.
DEFAULT_RUNTIME_DIR = "/run/obsctl"


def runtime_dir() -> str:
    """``$OBSCTL_RUNTIME_DIR`` or /run/obsctl."""
    return os.environ.get("OBSCTL_RUNTIME_DIR", DEFAULT_RUNTIME_DIR)
