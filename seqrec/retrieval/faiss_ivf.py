"""``faiss-ivf``: an inverted file over k-means cells of the L2 reduction of inner product, searched on
CPU by a grouped scan (each probed cell times all of its queries in one GEMM, faiss's heaps keep
each query's top k). Filtering, GPU placement and save/load come from ``FaissRetriever``.
"""

from __future__ import annotations

import builtins
import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import threadpoolctl
import torch

from seqrec.errors import ConfigError
from seqrec.progress import stages
from seqrec.retrieval.faiss_index import FaissRetriever, _check_int
from seqrec.retrieval.tune import DEFAULTS as TUNING
from seqrec.retrieval.tune import Tunable

SCAN_BYTES = 128 * 2**20  # the grouped scan: queries gathered per (query, cell) pair in one batch
SHARE_PAIRS = 4096  # the fewest (query, cell) pairs worth a scan thread of their own


class FaissIVFRetriever(Tunable, FaissRetriever):
    """Inverted file over k-means cells (``IndexIVFFlat``, L2 over ``mips_to_l2`` vectors: inner product).

    ``nlist`` cells (default 1.5 sqrt(C), at most C / 39 so that k-means has enough points per cell);
    ``nprobe`` cells scanned per query (untuned default max(10, nlist / 400): at 1M clustered items
    nlist=1414, nprobe 6 measured recall@10 0.9905 -- see docs/benchmarks.md); k-means is
    trained on ``train_size`` sampled items (default 64 per cell) for ``niter`` iterations, sampled
    with ``seed``. ``nprobe`` is tuned at build time to ``target_recall`` (``seqrec.retrieval.tune``)
    unless given or ``target_recall`` is None.
    """

    name = "faiss-ivf"
    extra_dims = 1
    search_time = (*FaissRetriever.search_time, "nprobe")
    tune_param = "nprobe"
    defaults: dict[str, Any] = {**FaissRetriever.common, "nlist": None, "nprobe": None, "train_size": None,
                                "niter": 10, "seed": 0, **TUNING}

    def tune_range(self, k: int) -> tuple[int, int]:
        return 1, int(self.params["nlist"])

    @staticmethod
    def default_nlist(n_items: int) -> int:
        # 1.5 sqrt(C), not faiss's usual 4-16 sqrt(C): the grouped scan (_scan) makes a cell's
        # items cost per query about what ranking its centroid costs, so fewer, larger cells win
        # (1M clustered items, one thread: nlist 1414 reached recall@10 0.9905 at 116x exact, nlist
        # 2000 0.9894 at 107x, 2828 0.9868 at 112x, 4000 0.9887 at 56x; docs/benchmarks.md)
        return max(1, min(round(1.5 * math.sqrt(n_items)), n_items // 39))

    @staticmethod
    def default_nprobe(nlist: int) -> int:
        return max(1, min(nlist, max(10, math.ceil(nlist / 400))))

    def _make_index(self, emb: np.ndarray) -> Any:
        p = self.params
        n = emb.shape[0]
        nlist = _check_int("nlist", p["nlist"]) if p["nlist"] is not None else self.default_nlist(n)
        if nlist > n:
            raise ConfigError(f"retrieval parameter nlist={nlist} exceeds the catalog size {n}")
        nprobe = _check_int("nprobe", p["nprobe"]) if p["nprobe"] is not None else self.default_nprobe(nlist)
        train = _check_int("train_size", p["train_size"]) if p["train_size"] is not None else 64 * nlist
        train = min(max(train, nlist), n)
        self._resolved.update(nlist=nlist, nprobe=min(nprobe, nlist), train_size=train)
        faiss = self._faiss
        emb = mips_to_l2(emb)
        self._norm2_max = _norm2(emb[0])  # as _load_files reads it back: saved indexes search the same
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(emb.shape[1]), emb.shape[1], nlist, faiss.METRIC_L2)
        index.cp.niter = _check_int("niter", p["niter"])
        index.cp.seed = int(p["seed"])
        rng = np.random.default_rng(int(p["seed"]))
        sample = emb if train >= n else emb[np.sort(rng.choice(n, train, replace=False))]
        with stages(f"building faiss-ivf index ({n:,} items)", 2) as stage:
            stage("training the coarse quantizer")
            index.train(sample)
            stage("adding the items")
            index.add(emb)
        index.make_direct_map()  # reconstruct() for exact ground truth and refill fallback
        return index

    def _configure(self) -> None:
        super()._configure()
        nprobe = _check_int("nprobe", self.params["nprobe"])
        if self._resolved.get("gpu"):
            self._faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", nprobe)
        else:
            self._index.nprobe = nprobe

    def _reduced(self) -> bool:
        """True for an index over ``mips_to_l2`` vectors (False: an inner-product index saved by an
        earlier version, searched as it is)."""
        return self._index.metric_type == self._faiss.METRIC_L2

    def _raw(self, q: np.ndarray, k_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._reduced():
            return super()._raw(q, k_fetch)
        qa = np.hstack([q, np.zeros((len(q), 1), np.float32)])
        if not self._resolved.get("gpu") and self._layout().scannable:
            return self._scan(qa, k_fetch)  # [q, 0] . x' = q . x: inner products as they are
        dist, ids = super()._raw(qa, k_fetch)
        # |q - x'|^2 = |q|^2 + M^2 - 2 q.x: back to inner products (float64: the terms are larger than q.x)
        q2 = np.einsum("md,md->m", q, q, dtype=np.float64)[:, None]
        return ((q2 + self._norm2_max - dist) / 2).astype(np.float32), ids

    def _layout(self) -> _Layout:
        """The centroids and the cells' contents of the current index (cached per built / loaded index)."""
        index = self._index
        if getattr(self, "_layout_of", None) is not index:
            self._layout_cache, self._layout_of = _Layout(self._faiss, self._cpu_index()), index
        return self._layout_cache

    def _cells(self, qa: np.ndarray, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` nearest cells of reduced queries qa [m, d + 1] -> (ids int64, squared
        distances float32) [m, nprobe], as faiss's flat quantizer finds them, in blocks of ``rows``."""
        lay = self._layout()
        nlist = len(lay.c2)
        p = min(int(self._index.nprobe), nlist)
        ids, dist = np.empty((len(qa), p), np.int64), np.empty((len(qa), p), np.float32)
        # one [rows, nlist] block reused: it stays in cache, and a fresh [8192, nlist] output per
        # block cost as much again in page faults as the GEMM itself (1M items: 80 -> 35 ms / 10k q)
        buf = torch.empty(min(rows, len(qa)), nlist)
        for r0 in range(0, len(qa), rows):
            x = torch.from_numpy(qa[r0:r0 + rows])
            v = buf[:len(x)]
            # |x - c|^2 = |x|^2 - 2 (x.c - |c|^2 / 2): rank by the bracket, one fused GEMM;
            # faiss's heaps select the best p (half of torch.topk's time)
            torch.addmm(lay.c2, x, lay.c.T, beta=-0.5, out=v)
            heap = self._faiss.ResultHeap(len(x), p, keep_max=True)
            heap.add_result_subset(np.arange(len(x)), v.numpy(), lay.cell_ids)
            heap.finalize()
            ids[r0:r0 + rows] = heap.I
            dist[r0:r0 + rows] = (x * x).sum(1, keepdim=True).numpy() - 2 * heap.D
        return ids, dist

    def _scan(self, qa: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products of reduced queries qa [m, d + 1] over their ``nprobe`` cells ->
        (scores float32, ids int64) [m, k], unfilled slots (-FLT_MAX, -1).

        faiss's own scan reads a cell's vectors once per query that probes it (~40 ns a vector at
        d 64, memory-bound); here each probed cell meets all of its queries in one GEMM and faiss's
        heaps keep every query's best k (1M clustered items: ~3x the queries/s at the same recall,
        docs/benchmarks.md). With torch set to T > 1 threads, T Python threads rank the cells of a
        share of the queries, then scan a share of the cells with heaps of their own, merged at the
        end. The cells' GEMMs are numpy's on one BLAS thread: small torch products run no faster
        on two Python threads than on one, numpy's (OpenBLAS or MKL, which release the GIL) do."""
        step = max(1, SCAN_BYTES // (4 * qa.shape[1] * min(int(self._index.nprobe), self._index.nlist)))
        if len(qa) > step:
            parts = [self._scan(qa[r0:r0 + step], k) for r0 in range(0, len(qa), step)]
            return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])
        lay = self._layout()  # built here, before any thread reads it
        n = max(1, min(torch.get_num_threads(), len(qa) * int(self._index.nprobe) // SHARE_PAIRS))
        with _threads(self._faiss, n) as pool:
            cells = np.concatenate(list(pool.map(lambda part: self._cells(part)[0], np.array_split(qa, n))))
            m, p = cells.shape
            flat = cells.reshape(-1)
            rows = np.argsort(flat, kind="stable") // p  # the query of each (query, cell) pair, by cell
            qp = qa[rows]  # [m p, d + 1], same order
            count = np.bincount(flat, minlength=len(lay.sizes))
            start = np.concatenate([[0], np.cumsum(count)]).tolist()
            todo = np.flatnonzero((count > 0) & (lay.sizes > 0))
            work = np.cumsum(count[todo] * lay.sizes[todo])
            shares = np.split(todo, np.searchsorted(work, work[-1] * np.arange(1, n) / n)) if len(todo) else [todo]
            parts = list(pool.map(lambda share: self._scan_cells(share, qp, rows, start, m, k), shares))
        if len(parts) == 1:
            return parts[0]
        # each query's best k of the shares' k each
        top = torch.topk(torch.from_numpy(np.concatenate([d for d, _ in parts], 1)), k, dim=1)
        ids = np.take_along_axis(np.concatenate([i for _, i in parts], 1), top.indices.numpy(), 1)
        return top.values.numpy(), ids

    def _scan_cells(self, todo: np.ndarray, qp: np.ndarray, rows: np.ndarray, start: list[int], m: int,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best k of the cells ``todo`` for each of m queries: cell c's queries are rows[a:b], their
        vectors qp[a:b], a, b = start[c], start[c + 1]."""
        faiss, lay = self._faiss, self._layout()
        heap = faiss.ResultHeap(m, k, keep_max=True)
        buf = np.empty(int((np.diff(start)[todo] * lay.sizes[todo]).max(initial=0)), np.float32)
        for c in todo.tolist():
            a, b = start[c], start[c + 1]
            s = buf[:(b - a) * len(lay.ids[c])].reshape(b - a, -1)
            np.matmul(qp[a:b], lay.vectors[c].T, out=s)  # [queries, items] of cell c
            heap.heaps.addn_query_subset_with_ids(b - a, faiss.swig_ptr(rows[a:b]), s.shape[1], faiss.swig_ptr(s),
                                                  faiss.swig_ptr(lay.ids[c]), 0)
        heap.finalize()
        return heap.D, heap.I

    def _load_files(self, directory: Path) -> None:
        super()._load_files(directory)
        if self._reduced():  # every reduced vector has norm M
            self._norm2_max = _norm2(self._cpu_index().reconstruct(0))

    def _reconstruct(self) -> np.ndarray:
        index = self._cpu_index()
        if index.direct_map.type == 0:
            index.make_direct_map()
        return index.reconstruct_n(0, self.n_items)[:, : self.dim]


@contextmanager
def _threads(faiss: ModuleType, n: int) -> Iterator[Any]:
    """Something with ``map``: n Python threads (the builtin ``map`` in this thread for n = 1), torch,
    faiss and the BLAS on one thread each meanwhile (threads started inside inherit it). The settings
    are process-wide: torch work another Python thread does meanwhile also runs on one thread."""
    torch_n, faiss_n = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        with _blas().limit(limits=1, user_api="blas"):
            if n == 1:
                yield builtins
            else:
                with ThreadPoolExecutor(n) as pool:
                    yield pool
    finally:
        torch.set_num_threads(torch_n)
        faiss.omp_set_num_threads(faiss_n)


@functools.cache
def _blas() -> threadpoolctl.ThreadpoolController:
    """The BLAS libraries loaded (found once: looking them up takes milliseconds)."""
    return threadpoolctl.ThreadpoolController()


class _Layout:
    """A CPU ``IndexIVFFlat``'s centroids ``c`` [nlist, d'] with their squared norms ``c2``, and
    per cell its ``ids`` int64 [n] and ``vectors`` float32 [n, d'], numpy views of the index's own
    inverted lists (no copy; ``scannable`` False when they are not in memory, e.g. on-disk lists)."""

    def __init__(self, faiss: ModuleType, index: Any) -> None:
        self.index = index  # keeps the memory the views point into alive
        self.c = torch.from_numpy(index.quantizer.reconstruct_n(0, index.nlist))
        self.c2 = (self.c * self.c).sum(1)
        self.cell_ids = np.arange(index.nlist, dtype=np.int64)
        inv = faiss.downcast_InvertedLists(index.invlists)
        self.sizes = np.array([inv.list_size(c) for c in range(index.nlist)], dtype=np.int64)
        self.ids: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []
        self.scannable = isinstance(inv, faiss.ArrayInvertedLists)
        if not self.scannable:
            return
        for c, n in enumerate(self.sizes.tolist()):
            ids = np.empty(n, np.int64)
            if n:
                faiss.memcpy(faiss.swig_ptr(ids), inv.get_ids(c), ids.nbytes)
                codes = faiss.rev_swig_ptr(inv.get_codes(c), n * inv.code_size)
            else:
                codes = np.zeros(0, np.uint8)
            self.ids.append(ids)
            self.vectors.append(codes.view(np.float32).reshape(n, index.d))


def _norm2(v: np.ndarray) -> float:
    return float(np.square(v.astype(np.float64)).sum())


def mips_to_l2(emb: np.ndarray) -> np.ndarray:
    """Items [C, d] -> [C, d + 1], the last coordinate sqrt(M^2 - |x|^2), M^2 the largest |x|^2.

    Every reduced item has norm M and a query [q, 0] is at squared distance |q|^2 + M^2 - 2 q.x, so
    nearest in L2 is largest inner product (Bachrach et al., RecSys 2014). Clustering by inner
    product instead lets the long item vectors (the popular items of a trained model) pull the
    cells: on 100k items of varied norms the reduction raised recall@10 at nprobe 16 of 1,264 from
    0.81 to 0.93 (not enough on every table: docs/retrieval.md)."""
    n2 = np.einsum("cd,cd->c", emb, emb, dtype=np.float64)
    m2 = float(n2.max()) if len(n2) else 0.0
    extra = np.sqrt(np.maximum(m2 - n2, 0.0)).astype(np.float32)
    return np.hstack([emb, extra[:, None]])
