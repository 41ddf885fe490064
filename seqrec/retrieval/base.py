"""The retriever interface: build from the item-embedding matrix, then top-k search by inner product.

Every id here is in **catalog space** [0, C) (catalog id = model id - 1): padding does not exist, so
it can never be returned. A result row holds k (score, id) pairs sorted by score descending, ties
broken by the lower id; where fewer than k items are eligible the row ends with id -1, score -inf.

Filtering (per-user ``exclude``, global ``allow`` / ``deny``) is exact for exact backends (masked
while scoring). Approximate indexes cannot mask, so they over-fetch, filter and refill (see
``seqrec.retrieval.faiss_index`` and docs/retrieval.md for the guarantee).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from seqrec.errors import ConfigError, DataError, SeqrecError
from seqrec.io import temp_dir_next_to, write_json
from seqrec.registry import RETRIEVERS

FORMAT_VERSION = 1
META_FILE = "retriever.json"

Array = np.ndarray | torch.Tensor
CSR = tuple[np.ndarray, np.ndarray]


class Filters:
    """Validated search filters for M query rows over a catalog of C items.

    ``exclude``: CSR (offsets int64 [M+1], items int64) of per-row excluded catalog ids (duplicates
    allowed); ``allow``: the only ids that may be returned; ``deny``: ids never returned.
    ``allowed`` is the sorted eligible id set when ``allow`` was given (deny already removed), and
    ``deny`` the sorted denied ids otherwise.
    """

    def __init__(self, n_rows: int, n_items: int, exclude: CSR | None = None, allow: Any = None,
                 deny: Any = None) -> None:
        self.n_rows, self.n_items = n_rows, n_items
        self.offsets: np.ndarray | None = None
        self.items: np.ndarray | None = None
        if exclude is not None:
            try:
                offsets, items = exclude
            except (TypeError, ValueError):
                raise SeqrecError("exclude must be a pair (offsets [M+1], items) in CSR layout") from None
            offsets = _as_int64(offsets, "exclude offsets")
            items = _as_int64(items, "exclude items")
            if len(offsets) != n_rows + 1 or offsets[0] != 0 or offsets[-1] != len(items) \
                    or np.any(np.diff(offsets) < 0):
                raise SeqrecError(f"exclude offsets must be non-decreasing, length M+1 = {n_rows + 1}, "
                                  f"from 0 to len(items) = {len(items)}")
            self.offsets, self.items = offsets, _check_ids(items, n_items, "exclude")
        deny_ids = np.unique(_check_ids(_as_int64(deny, "deny"), n_items, "deny")) if deny is not None \
            else np.zeros(0, np.int64)
        self.allowed: np.ndarray | None = None
        self.deny = deny_ids
        if allow is not None:
            allowed = np.unique(_check_ids(_as_int64(allow, "allow"), n_items, "allow"))
            self.allowed = np.setdiff1d(allowed, deny_ids, assume_unique=True)
            self.deny = np.zeros(0, np.int64)

    @property
    def active(self) -> bool:
        return self.items is not None or self.allowed is not None or len(self.deny) > 0

    def eligible_mask(self) -> np.ndarray:
        """bool [C]: items that may be returned to any row (allow-list minus deny-list)."""
        if self.allowed is not None:
            ok = np.zeros(self.n_items, dtype=bool)
            ok[self.allowed] = True
        else:
            ok = np.ones(self.n_items, dtype=bool)
            ok[self.deny] = False
        return ok

    def n_eligible(self) -> int:
        return len(self.allowed) if self.allowed is not None else self.n_items - len(self.deny)

    def excluded_counts(self) -> np.ndarray:
        """int64 [M]: number of entries in each row's exclude list (duplicates counted)."""
        if self.offsets is None:
            return np.zeros(self.n_rows, dtype=np.int64)
        return np.diff(self.offsets)

    def eligible_per_row(self) -> np.ndarray:
        """int64 [M]: items each row may receive (eligible items not in the row's exclude list)."""
        base = np.full(self.n_rows, self.n_eligible(), dtype=np.int64)
        if self.offsets is None or len(self.items) == 0:
            return base
        rows = np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.offsets))
        keep = self.eligible_mask()[self.items]
        keys = np.unique(rows[keep] * self.n_items + self.items[keep])  # duplicates count once
        return base - np.bincount(keys // self.n_items, minlength=self.n_rows)

    def row_subset(self, rows: np.ndarray) -> Filters:
        """The same filters for a subset of the query rows (in the given order)."""
        out = Filters.__new__(Filters)
        out.__dict__.update(self.__dict__)
        out.n_rows = len(rows)
        if self.offsets is not None:
            starts, ends = self.offsets[rows], self.offsets[rows + 1]
            lens = ends - starts
            out.offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            idx = np.repeat(starts - out.offsets[:-1], lens) + np.arange(out.offsets[-1], dtype=np.int64)
            out.items = self.items[idx]
        return out

    def keep_mask(self, ids: np.ndarray) -> np.ndarray:
        """bool [M, K] for candidate ids [M, K] (-1 = none): True where the id may be returned."""
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        valid &= self.eligible_mask()[safe]
        if self.offsets is not None and len(self.items):
            rows = np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.offsets))
            banned = np.unique(rows * self.n_items + self.items)
            cand = np.arange(self.n_rows, dtype=np.int64)[:, None] * self.n_items + safe
            pos = np.minimum(np.searchsorted(banned, cand), len(banned) - 1)
            valid &= banned[pos] != cand
        return valid


