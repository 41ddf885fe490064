"""``Recommender``: top-k from a bundle with numpy, onnxruntime and faiss (no torch).

It answers as ``SeqRec.recommend(histories=...)`` does (``seqrec.queries``), with the same fallbacks,
each announced with a ``SeqrecWarning``:
- history items outside the trained catalog are ignored;
- a history with no known item (or an empty one) gets the most popular training items, score = the
  item's training interaction count, allow/deny lists applied;
- repeated items in a history are kept (the model reads them; each is excluded once seen).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from seqrec.errors import SeqrecError, warn
from seqrec.serving.bundle import Bundle, load_bundle
from seqrec.serving.encoder import load_encoder, model_input
from seqrec.serving.search import ApproximateIndex, exact_topk, popularity_topk

BATCH_USERS = 256  # rows per encoder call (sorted by length, so padding stays small)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _series(values: list) -> pl.Series:
    try:
        return pl.Series("user", values)
    except (TypeError, ValueError, pl.exceptions.PolarsError):  # ids of mixed types: all as text
        return pl.Series("user", [str(v) for v in values])


class Recommender:
    """A loaded bundle. ``from_bundle(path)``, then ``recommend(histories, k)``."""

    def __init__(self, bundle: Bundle, threads: int = 0, exact: bool = False) -> None:
        m = bundle.manifest
        self.bundle, self.manifest = bundle, m
        self.max_len = int(m["model"]["max_len"])
        self.mask_token = None if m["model"].get("causal", True) else int(m["model"]["mask_token"])
        self.n_items = bundle.item_emb.shape[0]
        self._encode = load_encoder(bundle.path / m["encoder"]["file"], m["encoder"]["format"], threads)
        self._index: dict[Any, int] = {raw: i + 1 for i, raw in enumerate(bundle.item_ids.to_list())}
        self.integer_ids = bundle.item_ids.dtype.is_integer()  # raw ids are ints (else text)
        r = m.get("retrieval") or {}
        params = r.get("params") or {}
        self._exact = exact
        # an index whose tuning found exact search faster (seqrec.retrieval.tune) searches exactly
        self.backend = "exact" if exact or r.get("exact", True) or params.get("exact_fallback") \
            else str(r["backend"])
        self._ann = None if self.backend == "exact" else ApproximateIndex(
            bundle.path / "index", self.backend, params, bundle.item_emb)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, threads: int = 0, check: bool = True,
                    exact: bool = False) -> Recommender:
        """Load and verify (sha256 of every file unless ``check`` is False) the bundle at ``path``.
        ``threads``: onnxruntime intra-op threads (0: its default); ``exact``: search the item table
        exactly even when the bundle ships an approximate index."""
        return cls(load_bundle(path, check), threads, exact)

    def set_params(self, **params: Any) -> Recommender:
        """Change the shipped index's search-time parameters (``nprobe``, ``ef_search``) -> self. As in
        ``seqrec.retrieval.tune``, an explicit setting replaces the tuning's exact fallback."""
        r = self.manifest.get("retrieval") or {}
        if self._exact or r.get("exact", True):
            raise SeqrecError(f"this recommender searches exactly; {', '.join(params)} apply to an approximate index")
        if self._ann is None:  # the tuning fell back to exact search: the index is used from now on
            self._ann = ApproximateIndex(self.bundle.path / "index", str(r["backend"]),
                                         {**r.get("params", {}), "exact_fallback": False}, self.bundle.item_emb)
            self.backend = str(r["backend"])
        self._ann.set_params(**{**self._ann.params, **params})
        return self

    def metadata(self) -> dict[str, Any]:
        """The manifest without the checksums: model, catalog, retrieval, versions, metrics."""
        return {k: v for k, v in self.manifest.items() if k != "files"}

    def catalog_ids(self, raw: Any) -> np.ndarray:
        """Raw item ids -> catalog ids int64 of those in the catalog (others dropped), in order."""
        return np.array([self._index[x] - 1 for x in raw if x in self._index], dtype=np.int64)

    def user_vectors(self, seqs: list[np.ndarray]) -> np.ndarray:
        """Histories as model ids (1..C, non-empty, time order) -> float32 [M, d], encoded in length
        order ``BATCH_USERS`` rows at a time (as ``seqrec.evaluation.user_vectors``)."""
        out = np.zeros((len(seqs), self.bundle.item_emb.shape[1]), dtype=np.float32)
        lengths = np.fromiter((min(len(s), self.max_len) for s in seqs), dtype=np.int64, count=len(seqs))
        order = np.argsort(lengths, kind="stable")
        for lo in range(0, len(order), BATCH_USERS):
            rows = order[lo:lo + BATCH_USERS]
            out[rows] = self._encode(model_input([seqs[r] for r in rows], self.max_len, self.mask_token))
        return out

    def recommend(self, histories: Any, k: int = 10, exclude_seen: bool = True, items: Any = None,
                  exclude_items: Any = None) -> pl.DataFrame:
        """Top-k per user -> DataFrame(user, item, score, rank): raw ids, rank 1 = best, users in input
        order. ``histories``: a mapping user -> [raw item ids] in time order (or a DataFrame with
        columns user, item); ``items`` / ``exclude_items``: allow- / deny-list of raw item ids."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise SeqrecError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        users, seqs = self._histories(histories)
        eligible = self._eligible(items, exclude_items)
        known = np.flatnonzero([len(s) > 0 for s in seqs])
        ids = np.full((len(seqs), k), -1, dtype=np.int64)
        scores = np.zeros((len(seqs), k), dtype=np.float32)
        if len(known):
            q = self.user_vectors([seqs[r] for r in known])
            seen = [seqs[r] - 1 for r in known] if exclude_seen else None
            search = self._ann.search if self._ann is not None else \
                (lambda *a: exact_topk(self.bundle.item_emb, *a))
            scores[known], ids[known] = search(q, k, seen, eligible)
        cold = np.setdiff1d(np.arange(len(seqs)), known)
        if len(cold):
            s, i = popularity_topk(self.bundle.popularity, k, eligible)
            ids[cold[:, None], np.arange(len(i))], scores[cold[:, None], np.arange(len(i))] = i, s
        return self._frame(users, ids, scores, k)

    def _histories(self, histories: Any) -> tuple[pl.Series, list[np.ndarray]]:
        """User column and each history as model ids (unknown items dropped, with a warning)."""
        if isinstance(histories, Mapping):
            bad = next((u for u, v in histories.items() if isinstance(v, str | bytes) or not hasattr(v, "__len__")),
                       None)
            if bad is not None:
                raise SeqrecError(f"histories[{bad!r}] must be a list of raw item ids, "
                                  f"got a {type(histories[bad]).__name__}")
            users, lists = _series(list(histories)), [list(v) for v in histories.values()]
        elif isinstance(histories, pl.DataFrame) and {"user", "item"} <= set(histories.columns):
            grouped = histories.group_by("user", maintain_order=True).agg(pl.col("item"))
            users, lists = grouped["user"], grouped["item"].to_list()
        else:
            raise SeqrecError("histories must be a mapping user -> [raw item ids] (or a DataFrame user, item)")
        index = self._index
        mapped = [np.fromiter((index.get(x, 0) for x in v), dtype=np.int64, count=len(v)) for v in lists]
        dropped = [int((m == 0).sum()) for m in mapped]
        kept = [m[m > 0] for m in mapped]
        hit = [d for d, m in zip(dropped, kept, strict=True) if d and len(m)]
        if hit:
            warn(f"{_n(sum(hit), 'history item')} of {_n(len(hit), 'user')} not in the trained catalog: ignored")
        n_cold = sum(len(m) == 0 for m in kept)
        if n_cold:
            warn(f"{n_cold} of {len(kept)} users have no known item in their history: recommended by popularity")
        return users.rename("user"), kept

    def _eligible(self, items: Any, exclude_items: Any) -> np.ndarray | None:
        """bool [C]: the allow-list minus the deny-list (None: every item)."""
        if items is None and exclude_items is None:
            return None
        ok = np.ones(self.n_items, dtype=bool)
        for raw, what in ((items, "items"), (exclude_items, "exclude_items")):
            if raw is None:
                continue
            raw = list(raw)
            ids = self.catalog_ids(raw)
            if not len(ids) and len(raw):
                raise SeqrecError(f"none of the {what} are in the trained catalog")
            if what == "items":
                ok[:] = False
                ok[ids] = True
            else:
                ok[ids] = False
        return ok

    def _frame(self, users: pl.Series, ids: np.ndarray, scores: np.ndarray, k: int) -> pl.DataFrame:
        valid = ids >= 0
        rep = np.repeat(np.arange(len(ids)), k)[valid.ravel()]
        return pl.DataFrame({
            "user": users.gather(rep),
            "item": self.bundle.item_ids.gather(ids[valid]).rename("item"),
            "score": scores[valid],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(ids))[valid.ravel()],
        })
