"""A fitted model's item index: which backend, which saved index, tuned on whose vectors.

Sits beside ``queries.py`` just below ``api.py`` (it needs evaluation's user vectors and the run
directory's layout); ``SeqRec._retriever`` and ``SeqRec.build_index`` are thin calls into it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.config import Config
from seqrec.data.store import SequenceStore
from seqrec.rundir import RunDir


def model_retriever(model: torch.nn.Module, emb: np.ndarray, cfg: Config, path: Path | None,
                    backend: str | None, params: dict | None, users: SequenceStore | None = None) -> Any:
    """The index to search over ``emb`` [C, d]: ``backend`` (else ``eval.retrieval``, "auto" resolved by
    catalog size, see ``seqrec.evaluation.defaults``), the run's saved index of that backend when it
    fits. A new approximate index tunes itself on the vectors of up to 1,000 of ``users`` (seeded
    sample)."""
    from seqrec.evaluation import user_vectors
    from seqrec.evaluation.defaults import retrieval_backend
    from seqrec.registry import RETRIEVERS
    from seqrec.retrieval import build_retriever, reuse_index

    name = retrieval_backend(backend or cfg.eval.retrieval, emb.shape[0], emb.shape[1])
    p = (params if params is not None else (cfg.eval.retrieval_params if backend is None else {})) or {}
    saved = RunDir(path).index(name) if path is not None else None
    hint = f"seqrec index build {path} --retrieval {name}"
    reused = saved and reuse_index(saved, p, emb, rebuild_hint=hint)
    if reused:
        return reused
    queries = None
    if users is not None and len(users) and not RETRIEVERS.get(name).exact:
        rows = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(users))[:1000])
        queries = user_vectors(model, users.subset(rows), model.max_len, cfg.eval.batch_size)
    return build_retriever(name, **p).build(emb, queries=queries)


def save_index(emb: np.ndarray, path: Path, retrieval: str, params: dict | None) -> tuple[Path, dict[str, Any]]:
    """Build a ``retrieval`` index over ``emb`` [C, d] and save it under ``RUN/index/<backend>/``
    -> (directory, summary). A fallback (faiss missing) saves under the backend actually built."""
    from seqrec.retrieval import build_retriever
    from seqrec.retrieval.base import embedding_digest

    retriever = build_retriever(retrieval, **(params or {}))
    t0 = time.perf_counter()
    retriever.build(emb)
    build_s = time.perf_counter() - t0
    out = retriever.save(RunDir(path).index(retriever.name), source=embedding_digest(emb))
    return out, {"backend": retriever.name, "items": retriever.n_items, "dim": retriever.dim,
                 "build_s": round(build_s, 3), "params": retriever.params}
