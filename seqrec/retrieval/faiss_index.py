"""FAISS backends: ``faiss-flat`` (exact), ``faiss-ivf`` and ``faiss-hnsw`` (approximate), inner product.

An index cannot mask items per query, so filtered search over-fetches, filters and refills:

1. each row asks for k + min(#its excluded items + #denied items, ``overfetch_cap``) candidates
   (scaled by C / #allowed under an allow-list), rows grouped by that size rounded up to a power of 2;
2. candidates that are excluded, denied or outside the allow-list are dropped;
3. rows left with fewer than min(k, #eligible items for the row) candidates are searched again with
   4x the fetch size, up to ``max_fetch``; rows still short are answered by exact search.

Guarantee: a returned id is never excluded, denied or outside the allow-list, and every row holds
min(k, #eligible) items. The items are the index's own top-k among eligible items (exact for
``faiss-flat``), i.e. filtering never costs recall beyond the index's approximation.
A small allow-list (<= C / 16 items) is searched exactly over the allowed items instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from seqrec.errors import ConfigError, DataError, SeqrecError, shorten
from seqrec.io import atomic_path
from seqrec.progress import stages
from seqrec.retrieval.base import Filters, Retriever, sort_rows
from seqrec.retrieval.exact import exact_topk
from seqrec.retrieval.tune import DEFAULTS as TUNING
from seqrec.retrieval.tune import Tunable

SEARCH_BLOCK_BYTES = 256 * 2**20  # working memory of one block of filtered query rows


def import_faiss() -> ModuleType | None:
    """The faiss module, or None when it is not importable (faiss-less install)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def gpu_available(faiss: ModuleType) -> bool:
    """True when faiss was built with GPU support and sees a CUDA device."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # a CPU build without get_num_gpus, or a broken CUDA runtime
        return False


def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise ConfigError(f"retrieval parameter {name} must be an integer >= {lo}, got {v!r}")
    return int(v)


class FaissRetriever(Retriever):
    """Common part of the FAISS backends: GPU placement, filtered search, save/load."""

    exact = False
    extra_dims = 0  # coordinates the index adds to each vector (faiss-ivf's L2 reduction: 1)
    common: dict[str, Any] = {"gpu": "auto", "overfetch_cap": 1024, "max_fetch": 8192}
    search_time: tuple[str, ...] = ("overfetch_cap", "max_fetch")

    @classmethod
    def available(cls) -> bool:
        return import_faiss() is not None

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        faiss = import_faiss()
        if faiss is None:  # build_retriever falls back before this; direct construction cannot
            raise SeqrecError(f"retrieval backend '{self.name}' needs faiss, which is not importable "
                              "(pip install faiss-cpu, or use backend 'torch')")
        self._faiss = faiss
        self._index: Any = None
        self._emb_cache: np.ndarray | None = None

    # -- index construction (per backend) ---------------------------------------------------
    def _make_index(self, emb: np.ndarray) -> Any:
        raise NotImplementedError

    def _configure(self) -> None:
        _check_int("overfetch_cap", self.params["overfetch_cap"], 0)
        _check_int("max_fetch", self.params["max_fetch"])

    def _search_params(self, k_fetch: int) -> Any:
        return None

    # -- Retriever hooks --------------------------------------------------------------------
    def _build(self, emb: Any) -> None:
        emb = emb.cpu().numpy() if isinstance(emb, torch.Tensor) else emb
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        self._emb_cache = None
        self._place(self._make_index(emb))
        self._configure()

    def _place(self, index: Any) -> None:
        """Move the index to the GPU when faiss-gpu and CUDA are present (and allowed)."""
        want = self.params["gpu"]
        if want not in ("auto", True, False):
            raise ConfigError(f"retrieval parameter gpu must be auto, true or false, got {want!r}")
        use = want is not False and gpu_available(self._faiss) and self._gpu_supported()
        if want is True and not use:
            raise ConfigError(f"retrieval backend '{self.name}': gpu=true but faiss-gpu with a CUDA "
                              "device is not available for this index type")
        if use:
            self._gpu_res = self._faiss.StandardGpuResources()
            index = self._faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        self._resolved["gpu"] = bool(use)
        self._index = index

    def _gpu_supported(self) -> bool:
        return True

    def _cpu_index(self) -> Any:
        return self._faiss.index_gpu_to_cpu(self._index) if self._resolved.get("gpu") else self._index

    def _raw(self, q: np.ndarray, k_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        params = self._search_params(k_fetch)
        if params is None:
            return self._index.search(q, k_fetch)
        return self._index.search(q, k_fetch, params=params)

    def _search(self, q: Any, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        q = q.cpu().numpy() if isinstance(q, torch.Tensor) else q
        q = np.ascontiguousarray(q, dtype=np.float32)
        c = self.n_items
        if filters.allowed is not None and len(filters.allowed) * 16 <= c:
            # a small allow-list: exact scoring of the allowed items beats over-fetching
            return self._exact(q, k, filters)
        if not filters.active:
            kf = min(k, c)
            step = max(1, SEARCH_BLOCK_BYTES // (100 * kf))
            parts = [_pad(*sort_rows(*self._raw(q[b0:b0 + step], kf)), k) for b0 in range(0, len(q), step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        m = q.shape[0]
        need = np.minimum(k, filters.eligible_per_row())  # items each row must end with
        scale = c / max(1, filters.n_eligible()) if filters.allowed is not None else 1.0
        extra = np.minimum(filters.excluded_counts() + len(filters.deny), int(self.params["overfetch_cap"]))
        fetch = np.ceil((k + extra) * scale).astype(np.int64)
        fetch = np.minimum(2 ** np.ceil(np.log2(np.maximum(fetch, 1))).astype(np.int64), c)
        out_s = np.full((m, k), -np.inf, dtype=np.float32)
        out_i = np.full((m, k), -1, dtype=np.int64)
        max_fetch = max(int(self.params["max_fetch"]), k)
        todo = np.arange(m)
        while len(todo):
            short = []
            for kf in np.unique(fetch[todo]):
                group = todo[fetch[todo] == kf]
                # in blocks: filtering and sorting [rows, kf] candidates takes ~100 bytes a candidate,
                # so 200k users at once held gigabytes (1M-item evaluation, docs/benchmarks.md)
                step = max(1, SEARCH_BLOCK_BYTES // (100 * int(kf)))
                for b0 in range(0, len(group), step):
                    rows = group[b0:b0 + step]
                    s, i = self._raw(q[rows], int(kf))
                    keep = filters.row_subset(rows).keep_mask(i)
                    s, i = np.where(keep, s, -np.inf), np.where(keep, i, -1)
                    s, i = sort_rows(s, i)
                    s, i = _pad(s[:, :k], i[:, :k], k)
                    out_s[rows], out_i[rows] = s, i
                    got = (i >= 0).sum(1)
                    short.append(rows[got < need[rows]])
            todo = np.concatenate(short) if short else np.zeros(0, np.int64)
            if len(todo):
                done = fetch[todo] >= min(c, max_fetch)
                if done.any():  # the index cannot fill these rows: answer them exactly
                    rows = todo[done]
                    out_s[rows], out_i[rows] = self._exact(q[rows], k, filters.row_subset(rows))
                    todo = todo[~done]
                fetch[todo] = np.minimum(fetch[todo] * 4, min(c, max_fetch))
        return out_s, out_i

    def _exact(self, q: np.ndarray, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        emb = torch.from_numpy(self.item_embeddings())
        with torch.no_grad():
            return exact_topk(emb, torch.from_numpy(q), k, filters)

    def item_embeddings(self) -> np.ndarray:
        if self._emb_cache is None:
            self._emb_cache = np.ascontiguousarray(self._reconstruct(), dtype=np.float32)
        return self._emb_cache

    def _reconstruct(self) -> np.ndarray:
        return self._cpu_index().reconstruct_n(0, self.n_items)

    def _save_files(self, directory: Path) -> None:
        with atomic_path(directory / "index.faiss") as tmp:
            self._faiss.write_index(self._cpu_index(), str(tmp))

    def _load_files(self, directory: Path) -> None:
        path = directory / "index.faiss"
        if not path.is_file():
            raise DataError(f"{path}: missing saved faiss index")
        try:
            index = self._faiss.read_index(str(path))
        except RuntimeError as e:
            raise DataError(f"{path}: cannot read the faiss index ({shorten(e)})") from None
        if index.ntotal != self.n_items or index.d - self.dim not in (0, self.extra_dims):
            raise DataError(f"{path}: index holds {index.ntotal} x {index.d}, metadata says "
                            f"{self.n_items} x {self.dim}")
        self._emb_cache = None
        self._place(index)
        self._configure()


def _pad(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad rows to width k with (-inf, -1); faiss already marks missing results with id -1."""
    s = np.where(i < 0, -np.inf, s).astype(np.float32)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return s, i.astype(np.int64)