def _as_int64(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise SeqrecError(f"{what} must hold integer catalog ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False).reshape(-1)


def _check_ids(ids: np.ndarray, n_items: int, what: str) -> np.ndarray:
    if ids.size and (ids.min() < 0 or ids.max() >= n_items):
        bad = ids[(ids < 0) | (ids >= n_items)][0]
        raise SeqrecError(f"{what} holds id {bad} outside the catalog [0, {n_items}) "
                          "(catalog id = model id - 1; padding has no catalog id)")
    return ids


def sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, ties by id ascending, -1 ids (score -inf) last."""
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    key_id = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, -scores.astype(np.float64)), axis=1) if scores.size else \
        np.zeros(scores.shape, dtype=np.int64)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class Retriever:
    """Top-k maximum-inner-product search over an item-embedding matrix (catalog space).

    Constructor arguments are the backend's hyper-parameters (see ``defaults``); they are stored as
    given and resolved (e.g. defaults that depend on the catalog size) by ``build``. ``name``: the
    backend's name in ``seqrec.registry.RETRIEVERS``, written by ``save`` (retriever.json "backend").
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    search_time: ClassVar[tuple[str, ...]] = ()  # parameters set_params may change after build
    renamed: ClassVar[dict[str, str]] = {}  # old parameter name -> new one (a one-line ConfigError)

    def __init__(self, **params: Any) -> None:
        self.given = self.check_params(params)
        self._resolved: dict[str, Any] = {}
        self.n_items = 0
        self.dim = 0
        self._built = False

    @classmethod
    def available(cls) -> bool:
        return True  # False: a library the backend needs is not importable (faiss)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` checked by name against ``defaults`` (through ``RETRIEVERS.check_params``)."""
        return RETRIEVERS.check_params(cls.name, dict(params), "retrieval")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Retriever:
        """Reload a retriever written by ``save(path)``: the backend named in its retriever.json."""
        meta = load_meta(path)
        name = meta["backend"]
        if name not in RETRIEVERS:
            raise DataError(f"{Path(path) / META_FILE}: unknown backend {name!r}")
        backend = RETRIEVERS.get(name)
        if not backend.available():
            raise DataError(f"{path}: the index was built with '{name}', which needs faiss (not importable); "
                            "pip install faiss-cpu or rebuild it with --backend torch")
        # saved before a parameter was renamed: read it under its new name; gpu is decided anew
        saved = {backend.renamed.get(k, k): v for k, v in meta["params"].items()}
        r = backend(**{k: v for k, v in saved.items() if k in backend.defaults and k != "gpu"})
        r.n_items, r.dim = meta["n_items"], meta["dim"]
        r._load_files(Path(path))
        r._built = True
        return r

    # -- public API -------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """The hyper-parameters in force: defaults, overridden by the given ones, resolved by build."""
        return {**self.defaults, **self.given, **self._resolved}

    def set_params(self, **params: Any) -> Retriever:
        """Change search-time parameters (e.g. ``nprobe``, ``ef_search``) without rebuilding."""
        params = self.check_params(params)
        bad = sorted(set(params) - set(self.search_time))
        if bad:
            raise ConfigError(f"retrieval backend '{self.name}': {bad[0]!r} cannot change after build; "
                              f"search-time parameters: {', '.join(self.search_time) or 'none'}")
        self.given.update(params)
        self._resolved.update(params)
        if self._built:
            self._configure()
        return self

    def build(self, item_emb: Array, queries: Array | None = None) -> Retriever:
        """Index ``item_emb`` float [C, d] (row c = catalog item c); approximate backends tune on sample
        ``queries`` float [M, d] (``seqrec.retrieval.tune``; default: item rows). Returns self."""
        emb = _as_matrix(item_emb, "item_emb")
        if emb.shape[0] == 0:
            raise SeqrecError("item_emb is empty: cannot build a retriever over 0 items")
        self.n_items, self.dim = int(emb.shape[0]), int(emb.shape[1])
        self._resolved = {}
        self._build(emb)
        self._built = True
        self._after_build(queries)
        return self

    def search(self, queries: Array, k: int, exclude: CSR | None = None, allow: Any = None,
               deny: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query row.

        queries float [M, d]; ``exclude`` CSR (offsets int64 [M+1], items int64) of per-row catalog
        ids never returned to that row; ``allow`` int array: return only these ids; ``deny`` int
        array: never return these ids. Returns (scores float32 [M, k], ids int64 [M, k]) sorted by
        score descending (ties: lower id first); id -1 / score -inf where fewer than k items remain.
        """
        if not self._built:
            raise SeqrecError(f"retriever '{self.name}' is not built: call .build(item_emb) first")
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise SeqrecError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise SeqrecError(f"k must be a positive integer, got {k!r}")
        filters = Filters(q.shape[0], self.n_items, exclude, allow, deny)
        if q.shape[0] == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return self._search(q, int(k), filters)

    def item_embeddings(self) -> np.ndarray:
        """The indexed item vectors float32 [C, d] (used for exact ground truth)."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike, source: str | None = None) -> Path:
        """Write the index to directory ``path`` atomically (a reader sees the old one or the new one).

        ``source``: an id of the indexed embeddings (``embedding_digest``), kept in the metadata so a
        later reader can tell whether the index still matches the model.
        """
        if not self._built:
            raise SeqrecError(f"retriever '{self.name}' is not built: nothing to save")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir_next_to(path)
        try:
            self._save_files(tmp)
            write_json(tmp / META_FILE, {"format_version": FORMAT_VERSION, "backend": self.name,
                                         "params": self.params, "n_items": self.n_items, "dim": self.dim,
                                         "source": source, "tuning": getattr(self, "tuning", None)})
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.given.items())
        return f"{type(self).__name__}({args})"

    # -- backend hooks ----------------------------------------------------------------------
    def _build(self, emb: Array) -> None:
        raise NotImplementedError

    def _configure(self) -> None:
        """Apply search-time parameters (after build, load or set_params)."""

    def _after_build(self, queries: Array | None) -> None:
        """Tune search-time parameters on sample ``queries`` (approximate backends)."""

    def _search(self, q: Array, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _save_files(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_files(self, directory: Path) -> None:
        raise NotImplementedError


def _as_matrix(x: Array, what: str) -> Array:
    """A 2-D float32 matrix, kept as a torch tensor if it is one (no copy when already float32)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dim() != 2:
            raise SeqrecError(f"{what} must be 2-D [n, d], got shape {tuple(t.shape)}")
        return t.float()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise SeqrecError(f"{what} must be 2-D [n, d], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise SeqrecError(f"{what} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no saved retriever here (missing {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
        backend, params = meta["backend"], dict(meta["params"])
        n_items, dim = int(meta["n_items"]), int(meta["dim"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{meta_path}: unreadable retriever metadata ({type(e).__name__}: {e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}, "
                        f"this seqrec reads {FORMAT_VERSION}")
    return {"backend": backend, "params": params, "n_items": n_items, "dim": dim, "source": meta.get("source")}


def embedding_digest(emb: np.ndarray) -> str:
    """Short content hash of an item-embedding matrix [C, d] (shape + float32 bytes)."""
    arr = np.ascontiguousarray(emb, dtype=np.float32)
    h = hashlib.blake2b(repr(arr.shape).encode(), digest_size=16)
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()
