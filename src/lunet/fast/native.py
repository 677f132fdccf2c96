"""The spline's passes as compiled loops (``spline_kernels.c``, a few features at a time in vector
registers): built with the system's C compiler on first use, kept in a cache folder, and called
through ``ctypes`` on contiguous CPU tensors of float32 or float64.

Where no compiler is found or the build fails, :func:`kernels` returns None and the passes of
:mod:`lunet.fast.spline` run in torch ops; :func:`status` says which, and why.
``LUNET_NATIVE=0`` in the environment, or :func:`disabled` around a block, turns the compiled
loops off. ``LUNET_CACHE`` names the cache folder (default ``~/.cache/lunet``, or a folder in the
system's temporary one where that cannot be written).

A call's rows may be split among up to :data:`ROW_THREADS` threads (the caller's and a pool's,
never more than ``torch.get_num_threads()``) where there are enough of them; ``ctypes`` releases
the GIL while the loops run. By default they are not split (see :data:`ROW_THREADS`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, cast

import torch

__all__ = ["kernels", "status", "disabled", "usable", "address", "library_path", "split_rows", "SOURCE", "LANES",
           "SPLIT_ENTRIES", "ROW_THREADS"]

SOURCE = Path(__file__).with_name("spline_kernels.c")
# the loops' widest vector, eight floats (spline_kernels.c's LANES_float): their tables are padded to a
# multiple of it
LANES = 8
# no fast-math and no fused multiply-adds, so that the loops round as the formulas are written
_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-Wno-psabi")


def _isa_flags() -> tuple[str, ...]:
    """The vector instructions to build for: on x86-64, AVX2 where this CPU has it (the loops'
    vectors of eight are then one instruction wide), the architecture's baseline elsewhere. They are
    part of the cache's key, so a library is only loaded on a CPU that has them."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return ("-mavx2",) if "avx2" in flags else ()


_lock = threading.Lock()
_state: dict[str, object] = {}
class _Off(threading.local):
    depth = 0  # disabled() blocks this thread is inside


_off = _Off()

_I64, _P = ctypes.c_int64, ctypes.c_void_p


def _signatures(lib: ctypes.CDLL) -> None:
    # (rows, n, K, P[, first], each row's spline, bound or limit), then the tables, the input and the
    # outputs as addresses
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        for name, integers, addresses in (("forward", 5, 11), ("inverse", 4, 10), ("sample", 4, 9)):
            fn = getattr(lib, f"lunet_spline_{name}_{suffix}")
            fn.argtypes = [_I64] * integers + [_P, real] + [_P] * addresses
            fn.restype = None
        backward = getattr(lib, f"lunet_spline_backward_{suffix}")
        backward.argtypes = [_I64] * 3 + [real] + [_P] * 11
        backward.restype = None


def _cache_dir() -> Path:
    """``LUNET_CACHE``, else ``~/.cache/lunet`` where it can be written, else a folder in the
    system's temporary one."""
    chosen = os.environ.get("LUNET_CACHE")
    if chosen:
        return Path(chosen)
    home = Path.home() / ".cache" / "lunet"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "lunet-cache"


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path() -> Optional[Path]:
    """Where the library of this source, compiler and machine is cached (None without a compiler)."""
    compiler = _compiler()
    if compiler is None:
        return None
    flags = " ".join((compiler, *_FLAGS, *_isa_flags(), platform.machine(), sys.platform))
    key = hashlib.sha256(SOURCE.read_bytes() + flags.encode()).hexdigest()[:16]
    return _cache_dir() / f"spline_kernels-{key}.so"


