"""Checkpoints: atomic writes, a checksum over every byte, safe loads (``weights_only=True``),
fingerprint checks.

``last.pt`` holds the full training state (model, optimiser, RNGs, position in the epoch, early
stopping); before it is replaced the previous one is kept as ``prev.pt``, so a damaged ``last.pt``
still leaves a loadable checkpoint. ``best.pt`` holds the best model by validation NDCG@10;
``model.pt`` (``model_file.py``) the final weights. All four are written here.

File layout: ``payload + MAGIC (8 bytes) + sha256(payload) (32 bytes)``, where ``payload`` is the
zip that ``torch.save`` wrote. The digest covers the whole payload (zip headers and padding, the
pickle, the tensor data), so a flipped byte anywhere is refused instead of loading wrong weights.
A trailer rather than a header: ``torch.save`` still writes to the path itself (no in-memory copy
of a checkpoint that may be hundreds of MB), the digest is computed in one read pass, and torch's
zip reader ignores trailing bytes, so the payload loads from the very file object that was hashed.
Files written before the checksum (a bare torch zip, which ends with the zip's end record) still
load, unchecked, so older runs stay usable.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import torch

from seqrec.errors import SeqrecError, shorten
from seqrec.io import atomic_path

MAGIC = b"SEQRECv1"
_DIGEST = 32                   # sha256
_TRAILER = len(MAGIC) + _DIGEST
_ZIP_END = b"PK\x05\x06"       # a zip's end-of-central-directory record: 22 bytes, no comment, last in the file
_CHUNK = 1 << 20               # bytes hashed per read


def save_checkpoint(state: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` atomically with its checksum; with ``keep_previous`` the old file
    becomes ``prev.pt``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "r+b") as f:
            digest = _sha256(f, os.fstat(f.fileno()).st_size)
            f.seek(0, os.SEEK_END)
            f.write(MAGIC + digest)
        if keep_previous and path.exists():
            os.replace(path, path.with_name("prev.pt"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it; a damaged file (a checksum mismatch, a
    truncated or unreadable file) gives a one-line ``SeqrecError`` naming ``path``."""
    if not path.exists():
        raise SeqrecError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        _verify(f, path)
        f.seek(0)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for damaged files; all mean "unreadable"
            msg = shorten(e, 160) or type(e).__name__
            raise SeqrecError(f"checkpoint {path} is damaged or not a seqrec checkpoint ({msg})") from None


def _verify(f: BinaryIO, path: Path) -> None:
    """Check ``f``'s trailer against its payload; a file without one must end like a bare torch zip
    (written before checksums), else it is refused: its trailer is damaged or it was cut short."""
    size = os.fstat(f.fileno()).st_size
    if size >= _TRAILER:
        f.seek(size - _TRAILER)
        trailer = f.read(_TRAILER)
        if trailer.startswith(MAGIC):
            f.seek(0)
            got, want = _sha256(f, size - _TRAILER).hex(), trailer[len(MAGIC):].hex()
            if got != want:
                raise SeqrecError(f"checkpoint {path} is damaged: checksum mismatch (sha256 {got[:16]}, "
                                  f"recorded {want[:16]}); retrain or restore it")
            return
    if size >= 22:
        f.seek(size - 22)
        end = f.read(22)
        if end.startswith(_ZIP_END) and end.endswith(b"\0\0"):  # an older seqrec's file: no checksum to check
            return
    raise SeqrecError(f"checkpoint {path} is damaged or not a seqrec checkpoint (no checksum record: "
                      f"truncated or overwritten, {size} bytes); retrain or restore it")


def _sha256(f: BinaryIO, n: int) -> bytes:
    """sha256 of the next ``n`` bytes of ``f`` (read in 1 MiB chunks: no copy of the whole file)."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(min(n, _CHUNK)))
    while n > 0:
        got = f.readinto(buf[:min(n, _CHUNK)])
        if not got:
            break  # shorter than its size said (changed underfoot): the digest will not match
        h.update(buf[:got])
        n -= got
    return h.digest()


def check_compatible(ckpt: dict[str, Any], fingerprint: str, n_items: int, path: Path) -> None:
    """Refuse a checkpoint trained on other data (its recommendations would be garbage)."""
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "model" not in ckpt:
        raise SeqrecError(f"checkpoint {path} is not a seqrec checkpoint (no meta/model entries)")
    if meta.get("n_items") != n_items or meta.get("fingerprint") != fingerprint:
        raise SeqrecError(
            f"checkpoint {path} was trained on other data (catalog {meta.get('n_items')} items, fingerprint "
            f"{meta.get('fingerprint')}) than this dataset ({n_items} items, fingerprint {fingerprint})")
