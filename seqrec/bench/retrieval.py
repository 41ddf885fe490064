"""``seqrec bench retrieval``: build time, memory, queries/s and recall@k vs exact for every backend.

Synthetic item and query embeddings of two kinds:
- ``clustered``: 1,024 centres drawn from N(0, I); every item and every query is a random centre
  plus N(0, I) noise (the structure real embeddings have; IVF's good case);
- ``gaussian``: items and queries i.i.d. N(0, I) (no structure: IVF's worst case).

Ground truth is exact torch search on the first R queries (R = all queries when C·M <= 2e9 score
entries, else max(1000, 2e9 / C); ``--exact-queries`` overrides). Exact backends (torch, faiss-flat)
are timed on those R queries; approximate backends on all queries; recall@k is measured on the R
queries. qps is always queries per second of wall time for ``Retriever.search`` (k = 10, no
filters), best of ``--repeats``. Memory is the index size (serialised FAISS index; torch: the
float32 embedding matrix), not RSS.

Approximate backends are built with their self-tuned defaults (``seqrec.retrieval.tune``: search
parameter tuned to recall@10 0.99 on 1,000 of the queries not used for recall -- or on item
embeddings when all are -- exact fallback otherwise); the
row of that state has ``default`` True and ``tuned`` = the tuned setting or "exact fallback"
(timed like an exact backend then), and a sweep of other settings follows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from seqrec.errors import ConfigError
from seqrec.retrieval import build_retriever, recall_at_k
from seqrec.retrieval.base import Retriever

N_CENTRES = 1024
EXACT_BUDGET = 2_000_000_000  # score entries (queries × items) for the exact ground truth

SHOWN_PARAMS = ("nlist", "nprobe", "train_size", "M", "ef_construction", "ef_search")
COLUMNS = ["embeddings", "catalog", "backend", "params", "default", "tuned", "build_s", "qps", "speedup",
           "recall@10", "memory_mb"]


def make_embeddings(kind: str, n_items: int, n_queries: int, dim: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(items float32 [C, d], queries float32 [M, d]) of ``kind`` 'clustered' or 'gaussian'."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    if kind == "clustered":
        centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
        items += centres[rng.integers(0, N_CENTRES, n_items)]
        queries += centres[rng.integers(0, N_CENTRES, n_queries)]
    elif kind != "gaussian":
        raise ConfigError(f"--embeddings: unknown kind {kind!r}; choose clustered or gaussian")
    return items, queries


def index_mb(r: Retriever) -> float:
    """Size of the index in MiB (serialised FAISS index, or the torch embedding matrix)."""
    if r.name == "torch":
        return r.n_items * r.dim * 4 / 2**20
    return r._faiss.serialize_index(r._cpu_index()).size / 2**20


def timed_search(r: Retriever, q: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """(best queries/s over ``repeats`` runs, ids [M, k])."""
    best, ids = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = r.search(q, k)
        best = min(best, time.perf_counter() - t0)
    return len(q) / best, ids


def settings(backend: str, r: Retriever) -> list[dict[str, Any]]:
    """Search-time settings to sweep for a built index: around the untuned default (nprobe =
    max(10, nlist/400): x0.25 ... x16; ef_search = 128), plus the tuned value."""
    p = r.params
    if backend == "faiss-ivf":
        d = r.default_nprobe(p["nlist"])
        # steps of ~1.4x around the default, where recall crosses 0.98-0.99 on clustered items
        near = {max(1, round(d * f)) for f in (0.25, 0.5, 0.7, 1, 1.4, 2, 4, 16)}
        grid = sorted(v for v in near if v <= p["nlist"])
        return [{"nprobe": v} for v in sorted({*grid, p["nprobe"]})]
    if backend == "faiss-hnsw":
        d = 128
        return [{"ef_search": v} for v in sorted({16, 32, 64, d, 2 * d, 4 * d, p["ef_search"]})]
    return [{}]


def tuned_label(r: Retriever) -> str:
    """"" for an exact backend, else the tuned setting ("nprobe=12") or "exact fallback"."""
    t = getattr(r, "tuning", None)
    if not t:
        return ""
    return "exact fallback" if t["exact_fallback"] else f"{t['param']}={t['value']}"


def _measure(r: Retriever, backend: str, torch_r: Retriever, queries: np.ndarray, n_exact: int, k: int,
             repeats: int, torch_qps: float, truth: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(queries/s, ids of the first ``n_exact`` queries [n_exact, k], torch's best queries/s so far)."""
    q_exact = queries[:n_exact]
    if backend == "torch":
        return torch_qps, truth, torch_qps
    if r.exact or r.params.get("exact_fallback"):  # faiss-flat, exact fallback: alternate with torch (same load)
        qps = 0.0
        for _ in range(repeats):
            torch_qps = max(torch_qps, timed_search(torch_r, q_exact, k, 1)[0])
            one, ids = timed_search(r, q_exact, k, 1)
            qps = max(qps, one)
        return qps, ids, torch_qps
    qps, ids = timed_search(r, queries, k, repeats)
    return qps, ids[:n_exact], torch_qps


