"""Top-k retrieval by inner product over the item embeddings (catalog space, ids in [0, C)).

    r = build_retriever("faiss-hnsw").build(item_emb)  # item_emb [C, d]; ef_search tuned to recall@10 0.99
    scores, ids = r.search(queries, k=10, exclude=(offsets, items), deny=unavailable)
    r.save(run_dir / "index" / "faiss-hnsw"); r = load_retriever(run_dir / "index" / "faiss-hnsw")

Backends are named in ``seqrec.registry.RETRIEVERS``: ``torch`` (exact, default), ``faiss-flat``
(exact), ``faiss-ivf`` and ``faiss-hnsw`` (approximate), plus any a plug-in registers. A FAISS
backend asked for without faiss installed falls back to ``torch`` with a warning. See
docs/retrieval.md for which one to use and the exclusion guarantee.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from seqrec.registry import RETRIEVERS
from seqrec.retrieval.base import Filters, Retriever
from seqrec.retrieval.exact import TorchRetriever, exact_topk
from seqrec.retrieval.tune import recall_at_k

DEFAULT_BACKEND = "torch"


def build_retriever(backend: str = DEFAULT_BACKEND, **params: Any) -> Retriever:
    """An unbuilt retriever of ``backend`` (a name in ``seqrec.registry.RETRIEVERS``) with
    hyper-parameters ``params`` (checked by name: unknown or renamed keys are one-line ConfigErrors).

    Asking for a FAISS backend when faiss is not importable warns once and returns ``torch``
    (the FAISS-only parameters are dropped then).
    """
    cls = RETRIEVERS.get(RETRIEVERS.check_name(backend, "retrieval"))
    cls.check_params(params)
    if not cls.available():
        from seqrec.retrieval.faiss_index import faiss_fallback_warning

        faiss_fallback_warning(backend)
        return TorchRetriever(**{k: v for k, v in params.items() if k in TorchRetriever.defaults})
    return cls(**params)


def load_retriever(path: str | os.PathLike) -> Retriever:
    """Reload a retriever written by ``Retriever.save(path)`` (``Retriever.load``)."""
    return Retriever.load(path)


def approximation_report(retriever: Retriever, queries: Any, k: int, exclude: Any = None,
                         sample: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Recall@k of ``retriever`` against exact search on ``sample`` random query rows (same filters).

    Returns {"recall@k_vs_exact": float, "sample": number of rows used}.
    """
    import torch

    q = queries.detach().cpu().float().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
    m = q.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(m, size=min(sample, m), replace=False)) if m else np.zeros(0, np.int64)
    sub_ex = None
    if exclude is not None:
        sub_ex = Filters(m, retriever.n_items, exclude).row_subset(rows)
        sub_ex = (sub_ex.offsets, sub_ex.items)
    qs = np.ascontiguousarray(q[rows], dtype=np.float32)
    _, approx = retriever.search(qs, k, exclude=sub_ex)
    if retriever.exact:
        exact = approx
    else:
        with torch.no_grad():
            filt = Filters(len(rows), retriever.n_items, sub_ex)
            emb = torch.from_numpy(retriever.item_embeddings())
            _, exact = exact_topk(emb, torch.from_numpy(qs), k, filt)
    return {"recall@k_vs_exact": recall_at_k(approx, exact), "sample": int(len(rows))}


from seqrec.retrieval.saved import reuse_index  # noqa: E402  (uses load_retriever above)

__all__ = ["DEFAULT_BACKEND", "Retriever", "approximation_report", "build_retriever",
           "exact_topk", "load_retriever", "recall_at_k", "reuse_index"]