def _compile(compiler: str, target: Path) -> Optional[str]:
    """Builds the library into ``target`` atomically (another process sees all of it or none);
    None, or why it could not."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            done = subprocess.run([compiler, *_FLAGS, *_isa_flags(), str(SOURCE), "-o", str(built), "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                return f"{compiler} could not build {SOURCE.name} ({first})"
            os.replace(built, target)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"building {SOURCE.name} failed ({type(exc).__name__}: {exc})"
    return None


def _load(target: Path) -> Optional[ctypes.CDLL]:
    try:
        lib = ctypes.CDLL(str(target))
        _signatures(lib)
        return lib
    except (OSError, AttributeError):
        return None


def _build() -> tuple[Optional[ctypes.CDLL], str]:
    """The library, read from the cache or built (again, where the cached one does not load), and a
    line saying which, or why not."""
    if not SOURCE.is_file():
        return None, f"{SOURCE} is missing: the spline runs in torch ops"
    target, compiler = library_path(), _compiler()
    if target is None or compiler is None:
        return None, "no C compiler found (cc, gcc or $CC): the spline runs in torch ops"
    lib = _load(target) if target.is_file() else None
    if lib is None:
        failure = _compile(compiler, target)
        if failure is not None:
            return None, f"{failure}: the spline runs in torch ops"
        lib = _load(target)
        if lib is None:
            return None, f"{target} was built but does not load: the spline runs in torch ops"
    return lib, f"compiled loops from {target}"


def _library() -> Optional[ctypes.CDLL]:
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"], _state["status"] = _build()
    return cast(Optional[ctypes.CDLL], _state["lib"])


def kernels() -> Optional[ctypes.CDLL]:
    """The compiled library, built on the first call (None where it cannot be, or is turned off)."""
    if os.environ.get("LUNET_NATIVE", "1") == "0" or _off.depth:
        return None
    return _library()


def status() -> str:
    """Whether the spline's passes run as compiled loops, in one line (building them if need be)."""
    if os.environ.get("LUNET_NATIVE", "1") == "0":
        return "turned off by LUNET_NATIVE=0: the spline runs in torch ops"
    _library()
    return str(_state["status"])


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """The spline's passes in torch ops inside the block (this thread), as without a compiler."""
    _off.depth += 1
    try:
        yield
    finally:
        _off.depth -= 1


def usable(*tensors: torch.Tensor) -> Optional[ctypes.CDLL]:
    """The library where every tensor is a contiguous CPU tensor of one dtype, float32 or float64;
    else None. The loops read and write the tensors' memory: no autograd records them."""
    first = tensors[0]
    if first.dtype not in (torch.float32, torch.float64) or first.device.type != "cpu":
        return None
    if any(t.dtype != first.dtype or t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    return kernels()


def address(t: Optional[torch.Tensor]) -> Optional[int]:
    """The address of ``t``'s first element, None (NULL) for None."""
    return None if t is None else t.data_ptr()


# Entries (rows x features) per thread from which a call's rows are split among threads: below it,
# handing rows to another thread costs more than it saves
SPLIT_ENTRIES = 1 << 15
# The most threads a call's rows are split among. One: threads of this module's pool contend with
# torch's own (most likely its OpenMP workers, which keep spinning for a while after each of
# torch's parallel regions), so a split pass waits for a core instead of gaining one; measured
# slower on two cores in training, density and sampling alike (docs/benchmark.md, "Threads").
ROW_THREADS = 1

_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """A forked child has none of its parent's pool threads: it makes its own."""
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def split_rows(rows: int, features: int, run: Callable[[int, int], None]) -> int:
    """``run(start, stop)`` over ``rows`` rows of ``features`` entries, in parts of consecutive rows
    on up to :data:`ROW_THREADS` threads, at most ``torch.get_num_threads()`` (this one and a pool's);
    returns the number of parts. Each part's rows are the caller's to write: parts never share an
    output row."""
    parts = max(1, min(ROW_THREADS, torch.get_num_threads(), rows, rows * features // SPLIT_ENTRIES))
    if parts == 1:
        run(0, rows)
        return 1
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < parts - 1:
            _pool, _pool_size = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="lunet-loops"), parts - 1
        pool = _pool
    bounds = [rows * i // parts for i in range(parts + 1)]
    others = [pool.submit(run, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    run(bounds[0], bounds[1])
    for other in others:
        other.result()
    return parts
