"""Checkpoints: atomic writes, safe loads (``weights_only=True``), fingerprint checks.

``last.pt`` holds the full training state (model, optimiser, RNGs, position in the epoch, early
stopping); before it is replaced the previous one is kept as ``prev.pt``, so a damaged ``last.pt``
still leaves a loadable checkpoint. ``best.pt`` holds the best model by validation NDCG@10.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from seqrec.errors import SeqrecError
from seqrec.io import atomic_path


def save_checkpoint(state: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` atomically; with ``keep_previous`` the old file becomes ``prev.pt``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if keep_previous and path.exists():
            os.replace(path, path.with_name("prev.pt"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it; a damaged file gives a clear error."""
    if not path.exists():
        raise SeqrecError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files; all mean "unreadable"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SeqrecError(f"checkpoint {path} is damaged or not a seqrec checkpoint ({msg[:160]})") from None


def check_compatible(ckpt: dict[str, Any], fingerprint: str, n_items: int, path: Path) -> None:
    """Refuse a checkpoint trained on other data (its recommendations would be garbage)."""
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "model" not in ckpt:
        raise SeqrecError(f"checkpoint {path} is not a seqrec checkpoint (no meta/model entries)")
    if meta.get("n_items") != n_items or meta.get("fingerprint") != fingerprint:
        raise SeqrecError(
            f"checkpoint {path} was trained on other data (catalog {meta.get('n_items')} items, fingerprint "
            f"{meta.get('fingerprint')}) than this dataset ({n_items} items, fingerprint {fingerprint})")
