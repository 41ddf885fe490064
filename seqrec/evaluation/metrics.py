"""Ranking metrics from top-K lists (one target per user)."""

from __future__ import annotations

import numpy as np


def target_ranks(topk_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target in its top-K list, or -1 if absent.

    topk_ids: int [M, K] catalog ids (-1 = empty slot); targets: int [M] catalog ids.
    """
    hit = topk_ids == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def rank_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR@k (= recall with one target), NDCG@k and MRR@k averaged over users.

    ranks: int [M], 0-based rank of the target or -1 when it is not in the top max(ks).
    """
    ranks = np.asarray(ranks)
    found = ranks >= 0
    r = np.where(found, ranks, np.iinfo(np.int64).max)
    out: dict[str, float] = {}
    n = max(len(ranks), 1)
    for k in sorted(ks):
        inside = found & (r < k)
        out[f"hr@{k}"] = float(inside.sum() / n)
        out[f"ndcg@{k}"] = float((1.0 / np.log2(np.where(inside, r, 0) + 2.0) * inside).sum() / n)
        out[f"mrr@{k}"] = float((1.0 / (np.where(inside, r, 0) + 1.0) * inside).sum() / n)
    return out


def coverage(topk_ids: np.ndarray, ks: list[int], n_items: int) -> dict[str, float]:
    """Catalog coverage@k: share of the catalog that appears in any user's top-k."""
    out = {}
    for k in sorted(ks):
        ids = topk_ids[:, :k]
        out[f"coverage@{k}"] = float(len(np.unique(ids[ids >= 0])) / max(n_items, 1))
    return out
