"""Exact top-k by inner product in torch: chunked over the catalog with a running top-k.

Memory is bounded by one score block [query batch, catalog chunk] (``memory_budget_mb``), never [M, C].
Filters are exact: excluded / denied items are set to -inf inside each block before its top-k;
an allow-list scores only the allowed rows of the embedding matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.errors import ConfigError, DataError
from seqrec.io import atomic_path
from seqrec.progress import progress
from seqrec.retrieval.base import Filters, Retriever

NEG_INF = float("-inf")


def _sort_candidates(v: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by (score desc, id asc): sort by id, then a stable sort by score."""
    o = i.argsort(dim=1)
    v, i = v.gather(1, o), i.gather(1, o)
    o = v.argsort(dim=1, descending=True, stable=True)
    return v.gather(1, o), i.gather(1, o)


def _block_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (score desc, column asc) of each row of ``s`` [m, n], exact under ties.

    ``torch.topk`` picks arbitrarily among values tied at the k-th place, so ask for k+1 and redo
    the (rare) rows whose k-th and (k+1)-th values are equal with a stable full sort.
    """
    n = s.shape[1]
    if n <= k:
        v, i = s.sort(dim=1, descending=True, stable=True)
        return v, i
    v, i = s.topk(k + 1, dim=1)
    tied = (v[:, k - 1] == v[:, k]) & torch.isfinite(v[:, k - 1])
    v, i = v[:, :k], i[:, :k]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        sv, si = s[rows].sort(dim=1, descending=True, stable=True)
        v, i = v.clone(), i.clone()
        v[rows], i[rows] = sv[:, :k], si[:, :k]
    return _sort_candidates(v, i)


def exact_topk(emb: torch.Tensor, queries: torch.Tensor, k: int, filters: Filters | None = None, *,
               memory_budget_mb: float = 64.0, chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` [M, d] against ``emb`` [C, d] under ``filters`` (catalog space).

    Returns (scores float32 [M, k], ids int64 [M, k]), -1 / -inf where fewer than k items remain.
    ``memory_budget_mb`` bounds the score block (query batch × catalog chunk, float32) in MiB;
    ``chunk_size``: catalog items per chunk (None: min(C, 8192)).
    """
    m = queries.shape[0]
    emb, ids_map, deny, excl_rows, excl_cols = _restrict(emb, filters, m)
    c = emb.shape[0]
    out_s = np.full((m, k), NEG_INF, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    if c == 0 or m == 0:
        return out_s, out_i
    kk = min(k, c)
    if emb.shape[1] == 1:  # rank one: scores q * e order the catalog the same way for every q > 0
        bv, bi = _rank_one_topk(emb[:, 0], queries[:, 0], kk, deny, excl_rows, excl_cols)
        return _finish(out_s, out_i, bv, bi, ids_map)
    chunk = int(chunk_size or min(c, 8192))
    qbatch = max(1, int(memory_budget_mb * 2**20) // (4 * chunk))
    dev = emb.device
    deny_t = torch.from_numpy(deny).to(dev)
    # exclusion pairs sorted by column, so that each chunk's pairs are one slice
    if excl_rows is not None and len(excl_rows):
        order = np.argsort(excl_cols, kind="stable")
        excl_rows, excl_cols = excl_rows[order], excl_cols[order]
    buf = torch.empty(min(qbatch, m) * min(chunk, c), dtype=torch.float32, device=dev)
    for q0 in progress(range(0, m, qbatch), desc="top-k search", unit="batch"):
        q1 = min(m, q0 + qbatch)
        pairs = None
        if excl_rows is not None and len(excl_rows):
            sel = (excl_rows >= q0) & (excl_rows < q1)
            pr, pc = excl_rows[sel] - q0, excl_cols[sel]
            if len(pr):
                row_starts = np.searchsorted(pc, np.arange(0, c + chunk, chunk))
                pairs = (torch.from_numpy(pr).to(dev), torch.from_numpy(pc).to(dev), row_starts)
        best_v, best_i = _scan_chunks(queries[q0:q1], emb, kk, chunk, deny_t, pairs, buf)
        _finish(out_s[q0:q1], out_i[q0:q1], best_v, best_i, ids_map)
    return out_s, out_i


def _finish(out_s: np.ndarray, out_i: np.ndarray, best_v: torch.Tensor, best_i: torch.Tensor,
            ids_map: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Write a block's top-k (rows of restricted-matrix ids) into the outputs as catalog ids, -1 / -inf
    where a row ran out of eligible items."""
    bv, bi = best_v.cpu().numpy(), best_i.cpu().numpy()
    if ids_map is not None:
        bi = ids_map[bi]
    bi[~np.isfinite(bv) & (bv < 0)] = -1
    out_s[:, : bv.shape[1]] = bv
    out_i[:, : bi.shape[1]] = bi
    out_s[out_i < 0] = NEG_INF
    return out_s, out_i


def _rank_one_topk(e: torch.Tensor, q: torch.Tensor, k: int, deny: np.ndarray, excl_rows: Any,
                   excl_cols: Any, budget: int = 1 << 23) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of q_m * e_c for 1-d item scores e [C] and queries q [M]: rows with q > 0 take the
    catalog in descending order of e, q < 0 ascending, q = 0 by id; each row skips its excluded items.
    O(C log C + M (k + excluded)) instead of M x C scores (the popularity baseline at 1M items).
    Rows go in blocks of at most ~``budget`` candidates, ordered by their number of exclusions so a
    block is as wide as its own rows need: all rows at once, each as wide as the row with most
    exclusions, held ~25 bytes x M x (k + most excluded), 8 GB on ML-20M, and took 145 s."""
    c, m = e.shape[0], q.shape[0]
    orders = torch.stack([e.argsort(stable=True), torch.arange(c, device=e.device),
                          e.argsort(descending=True, stable=True)]).cpu()  # for sign(q) = -1, 0, 1
    per_row = np.bincount(excl_rows, minlength=m) if excl_rows is not None else np.zeros(m, np.int64)
    excluded = np.sort(excl_rows * (c + 1) + excl_cols) if excl_rows is not None and len(excl_rows) else None
    side = (torch.sign(q).cpu().long() + 1).numpy()
    kk = min(k, c)
    out_v = torch.empty(m, kk, device=e.device)
    out_i = torch.empty(m, kk, dtype=torch.long, device=e.device)
    by_need = np.argsort(per_row, kind="stable")  # rows with few exclusions together: narrow blocks
    r0 = 0
    while r0 < m:
        # the block's width: enough candidates left after skipping for its row with most exclusions
        width = min(c, k + len(deny) + int(per_row[by_need[min(m, r0 + max(1, budget // (k + len(deny) + 1))) - 1]]))
        r1 = min(m, r0 + max(1, budget // width))
        rows = by_need[r0:r1]
        width = min(c, k + len(deny) + int(per_row[rows[-1]]))
        cand = orders[:, :width][torch.from_numpy(side[rows])]  # [rows, width]
        bad = np.isin(cand.numpy(), deny)
        if excluded is not None:  # (row, item) keys against the sorted excluded ones
            keys = rows[:, None] * (c + 1) + cand.numpy()
            at = np.minimum(np.searchsorted(excluded, keys), len(excluded) - 1)
            bad |= excluded[at] == keys
        bad_t = torch.from_numpy(bad)
        keep = (~bad_t).to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :kk]  # first k good, in order
        i = cand.gather(1, keep).to(e.device)
        v = (q[torch.from_numpy(rows).to(q.device), None] * e[i]).float()
        v[bad_t.gather(1, keep).to(e.device)] = float("-inf")
        at_rows = torch.from_numpy(rows).to(e.device)
        out_v[at_rows], out_i[at_rows] = v, i
        r0 = r1
    return out_v, out_i


def _restrict(emb: torch.Tensor, filters: Filters | None, m: int) -> tuple[Any, ...]:
    """(rows of ``emb`` allowed, their catalog ids or None, denied ids, excluded (row, column) pairs
    as two arrays or None) for ``m`` query rows; columns index the restricted matrix."""
    n_items = emb.shape[0]
    ids_map = None  # catalog id of each row of ``emb`` when an allow-list restricts it
    deny = np.zeros(0, np.int64)
    excl_rows = excl_cols = None
    if filters is not None:
        if filters.allowed is not None:
            ids_map = filters.allowed
            emb = emb[torch.from_numpy(ids_map).to(emb.device)]
        deny = filters.deny
        if filters.items is not None and len(filters.items):
            excl_rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(filters.offsets))
            excl_cols = filters.items
            if ids_map is not None:  # catalog id -> row of the restricted matrix (-1: not allowed)
                pos = np.full(n_items, -1, dtype=np.int64)
                pos[ids_map] = np.arange(len(ids_map))
                excl_cols = pos[excl_cols]
                keep = excl_cols >= 0
                excl_rows, excl_cols = excl_rows[keep], excl_cols[keep]
    return emb, ids_map, deny, excl_rows, excl_cols


def _scan_chunks(qb: torch.Tensor, emb: torch.Tensor, kk: int, chunk: int, deny_t: torch.Tensor,
                 pairs: tuple | None, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``kk`` of one query batch [b, d] over the catalog, ``chunk`` items at a time in ``buf``."""
    c = emb.shape[0]
    best_v = best_i = None
    for j, c0 in enumerate(range(0, c, chunk)):
        c1 = min(c, c0 + chunk)
        s = buf[: qb.shape[0] * (c1 - c0)].view(qb.shape[0], c1 - c0)
        torch.mm(qb, emb[c0:c1].T, out=s)
        if len(deny_t):
            d = deny_t[(deny_t >= c0) & (deny_t < c1)]
            if len(d):
                s[:, d - c0] = NEG_INF
        if pairs is not None:
            a, b = pairs[2][j], pairs[2][j + 1]
            if b > a:
                s[pairs[0][a:b], pairs[1][a:b] - c0] = NEG_INF
        got = None if best_v is None else _above_kth(s, best_v[:, -1], kk)
        if got is None:
            v, i = _block_topk(s, kk)
        else:
            v, i = got
        i = i + c0
        if best_v is None:
            best_v, best_i = v, i
        else:  # earlier chunks hold lower ids: a stable sort by score keeps (score desc, id asc)
            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
            o = v.argsort(dim=1, descending=True, stable=True)[:, :kk]
            best_v, best_i = v.gather(1, o), i.gather(1, o)
    return best_v, best_i


def _above_kth(s: torch.Tensor, kth: torch.Tensor, kk: int, width: int = 32,
               most: int = 4) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The scores of ``s`` [b, n] that can still enter each row's top-``kk``, whose k-th best so far is
    ``kth`` [b] -> (values, columns) [b, w] padded with -inf, columns ascending within a row; None when
    the shortcut does not apply (n not a multiple of ``width``, or more than ``most`` x kk blocks in a
    row qualify). Only scores strictly above ``kth`` can: the chunk's columns come after the ids
    already kept, which win ties. Rows are found through the maxima of ``width``-column blocks, one
    cheap pass instead of ``torch.topk`` over every score (most of exact search at a million items)."""
    b, n = s.shape
    if n % width:
        return None
    blocks = s.view(b, n // width, width)
    hit = blocks.amax(2) > kth[:, None]  # [b, n / width]
    per_row = hit.sum(1)
    room = int(per_row.max()) if b else 0
    if room > most * kk:
        return None
    r, blk = hit.nonzero(as_tuple=True)  # row-major: blocks ascending within a row
    slot = torch.arange(len(r), device=s.device) - (torch.cumsum(per_row, 0) - per_row)[r]
    v = s.new_full((b, max(room, 1) * width), NEG_INF)
    i = torch.zeros(b, max(room, 1) * width, dtype=torch.long, device=s.device)
    cols = slot[:, None] * width + torch.arange(width, device=s.device)  # [hits, width]
    v[r[:, None], cols] = blocks[r, blk]
    i[r[:, None], cols] = blk[:, None] * width + torch.arange(width, device=s.device)
    return v, i


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"retrieval parameter device={device!r} is not a torch device") from None


class TorchRetriever(Retriever):
    """Exact inner-product search in torch (the default backend).

    ``device``: "auto" (CUDA when available), "cpu" or "cuda[:n]"; ``memory_budget_mb``: bound on
    one score block in MiB; ``chunk_size``: catalog items per block (None: min(C, 8192)).
    """

    name = "torch"
    exact = True
    defaults: dict[str, Any] = {"device": "auto", "memory_budget_mb": 64.0, "chunk_size": None}
    search_time = ("memory_budget_mb", "chunk_size")
    renamed = {"block_mb": "memory_budget_mb", "chunk": "chunk_size"}

    def _configure(self) -> None:
        p = self.params
        budget, chunk = p["memory_budget_mb"], p["chunk_size"]
        if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
            raise ConfigError(f"retrieval parameter memory_budget_mb must be > 0, got {budget!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ConfigError(f"retrieval parameter chunk_size must be a positive integer, got {chunk!r}")

    def _build(self, emb: Any) -> None:
        self._configure()
        p = self.params
        self._device = resolve_device(str(p["device"]))
        t = emb if isinstance(emb, torch.Tensor) else torch.from_numpy(emb)
        self._emb = t.to(self._device, torch.float32).contiguous()

    def _search(self, q: Any, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        t = q if isinstance(q, torch.Tensor) else torch.from_numpy(q)
        t = t.to(self._device, torch.float32)
        p = self.params
        with torch.no_grad():
            return exact_topk(self._emb, t, k, filters, memory_budget_mb=float(p["memory_budget_mb"]),
                              chunk_size=p["chunk_size"])

    def item_embeddings(self) -> np.ndarray:
        return self._emb.cpu().numpy()

    def _save_files(self, directory: Path) -> None:
        with atomic_path(directory / "item_emb.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.item_embeddings())

    def _load_files(self, directory: Path) -> None:
        path = directory / "item_emb.npy"
        try:
            emb = np.load(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the saved item embeddings ({e})") from None
        self._configure()
        self._device = resolve_device(str(self.params["device"]))
        self._emb = torch.from_numpy(emb).to(self._device, torch.float32).contiguous()
