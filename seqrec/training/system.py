"""Process and device helpers of training: seeding, RNG state capture, devices, autocast, heap, RSS.

Nothing here knows about models or runs; the trainer and the checkpoint state (``state.py``) use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import random
import resource
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from seqrec.errors import SeqrecError


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's global and torch's RNGs (model initialisation reads them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; a cuda device on a machine without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqrecError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def autocast(kind: str | None, device: torch.device) -> Any:
    """The mixed-precision context of ``train.autocast`` (None: a no-op context); reusable across steps."""
    if not kind:
        return contextlib.nullcontext()
    if kind == "fp16" and device.type != "cuda":
        raise SeqrecError("train.autocast=fp16 needs CUDA; use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


def global_rng_state() -> dict[str, Any]:
    """Python's, numpy's global, torch's and CUDA's RNG states, as ``torch.load(weights_only=True)`` allows
    (JSON strings, tensors, plain numbers)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": json.dumps([version, list(internal), gauss]),
            "numpy_global": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                             "has_gauss": int(has_gauss), "gauss": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_global_rng_state(s: dict[str, Any]) -> None:
    """Inverse of ``global_rng_state`` (CUDA states are skipped on a machine without CUDA)."""
    version, internal, gauss = json.loads(s["python"])
    random.setstate((version, tuple(internal), gauss))
    g = s["numpy_global"]
    np.random.set_state((g["name"], g["keys"].numpy().astype(np.uint32), g["pos"], g["has_gauss"], g["gauss"]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the OS; True where that is possible (glibc).

    Losses whose intermediate shapes change from batch to batch (SCE ``union``, RECE) leave glibc's
    heap fragmented, so a long run's RSS creeps far above its working set. Once per epoch costs
    milliseconds; on ML-1M with ``sce`` union+cover it cut the 15-epoch peak RSS from 2.8 to 2.2 GB
    (docs/benchmarks.md).
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = _libc("malloc_trim") or False
    if not _MALLOC_TRIM:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None


def _libc(name: str) -> Any:
    """The C library's function ``name``, or None (no C library handle, e.g. Windows; or not glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except (OSError, TypeError):
        return None

# glibc mallopt parameters (malloc.h) and glibc's defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_HEAP_KEPT = False  # whether tune_allocator's settings are in force


def tune_allocator() -> bool:
    """Keep freed C-heap memory for reuse between training steps; True where applied (glibc).

    A step allocates and frees the same large buffers every time (full CE: five [N, C] float32
    buffers, 350 MB each on ML-1M). glibc serves blocks above M_MMAP_THRESHOLD (at most 32 MiB)
    with a fresh mmap and unmaps them on free, and gives the heap's top back above M_TRIM_THRESHOLD,
    so every step faulted its buffers in anew: on ML-1M ``ce`` ~250k minor faults and a third of
    the CPU time in the kernel. With M_MMAP_MAX=0 every block comes from the heap and with
    M_TRIM_THRESHOLD=-1 (man mallopt: "disables trimming") free never shrinks it, so the next step
    reuses mapped pages (ML-1M ``ce`` epoch 1.5x faster, bit-identical). The price: the kept heap
    fragments across allocations of varying size, so the peak RSS rises (ML-1M ``ce``: 2.0 -> 2.9
    GB). So the trainer applies it only around its steps (``kept_heap``) and only when memory is
    not tight: evaluation's large one-off arrays under it grew the heap by 3.5 GB on ML-20M.
    Numbers do not change: only where the buffers live. Process-wide; a no-op (False) off glibc.
    """
    global _HEAP_KEPT
    mallopt = _libc("mallopt")
    # musl and macOS have no mallopt; glibc returns 1 on success
    _HEAP_KEPT = bool(mallopt and mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1)
    return _HEAP_KEPT


def untune_allocator() -> None:
    """glibc's settings again (large blocks mmapped, the heap's top trimmed), and the kept free
    pages handed back (``trim_heap``)."""
    global _HEAP_KEPT
    if not _HEAP_KEPT:
        return
    mallopt = _libc("mallopt")
    mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    _HEAP_KEPT = False
    trim_heap()


@contextlib.contextmanager
def kept_heap(enabled: bool) -> Iterator[None]:
    """``tune_allocator`` inside the block (when ``enabled``), glibc's settings after it."""
    if not enabled:
        yield
        return
    tune_allocator()
    try:
        yield
    finally:
        untune_allocator()


def heap_kept() -> bool:
    """Whether ``tune_allocator``'s settings are in force in this process now."""
    return _HEAP_KEPT


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports ``ru_maxrss`` in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
