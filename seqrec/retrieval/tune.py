"""Self-tuning of an approximate index to a recall target (``target_recall``), with exact fallback.

    r = build_retriever("faiss-ivf").build(item_emb)                    # tunes nprobe to recall@10 0.99
    r = build_retriever("faiss-ivf").build(item_emb, queries=user_vecs)  # ... on these sample queries
    r.tuning  # {"param": "nprobe", "value": 12, "recall": 0.991, "speedup": 41.3, "exact_fallback": False, ...}

At build time (and on ``tune()``), the index's one search-time knob (IVF ``nprobe``, HNSW
``ef_search``) is set to the smallest value whose recall@k against exact search on a sample of
queries meets the target with a margin (mean minus 2 standard errors over the sample's rows):
doubling from the smallest value, then bisection to ~1/8 of the value.
The sample is the caller's ``queries`` (up to ``tune_queries`` rows) or, when none are given,
``tune_queries`` random item embeddings, each searched with its own item excluded (a proxy: real
user vectors can be harder -- measured in docs/retrieval.md). Queries/s at the
chosen value is timed against exact torch search on the same sample; when no value meets the target
at ``MIN_SPEEDUP`` times exact's queries/s or more, search falls back to exact
(``params["exact_fallback"]`` is True and a ``SeqrecWarning`` says so). The choice depends on
timings, hence on the machine's load.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.errors import ConfigError, SeqrecError, warn
from seqrec.retrieval.base import META_FILE, Filters, _as_matrix
from seqrec.retrieval.exact import exact_topk

DEFAULTS: dict[str, Any] = {"target_recall": 0.99, "tune_queries": 1000}
# An approximate index must buy at least this speed-up over exact search on the sample, or exact
# search answers: below it the lost recall and the index's build time (a k-means over the catalog,
# the tuning) are not worth it. Isotropic embeddings at a million items reach 0.99 only at ~1.7x.
MIN_SPEEDUP = 2.0


def row_recalls(approx_ids: np.ndarray, exact_ids: np.ndarray) -> np.ndarray:
    """|approx ∩ exact| / |exact| of each row of id arrays [M, k] (-1 entries ignored), float [M'],
    rows whose exact list is empty left out."""
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids has {a.shape[0]} rows, exact_ids {e.shape[0]}")
    hits = ((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(1).sum(1)
    n = (e >= 0).sum(1)
    return hits[n > 0] / n[n > 0]


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| for id arrays [M, k] (-1 entries ignored).

    Rows whose exact list is empty are skipped; 1.0 when no row has any exact item.
    """
    r = row_recalls(approx_ids, exact_ids)
    return float(r.mean()) if len(r) else 1.0


def recall_lower_bound(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean row recall minus 2 standard errors (~97.5 % one-sided bound on the recall of queries
    like the sample's): the tuned value must meet the target on unseen queries too."""
    r = row_recalls(approx_ids, exact_ids)
    if len(r) < 2:
        return recall_at_k(approx_ids, exact_ids)
    return float(r.mean() - 2 * r.std(ddof=1) / np.sqrt(len(r)))


def check_target(target: Any) -> float | None:
    """``target_recall``: None (no tuning) or a number in (0, 1]."""
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise ConfigError(f"retrieval parameter target_recall must be in (0, 1] or null, got {target!r}")
    return float(target)


def sample_queries(queries: Any, emb: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, Any]:
    """(float32 [min(n, M), d] rows of ``queries``, sampled without replacement, and None), or, when
    ``queries`` is None, (sampled rows of the item matrix ``emb`` [C, d], exclude CSR that keeps
    each row's own item out of its results: an item is trivially its own nearest neighbour)."""
    q = emb if queries is None else _as_matrix(queries, "queries")
    q = q.cpu().numpy() if isinstance(q, torch.Tensor) else q
    if q.shape[1] != emb.shape[1]:
        raise SeqrecError(f"tuning queries have dimension {q.shape[1]}, the index has {emb.shape[1]}")
    if q.shape[0] == 0:
        raise SeqrecError("tuning queries are empty")
    rows = np.arange(q.shape[0])
    if q.shape[0] > n:
        rows = np.sort(np.random.default_rng(seed).choice(q.shape[0], n, replace=False))
    own = None if queries is not None else (np.arange(len(rows) + 1, dtype=np.int64), rows.astype(np.int64))
    return np.ascontiguousarray(q[rows], dtype=np.float32), own


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Tunable:
    """Mixin for an approximate ``FaissRetriever`` with one integer search-time knob ``tune_param``.

    Adds ``target_recall`` / ``tune_queries`` (``DEFAULTS``) and ``tune()``; the knob is tuned at
    build time unless it was given explicitly or ``target_recall`` is None (then: today's defaults).
    """

    tune_param = ""
    tuning: dict[str, Any] | None = None

    def tune_range(self, k: int) -> tuple[int, int]:
        """(smallest, largest) value of ``tune_param`` worth trying for top-``k``."""
        raise NotImplementedError

    def _after_build(self, queries: Any) -> None:
        self.tuning = None
        self._resolved["exact_fallback"] = False
        target = check_target(self.params["target_recall"])
        if target is not None and self.tune_param not in self.given:
            self.tune(queries, k=10, target=target)

    def set_params(self, **params: Any) -> Any:
        out = super().set_params(**params)
        if self.tune_param in params:  # an explicit setting replaces the tuned one (and the fallback)
            self._resolved["exact_fallback"] = False
        return out

    def tune(self, queries: Any = None, k: int = 10, target: float | None = None) -> dict[str, Any]:
        """Set ``tune_param`` to the smallest value with recall@``k`` >= ``target`` (default: the
        ``target_recall`` parameter, else 0.99) on a sample of ``queries`` float [M, d] (default:
        ``tune_queries`` item embeddings), or fall back to exact search. Returns the report, also
        kept as ``self.tuning`` (and saved with the index)."""
        if not self._built:
            raise SeqrecError(f"retriever '{self.name}' is not built: call .build(item_emb) first")
        target = check_target(target if target is not None else self.params["target_recall"]) or 0.99
        n = int(self.params["tune_queries"])
        if isinstance(self.params["tune_queries"], bool) or n < 1:
            raise ConfigError(f"retrieval parameter tune_queries must be an integer >= 1, "
                              f"got {self.params['tune_queries']!r}")
        emb = self.item_embeddings()
        q, own = sample_queries(queries, emb, n)
        src = "given" if own is None else "items"
        k = min(int(k), self.n_items - (own is not None)) or 1
        self._resolved["exact_fallback"] = False
        exact_qps, truth = self._time_exact(emb, q, k, own)
        lo, hi = self.tune_range(k)
        trials: dict[int, tuple[float, float]] = {}

        def trial(v: int) -> bool:
            self._resolved[self.tune_param] = v
            self._configure()
            secs, (_, ids) = _timed(lambda: self.search(q, k, exclude=own))
            trials[v] = (recall_at_k(ids, truth), len(q) / max(secs, 1e-9))
            return recall_lower_bound(ids, truth) >= target

        best = _smallest_meeting(trial, lo, hi, lambda v: trials[v][1] < MIN_SPEEDUP * exact_qps)
        self._report(best, trials, exact_qps, target, k, len(q), src)
        return self.tuning

    def _time_exact(self, emb: np.ndarray, q: np.ndarray, k: int, own: Any) -> tuple[float, np.ndarray]:
        """(exact torch queries/s on ``q`` under exclude CSR ``own``, exact ids [M, k]); a few
        queries first to warm up."""
        e, qt = torch.from_numpy(emb), torch.from_numpy(q)
        filt = Filters(len(q), len(emb), own)
        with torch.no_grad():
            exact_topk(e, qt[:8], k, filt.row_subset(np.arange(min(8, len(q)))))
            secs, (_, truth) = _timed(lambda: exact_topk(e, qt, k, filt))
        return len(q) / max(secs, 1e-9), truth

    def _report(self, best: int | None, trials: dict[int, tuple[float, float]], exact_qps: float,
                target: float, k: int, n: int, src: str) -> None:
        fallback = best is None or trials[best][1] < MIN_SPEEDUP * exact_qps
        value = best if best is not None else max(trials)
        recall, qps = trials[value]
        self._resolved[self.tune_param] = value
        self._resolved["exact_fallback"] = fallback
        self._configure()
        self.tuning = {"param": self.tune_param, "value": value, "recall": round(recall, 4),
                       "qps": round(qps, 1), "exact_qps": round(exact_qps, 1),
                       "speedup": round(qps / exact_qps, 2), "target_recall": target, "k": k,
                       "queries": n, "query_source": src, "exact_fallback": fallback,
                       "trials": [[v, round(r, 4), round(s, 1)] for v, (r, s) in sorted(trials.items())]}
        if fallback:
            why = (f"{self.tune_param} up to {value} reaches {recall:.3f}" if best is None else
                   f"{self.tune_param}={value} reaches it at {qps:.0f} q/s, exact does {exact_qps:.0f}")
            warn(f"retrieval backend '{self.name}': recall@{k} >= {target} is not reached at {MIN_SPEEDUP:g}x "
                 f"exact search's speed or more ({why}, {n} sample queries): searching exactly")

    def _load_files(self, directory: Path) -> None:
        super()._load_files(directory)
        meta = json.loads((directory / META_FILE).read_text())  # already checked by load_meta
        self.tuning = meta.get("tuning")  # the outcome of build-time tuning, kept by save
        self._resolved["exact_fallback"] = bool(meta["params"].get("exact_fallback", False))

    def _search(self, q: Any, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        if self.params.get("exact_fallback"):
            q = q.cpu().numpy() if isinstance(q, torch.Tensor) else q
            return self._exact(np.ascontiguousarray(q, dtype=np.float32), k, filters)
        return super()._search(q, k, filters)


def _smallest_meeting(trial: Any, lo: int, hi: int, hopeless: Any) -> int | None:
    """Smallest v in [lo, hi] with ``trial(v)`` True (assumed monotone), to within ~v/8: doubling
    from ``lo``, then bisection. None when none meets it or ``hopeless(v)`` stops the doubling
    (a failing v already too slow to be worth it: larger ones are slower still)."""
    v, bad = lo, None
    while not trial(v):
        if v >= hi or hopeless(v):
            return None
        bad, v = v, min(2 * v, hi)
    good = v
    while bad is not None and good - bad > max(1, good // 8):
        mid = (bad + good) // 2
        if trial(mid):
            good = mid
        else:
            bad = mid
    return good
