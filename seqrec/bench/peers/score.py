"""One evaluator for every library: NDCG@10 / HR@10 of a top-k file on our test split.

The file (``topk.parquet``: user_id = our user index, item_id = our model id 1..C, rank from 0)
is scored against each test user's held-out item with ``seqrec.evaluation.metrics`` — the same
functions ``seqrec evaluate`` uses. Seen items (the user's training + validation items) and ids
outside the catalog are dropped before the cut at k, for every library alike; a test user with
no list scores as a miss and is counted in ``missing_users``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqrec.data import EvalSet
from seqrec.evaluation.metrics import rank_metrics, target_ranks


def topk_matrix(path: str | Path, test: EvalSet, n_items: int, k: int) -> tuple[np.ndarray, int, int]:
    """-> (catalog ids int64 [M, k] in test-user order, -1 = empty; missing users; seen items removed)."""
    import polars as pl

    df = pl.read_parquet(path).sort(["user_id", "rank"])
    g = df.group_by("user_id", maintain_order=True).agg(pl.col("item_id"))
    lists = dict(zip(g["user_id"].to_list(), g["item_id"].to_list(), strict=True))
    off, hist = test.history.offsets, test.history.items
    out = np.full((len(test), k), -1, dtype=np.int64)
    missing = removed = 0
    for row, u in enumerate(np.asarray(test.users).tolist()):
        items = lists.get(u)
        if items is None:
            missing += 1
            continue
        seen = set(hist[off[row]:off[row + 1]].tolist())
        keep = [i - 1 for i in items if 1 <= i <= n_items and i not in seen]
        removed += len(items) - len(keep)
        out[row, :min(k, len(keep))] = keep[:k]
    return out, missing, removed


def score_topk(path: str | Path, test: EvalSet, n_items: int, k: int = 10) -> dict[str, float | int]:
    """NDCG@k, HR@k (and MRR@k) of the top-k file at ``path`` on ``test`` -> metrics plus
    ``users``, ``missing_users``, ``seen_removed`` (seen or unknown items the library had listed)."""
    ids, missing, removed = topk_matrix(path, test, n_items, k)
    ranks = target_ranks(ids, np.asarray(test.targets, dtype=np.int64) - 1)
    return {**rank_metrics(ranks, [k]), "users": len(test), "missing_users": missing, "seen_removed": removed}
