"""Reusing an index saved next to a model (``seqrec index build``) when it still fits the model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.retrieval.base import META_FILE, embedding_digest, load_meta


def reuse_index(where: Path, params: dict[str, Any], emb: np.ndarray, rebuild_hint: str = "") -> Any:
    """The retriever saved in ``where`` when it indexes exactly ``emb`` float32 [C, d] and agrees with
    ``params`` (search-time ones are applied to it); else None (a stale index warns)."""
    from seqrec.retrieval import load_retriever

    if not (where / META_FILE).is_file():
        return None
    meta = load_meta(where)
    if meta["source"] != embedding_digest(emb):
        warnings.warn(f"{where} was built from other item embeddings (model retrained?): building a fresh "
                      f"index{'; rebuild it with: ' + rebuild_hint if rebuild_hint else ''}",
                      RuntimeWarning, stacklevel=3)
        return None
    retriever = load_retriever(where)
    search = {k: v for k, v in params.items() if k in retriever.search_time}
    if any(meta["params"].get(k) != v for k, v in params.items() if k not in search):
        return None  # other build-time parameters were asked for
    return retriever.set_params(**search) if search else retriever
