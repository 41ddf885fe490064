"""Top-k search at serving time, numpy and faiss only (``seqrec.retrieval`` needs torch).

Same contract as ``seqrec.retrieval``: catalog ids [0, C), rows sorted by score descending with
ties broken by the lower id, id -1 / score -inf where fewer than k items are eligible. Filters:
``exclude`` (per row, the user's seen items), ``eligible`` (bool [C]: the allow-list minus the
deny-list, or None for every item).

- ``exact_topk``: inner products in blocks of rows (a block's scores stay under ``BUDGET_MB``),
  masked, then the top k by ``argpartition``; a row whose k-th score is tied with an item outside
  the k is redone with a full (score, id) sort, so ties resolve as the torch retriever's do.
- ``ApproximateIndex``: a saved faiss index (``faiss-ivf``, ``faiss-hnsw``). It cannot mask, so each
  row over-fetches k + its excluded items + the denied ones (at most ``MAX_FETCH``), drops the
  ineligible candidates, and rows left short are answered exactly; a small allow-list (<= C/16
  items) is searched exactly. A returned id is thus never excluded or denied, and each row holds
  min(k, eligible) items, as in ``seqrec.retrieval.faiss_index``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.errors import DataError, SeqrecError, shorten

BUDGET_MB = 64
MAX_FETCH = 8192
Exclude = Sequence[np.ndarray] | None  # per query row: catalog ids never returned to it


def sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by score descending, ties by id ascending, -1 ids (score -inf) last."""
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    key_id = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, -scores.astype(np.float64)), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _mask(s: np.ndarray, r0: int, exclude: Exclude, eligible: np.ndarray | None) -> None:
    """Set the scores [b, C] of rows r0.. that may not be returned to -inf, in place."""
    if eligible is not None:
        s[:, ~eligible] = -np.inf
    if exclude is not None:
        seen = exclude[r0:r0 + s.shape[0]]
        lens = np.fromiter(map(len, seen), dtype=np.int64, count=len(seen))
        if lens.sum():
            s[np.repeat(np.arange(len(seen)), lens), np.concatenate(seen).astype(np.int64)] = -np.inf


