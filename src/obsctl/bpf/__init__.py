"""BPF programs of obsctl, compiled into package data by scripts/build-bpf (never on the target).

* ``fuse_requests.bpf.c`` -> ``fuse_requests.bpf.o``: per FUSE connection and
  opcode request counts, latency buckets, errors, bytes and requesting tasks
  (read by :mod:`obsctl.collectors.fuse_bpf`).
* :mod:`obsctl.bpf.libbpf`: the ctypes loader over ``libbpf.so.1``.
"""

from __future__ import annotations

from pathlib import Path

#: The compiled object shipped with the package (absent when scripts/build-bpf has not run).
FUSE_REQUESTS_OBJECT = Path(__file__).with_name("fuse_requests.bpf.o")
