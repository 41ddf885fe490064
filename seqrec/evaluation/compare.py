"""Paired comparison of two models on the same evaluated users: is a gap real or seed noise?

A test NDCG@10 is a mean over users; two models scored on the same users differ per user, and the
spread of those differences says how far apart the means can be by chance. Bars like "≥ 0.97 × CE"
are judged by the ratio's confidence interval, not by the third decimal of one run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user value of ``metric`` ('ndcg@K', 'hr@K' or 'mrr@K') from 0-based target ranks -> float [M].

    ranks: int [M], -1 when the target is outside the retrieved top list. The mean over users is
    exactly what ``seqrec.evaluation.rank_metrics`` reports.
    """
    name, _, k = metric.partition("@")
    if name not in ("ndcg", "hr", "mrr") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"metric must look like ndcg@10, hr@10 or mrr@10, got {metric!r}")
    r = np.asarray(ranks)
    inside = (r >= 0) & (r < int(k))
    r0 = np.where(inside, r, 0).astype(np.float64)
    value = {"ndcg": 1.0 / np.log2(r0 + 2.0), "hr": np.ones_like(r0), "mrr": 1.0 / (r0 + 1.0)}[name]
    return value * inside


def compare_ranks(base: np.ndarray, other: np.ndarray, metrics: list[str] | tuple[str, ...] = ("ndcg@10", "hr@10"),
                  resamples: int = 2000, level: float = 0.95, seed: int = 0) -> list[dict[str, float | str]]:
    """Compare ``other`` with ``base`` on the same users, one record per metric.

    base, other: int [M] target ranks of the same M users in the same order (``evaluation_ranks``).
    Each record: ``metric``, ``base`` and ``value`` (the two means), ``ratio`` = value / base with its paired
    bootstrap percentile interval ``ratio_lo``..``ratio_hi`` (users resampled with replacement,
    ``resamples`` times, both models on each resample), ``diff`` = value − base with ``diff_lo``..
    ``diff_hi``, and ``p_value`` of a paired t-test on the per-user differences (two-sided).
    """
    from scipy import stats

    base, other = np.asarray(base), np.asarray(other)
    if base.shape != other.shape or base.ndim != 1 or len(base) < 2:
        raise ValueError(f"need two rank vectors of the same users (>= 2), got shapes {base.shape} and {other.shape}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError("level must be in (0, 1) and resamples >= 1")
    m = len(base)
    rng = np.random.default_rng(seed)
    # one set of resampled user lists for all metrics, drawn in blocks to bound memory (block × M ints)
    block = max(1, min(resamples, 2**24 // m))
    draws = [rng.integers(0, m, size=(min(block, resamples - lo), m)) for lo in range(0, resamples, block)]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out: list[dict[str, float | str]] = []
    for metric in metrics:
        a, b = per_user(base, metric), per_user(other, metric)
        sa = np.concatenate([a[idx].sum(axis=1) for idx in draws])
        sb = np.concatenate([b[idx].sum(axis=1) for idx in draws])
        ratio = np.divide(sb, sa, out=np.full_like(sb, np.nan), where=sa > 0)
        diff = (sb - sa) / m
        d = b - a
        p = float(stats.ttest_rel(b, a).pvalue) if d.std() > 0 else (1.0 if d.mean() == 0 else 0.0)
        out.append({"metric": metric, "base": float(a.mean()), "value": float(b.mean()),
                    "ratio": float(b.mean() / a.mean()) if a.mean() > 0 else float("nan"),
                    "ratio_lo": float(np.nanpercentile(ratio, q[0])), "ratio_hi": float(np.nanpercentile(ratio, q[1])),
                    "diff": float(d.mean()), "diff_lo": float(np.percentile(diff, q[0])),
                    "diff_hi": float(np.percentile(diff, q[1])), "p_value": p, "users": m})
    return out


def compare_models(base: Any, others: list[tuple[str, Any]], ranks: Callable[[Any, int], np.ndarray],
                   identity: Callable[[Any], tuple[Any, np.ndarray]], metrics: tuple[str, ...],
                   resamples: int, level: float, seed: int) -> list[dict[str, float | str]]:
    """``compare_ranks`` of each named model in ``others`` against ``base``, one record per
    (model, metric) with ``run`` = its name. ``ranks(model, k)`` gives its 0-based target ranks [M];
    ``identity(model)`` its (data fingerprint, evaluated targets [M]), which must equal base's: a
    paired comparison needs the same users. Raises SeqrecError (one line) on bad input."""
    from seqrec.errors import SeqrecError

    if not metrics:
        raise SeqrecError("compare needs at least one metric")
    for m in metrics:
        try:
            per_user(np.zeros(1, dtype=np.int64), m)
        except ValueError as e:
            raise SeqrecError(str(e)) from None
    k = max(int(m.partition("@")[2]) for m in metrics)
    fp, targets = identity(base)
    base_ranks = ranks(base, k)
    rows: list[dict[str, float | str]] = []
    for name, other in others:
        other_fp, other_targets = identity(other)
        if other_fp != fp or not np.array_equal(other_targets, targets):
            raise SeqrecError(f"model {name} was fitted on other data: a paired comparison needs the same users")
        try:
            recs = compare_ranks(base_ranks, ranks(other, k), metrics, resamples, level, seed)
        except ValueError as e:
            raise SeqrecError(str(e)) from None
        rows += [{"run": name, **r} for r in recs]
    return rows