class FaissFlatRetriever(FaissRetriever):
    """Exact inner product with ``IndexFlatIP`` (brute force, BLAS)."""

    name = "faiss-flat"
    exact = True
    defaults: dict[str, Any] = dict(FaissRetriever.common)

    def _make_index(self, emb: np.ndarray) -> Any:
        index = self._faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        return index

class FaissHNSWRetriever(Tunable, FaissRetriever):
    """Graph index ``IndexHNSWFlat`` with inner product (CPU only).

    ``M`` neighbours per node, ``ef_construction`` build beam, ``ef_search`` search beam (raised to
    the fetch size when that is larger), tuned at build time to ``target_recall``
    (``seqrec.retrieval.tune``) unless given or ``target_recall`` is None.
    """

    name = "faiss-hnsw"
    search_time = (*FaissRetriever.search_time, "ef_search")
    tune_param = "ef_search"
    defaults: dict[str, Any] = {**FaissRetriever.common, "M": 32, "ef_construction": 40, "ef_search": 128,
                                **TUNING}

    def tune_range(self, k: int) -> tuple[int, int]:
        return k, max(k, self.n_items)

    def _gpu_supported(self) -> bool:
        return False  # faiss has no GPU HNSW

    def _make_index(self, emb: np.ndarray) -> Any:
        p = self.params
        index = self._faiss.IndexHNSWFlat(emb.shape[1], _check_int("M", p["M"], 2),
                                          self._faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = _check_int("ef_construction", p["ef_construction"])
        _check_int("ef_search", p["ef_search"])
        with stages(f"building faiss-hnsw index ({emb.shape[0]:,} items)", 1) as stage:
            stage("adding the items to the graph")
            index.add(emb)
        return index

    def _configure(self) -> None:
        super()._configure()
        self._index.hnsw.efSearch = _check_int("ef_search", self.params["ef_search"])

    def _search_params(self, k_fetch: int) -> Any:
        return self._faiss.SearchParametersHNSW(efSearch=max(int(self.params["ef_search"]), k_fetch))

def faiss_fallback_warning(backend: str) -> None:
    warnings.warn(f"faiss is not importable: retrieval backend '{backend}' falls back to exact 'torch' "
                  "(pip install faiss-cpu to use it)", RuntimeWarning, stacklevel=3)
