"""A thin ctypes layer over the distribution's libbpf (``libbpf.so.1``).

Why ctypes and not a Python binding: no binding on PyPI is one we could
defend as well kept. ``pylibbpf`` is at 0.0.7 (November 2025, a 0.0.x
series), ``bpfmaps`` at 0.0.8 (2022), ``pyebpf`` wraps BCC (which compiles on
the target and needs kernel headers, absent here); BCC itself is not on
PyPI. libbpf is the kernel's own loader library, packaged by Debian 12
(``libbpf1`` 1.1.2) and Ubuntu, and its API since 1.0 is stable. The
functions used (all in libbpf 1.0+, ``/usr/include/bpf/libbpf.h`` and
``bpf.h`` of ``libbpf-dev``)::

    bpf_object__open_file, bpf_object__find_program_by_name,
    bpf_program__set_autoload, bpf_object__load, bpf_program__attach,
    bpf_link__destroy, bpf_object__find_map_by_name, bpf_map__fd,
    bpf_map__key_size, bpf_map__value_size, bpf_object__close,
    bpf_map_get_next_key, bpf_map_lookup_elem, bpf_map_update_elem,
    bpf_map_delete_elem, libbpf_num_possible_cpus, libbpf_set_print,
    btf__load_vmlinux_btf, btf__load_module_btf, btf__find_by_name_kind, btf__free

libbpf 1.x returns NULL (pointers) or a negative errno (ints) and sets
``errno``; every failure here raises :class:`LibbpfError` with the errno and
the call's name. libbpf's own messages (the verifier log, CO-RE relocation
failures) are kept in :data:`MESSAGES` (the last 200) for the caller's
warning and logged at debug level.

Cost (bench/fuse_bpf.py, this machine): see docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)

#: libbpf's recent messages (level, text), newest last.
MESSAGES: collections.deque[tuple[int, str]] = collections.deque(maxlen=200)

#: BTF_KIND_FUNC, include/uapi/linux/btf.h
BTF_KIND_FUNC = 12
#: bpf_map_update_elem flags, include/uapi/linux/bpf.h
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

_lib: ctypes.CDLL | None = None
_print_cb = None  # keep the callback alive


class LibbpfError(OSError):
    """A libbpf call failed: ``errno`` and the call (``strerror`` says what)."""


_P = ctypes.c_void_p


def _setup(lib: ctypes.CDLL) -> None:
    sig = {
        "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
        "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
        "bpf_program__set_autoload": (ctypes.c_int, [_P, ctypes.c_bool]),
        "bpf_object__load": (ctypes.c_int, [_P]),
        "bpf_program__attach": (_P, [_P]),
        "bpf_link__destroy": (ctypes.c_int, [_P]),
        "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
        "bpf_map__fd": (ctypes.c_int, [_P]),
        "bpf_map__key_size": (ctypes.c_uint32, [_P]),
        "bpf_map__value_size": (ctypes.c_uint32, [_P]),
        "bpf_object__close": (None, [_P]),
        "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, _P, _P]),
        "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
        "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
        "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, _P]),
        "libbpf_num_possible_cpus": (ctypes.c_int, []),
        "libbpf_set_print": (_P, [_P]),
        "btf__load_vmlinux_btf": (_P, []),
        "btf__load_module_btf": (_P, [ctypes.c_char_p, _P]),
        "btf__find_by_name_kind": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_uint32]),
        "btf__free": (None, [_P]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def library() -> ctypes.CDLL:
    """Load ``libbpf.so.1`` once (raises :class:`OSError` when absent: ``apt-get install libbpf1``)."""
    global _lib, _print_cb
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        _setup(lib)
        libc = ctypes.CDLL(None)
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, _P]
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _P)

        def printer(level: int, fmt: bytes, args: int) -> int:
            # va_list is passed as a pointer on x86-64 and arm64 (both pass it by reference)
            buf = ctypes.create_string_buffer(2048)
            libc.vsnprintf(buf, len(buf), fmt, args)
            text = buf.value.decode(errors="replace").rstrip()
            MESSAGES.append((level, text))
            log.debug("libbpf: %s", text)
            return 0

        _print_cb = proto(printer)
        lib.libbpf_set_print(ctypes.cast(_print_cb, _P))
        _lib = lib
    return _lib


def _fail(call: str, code: int | None = None) -> LibbpfError:
    err = abs(code) if code else (ctypes.get_errno() or errno.EINVAL)
    return LibbpfError(err, f"{call}: {os.strerror(err)}")


def btf_has_function(name: str, modules: tuple[str, ...] = ("fuse",)) -> bool:
    """True when ``name`` is a function (BTF_KIND_FUNC) in the running kernel's BTF:
    ``/sys/kernel/btf/vmlinux``, else the BTF of each of ``modules`` (FUSE built as a module)."""
    lib = library()
    vmlinux = lib.btf__load_vmlinux_btf()
    if not vmlinux:
        raise _fail("btf__load_vmlinux_btf")
    try:
        if lib.btf__find_by_name_kind(vmlinux, name.encode(), BTF_KIND_FUNC) > 0:
            return True
        for module in modules:
            if not os.path.exists(f"/sys/kernel/btf/{module}"):
                continue
            mod = lib.btf__load_module_btf(module.encode(), vmlinux)
            if not mod:
                continue
            try:
                if lib.btf__find_by_name_kind(mod, name.encode(), BTF_KIND_FUNC) > 0:
                    return True
            finally:
                lib.btf__free(mod)
        return False
    finally:
        lib.btf__free(vmlinux)


class Map:
    """One map of a loaded object: fd, key and value size; ``percpu`` maps
    return one value per possible CPU."""

    def __init__(self, fd: int, key_size: int, value_size: int, percpu: bool) -> None:
        self.fd, self.key_size, self.value_size, self.percpu = fd, key_size, value_size, percpu
        self.ncpus = library().libbpf_num_possible_cpus() if percpu else 1
        if self.ncpus < 1:
            raise _fail("libbpf_num_possible_cpus", self.ncpus)
        self._stride = (value_size + 7) // 8 * 8 if percpu else value_size

    def keys(self) -> Iterator[bytes]:
        """Every key (the map may change meanwhile: a key deleted after it was listed is skipped by items())."""
        lib = library()
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while lib.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            yield nxt.raw
            ctypes.memmove(key, nxt, self.key_size)
            prev = key

    def lookup(self, key: bytes) -> list[bytes] | None:
        """The value(s) of ``key`` (one per possible CPU for per-CPU maps), or None when absent."""
        buf = ctypes.create_string_buffer(self._stride * self.ncpus)
        if library().bpf_map_lookup_elem(self.fd, key, buf) != 0:
            return None
        raw = buf.raw
        return [raw[i * self._stride:i * self._stride + self.value_size] for i in range(self.ncpus)]

    def items(self) -> Iterator[tuple[bytes, list[bytes]]]:
        for key in list(self.keys()):
            values = self.lookup(key)
            if values is not None:
                yield key, values

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        rc = library().bpf_map_update_elem(self.fd, key, value, flags)
        if rc != 0:
            raise _fail("bpf_map_update_elem", rc)

    def delete(self, key: bytes) -> bool:
        return library().bpf_map_delete_elem(self.fd, key) == 0


class BpfObject:
    """An ELF BPF object: opened, programs chosen, loaded, attached; ``close()`` detaches everything.

    Args:
        path: the ``.bpf.o`` file.
        autoload: program name -> load it (programs not named keep libbpf's default: loaded).

    Raises:
        LibbpfError: open or load failed (``errno`` EPERM: no CAP_BPF/CAP_PERFMON; ENOENT:
            a hook function or a CO-RE field is missing; EINVAL: verifier or BTF problem,
            :data:`MESSAGES` has libbpf's explanation).
    """

    def __init__(self, path: str, autoload: dict[str, bool] | None = None) -> None:
        lib = library()
        self._links: list[int] = []
        self._obj = lib.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            raise _fail(f"bpf_object__open_file({path})")
        self.programs: list[str] = []
        try:
            for name, on in (autoload or {}).items():
                prog = lib.bpf_object__find_program_by_name(self._obj, name.encode())
                if not prog:
                    raise _fail(f"bpf_object__find_program_by_name({name})")
                lib.bpf_program__set_autoload(prog, on)
        except BaseException:
            self.close()
            raise

    def load(self) -> None:
        rc = library().bpf_object__load(self._obj)
        if rc != 0:
            raise _fail("bpf_object__load", rc)

    def attach(self, names: list[str]) -> None:
        """Attach the named (loaded) programs; on a failure the ones attached stay until close()."""
        lib = library()
        for name in names:
            prog = lib.bpf_object__find_program_by_name(self._obj, name.encode())
            link = lib.bpf_program__attach(prog) if prog else None
            if not link:
                raise _fail(f"bpf_program__attach({name})")
            self._links.append(link)
            self.programs.append(name)

    def map(self, name: str, percpu: bool = False) -> Map:
        lib = library()
        handle = lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not handle:
            raise _fail(f"bpf_object__find_map_by_name({name})")
        return Map(lib.bpf_map__fd(handle), lib.bpf_map__key_size(handle), lib.bpf_map__value_size(handle), percpu)

    def close(self) -> None:
        """Detach every program and free the object (maps go with the last reference). Idempotent."""
        lib = library()
        while self._links:
            lib.bpf_link__destroy(self._links.pop())
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None