def _topk_block(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact (score desc, id asc) top-k of each row of scores [b, C] -> ([b, k], [b, k])."""
    c = s.shape[1]
    kk = min(k, c)
    part = np.argpartition(s, c - kk, axis=1)[:, c - kk:] if kk < c else np.tile(np.arange(c), (len(s), 1))
    vals = np.take_along_axis(s, part, 1)
    vals, ids = sort_rows(vals, part.astype(np.int64))
    kth = vals[:, -1]
    tied = np.isfinite(kth) & ((s >= kth[:, None]).sum(1) > kk)  # the k-th score shared outside the k
    for r in np.flatnonzero(tied):
        cand = np.flatnonzero(s[r] >= kth[r])
        order = np.lexsort((cand, -s[r, cand].astype(np.float64)))[:kk]
        vals[r], ids[r] = s[r, cand[order]], cand[order]
    ids[~np.isfinite(vals)] = -1
    if kk < k:
        vals = np.pad(vals, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
    return vals.astype(np.float32), ids


def exact_topk(emb: np.ndarray, q: np.ndarray, k: int, exclude: Exclude = None,
               eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of queries float32 [M, d] against ``emb`` float32 [C, d] -> (scores float32
    [M, k], catalog ids int64 [M, k])."""
    m, c = q.shape[0], emb.shape[0]
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    rows = max(1, (BUDGET_MB << 20) // (4 * max(c, 1)))
    for r0 in range(0, m, rows):
        s = q[r0:r0 + rows] @ emb.T
        _mask(s, r0, exclude, eligible)
        out_s[r0:r0 + rows], out_i[r0:r0 + rows] = _topk_block(s, k)
    return out_s, out_i


class ApproximateIndex:
    """A saved faiss index (``RUN/index/<backend>/`` layout: retriever.json + index.faiss)."""

    def __init__(self, directory: Path, backend: str, params: dict[str, Any], emb: np.ndarray) -> None:
        try:
            import faiss
        except ImportError:
            raise SeqrecError(f"this bundle's index is '{backend}', which needs faiss: pip install faiss-cpu") from None
        path = directory / "index.faiss"
        try:
            self.index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise DataError(f"{path}: cannot read the faiss index ({shorten(e)})") from None
        # faiss-ivf indexes the L2 reduction of inner product: one more coordinate (0 for queries)
        self.reduced = self.index.metric_type == faiss.METRIC_L2 and self.index.d == emb.shape[1] + 1
        if self.index.ntotal != emb.shape[0] or self.index.d != emb.shape[1] + self.reduced:
            raise DataError(f"{path}: index holds {self.index.ntotal} x {self.index.d}, the item table "
                            f"{emb.shape[0]} x {emb.shape[1]}")
        self.faiss, self.backend, self.emb = faiss, backend, emb
        self.set_params(**params)

    def set_params(self, **params: Any) -> None:
        """Apply the search-time parameters in force (``nprobe`` for IVF, ``ef_search`` for HNSW)."""
        self.params = dict(params)
        if params.get("nprobe") is not None and hasattr(self.index, "nprobe"):
            self.index.nprobe = int(params["nprobe"])
        self.ef = int(params.get("ef_search") or 0)

    def _raw(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ef:
            sp = self.faiss.SearchParametersHNSW(efSearch=max(self.ef, fetch))
            return self.index.search(q, fetch, params=sp)
        if not self.reduced:
            return self.index.search(q, fetch)
        _, i = self.index.search(np.hstack([q, np.zeros((len(q), 1), np.float32)]), fetch)
        return np.einsum("md,mkd->mk", q, self.emb[np.maximum(i, 0)]), i  # distances -> inner products

    def search(self, q: np.ndarray, k: int, exclude: Exclude = None,
               eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As ``exact_topk``, through the index (see the module doc for the filtering guarantee)."""
        c = self.emb.shape[0]
        n_ok = c if eligible is None else int(eligible.sum())
        if eligible is not None and n_ok * 16 <= c:
            return exact_topk(self.emb, q, k, exclude, eligible)
        m = q.shape[0]
        n_excl = np.zeros(m, np.int64) if exclude is None else np.fromiter(map(len, exclude), np.int64, m)
        fetch = min(c, MAX_FETCH, max(k, int(np.ceil((k + n_excl.max(initial=0) + c - n_ok) * c / max(n_ok, 1)))))
        s, i = self._raw(np.ascontiguousarray(q, dtype=np.float32), fetch)
        keep = i >= 0
        if eligible is not None:
            keep &= eligible[np.where(keep, i, 0)]
        if exclude is not None:
            for r in np.flatnonzero(n_excl):
                keep[r] &= ~np.isin(i[r], exclude[r])
        s, i = sort_rows(np.where(keep, s, -np.inf), np.where(keep, i, -1))
        s, i = s[:, :k], i[:, :k]
        if s.shape[1] < k:
            s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, k - i.shape[1])), constant_values=-1)
        seen = np.array([len(np.unique(e[eligible[e]] if eligible is not None else e)) for e in exclude]) \
            if exclude is not None else 0
        short = np.flatnonzero((i >= 0).sum(1) < np.minimum(k, n_ok - seen))
        if len(short):  # the index could not fill these rows: answer them exactly
            sub = [exclude[r] for r in short] if exclude is not None else None
            s[short], i[short] = exact_topk(self.emb, q[short], k, sub, eligible)
        return s, i


def popularity_topk(pop: np.ndarray, k: int, eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most popular eligible items -> (scores = training counts float32 [k'], catalog ids
    int64 [k']), k' <= k; ties by the lower id (``seqrec.queries.popularity_topk``)."""
    ids = np.arange(len(pop)) if eligible is None else np.flatnonzero(eligible)
    order = np.argsort(-pop[ids], kind="stable")[:k]
    return pop[ids][order].astype(np.float32), ids[order].astype(np.int64)