def run_case(kind: str, n_items: int, dim: int, n_queries: int, backends: list[str], k: int,
             exact_queries: int | None, repeats: int, seed: int, log: Callable[[str], None]
             ) -> list[dict[str, Any]]:
    """Records of every backend and search setting on one embeddings kind and catalog size."""

    items, queries = make_embeddings(kind, n_items, n_queries, dim, seed)
    n_exact = exact_queries or (n_queries if n_items * n_queries <= EXACT_BUDGET
                                else max(1000, EXACT_BUDGET // n_items))
    n_exact = min(n_exact, n_queries)
    base = {"embeddings": kind, "catalog": n_items, "dim": dim, "queries": n_queries}
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    torch_r = build_retriever("torch").build(items)
    torch_build = time.perf_counter() - t0
    torch_qps, truth = timed_search(torch_r, queries[:n_exact], k, repeats)
    for backend in backends:
        t0 = time.perf_counter()
        # tuning sample: queries not used for recall (held out), as evaluation would pass user vectors
        held_out = queries[n_exact:] if n_exact < n_queries else None
        r = torch_r if backend == "torch" else build_retriever(backend).build(items, queries=held_out)
        build_s = torch_build if backend == "torch" else time.perf_counter() - t0
        if r.name != backend:
            log(f"skip {backend}: not available (fell back to {r.name})")
            continue
        mem, tuned = index_mb(r), tuned_label(r)
        for setting in [None, *settings(backend, r)] if tuned else [{}]:
            if setting is not None:
                r.set_params(**setting)  # clears an exact fallback
            qps, ids, torch_qps = _measure(r, backend, torch_r, queries, n_exact, k, repeats, torch_qps, truth)
            shown = {key: v for key, v in r.params.items() if key in SHOWN_PARAMS}
            fallback = bool(r.params.get("exact_fallback"))
            rec = {**base, "backend": backend, "params": shown, "default": not setting,
                   "tuned": tuned if not setting else "", "build_s": round(build_s, 3), "qps": round(qps, 1),
                   f"recall@{k}": round(recall_at_k(ids, truth), 4), "memory_mb": round(mem, 1),
                   "qps_queries": n_exact if r.exact or fallback else n_queries, "recall_queries": n_exact,
                   "tuning": getattr(r, "tuning", None) if not setting else None}
            records.append(rec)
            log(f"{kind:9s} C={n_items:>8d} {backend:10s} {shown} {rec['tuned']} build {build_s:6.1f}s "
                f"{qps:9.0f} q/s recall@{k} {rec[f'recall@{k}']:.4f} {mem:7.1f} MB")
        del r  # free this index before the next one is built
    for rec in records:
        if rec["backend"] == "torch":
            rec["qps"] = round(torch_qps, 1)  # best of all its interleaved timings
        rec["speedup"] = round(rec["qps"] / torch_qps, 2) if torch_qps else None
    return records


def run_all(kinds: list[str], sizes: list[int], dim: int, n_queries: int, backends: list[str], k: int,
            exact_queries: int | None, repeats: int, seed: int, log: Callable[[str], None] = print
            ) -> list[dict[str, Any]]:
    """``run_case`` for every (kind, catalog size); exact ``torch`` is always run first (the reference)."""
    backends = ["torch"] + [b for b in backends if b != "torch"]
    return [rec for kind in kinds for n in sizes
            for rec in run_case(kind, n, dim, n_queries, backends, k, exact_queries, repeats, seed, log)]
