"""Seeded synthetic interactions with planted sequential structure.

Items are split into clusters. Each item has a small fixed *successor set* drawn from the clusters that
its own cluster leads to (a sparse cluster-level Markov chain); popularity within a cluster is Zipf.
A user's next item is, with probability ``p_successor``, one of the previous item's successors; with
probability ``p_cluster`` a Zipf-popular item of a cluster that the previous item's cluster leads to;
otherwise a globally Zipf-popular item (noise). So the previous item largely determines the next one: a
sequence model can learn it, popularity cannot.

Generation is vectorised over users (one numpy step per sequence position), so ML-20M-sized data
(20M rows) takes seconds. Ids are 1-based raw ids (the item ids are shuffled so that raw id order
carries no cluster information); timestamps are integer seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from seqrec.errors import ConfigError


@dataclass(frozen=True)
class SyntheticParams:
    """Generator knobs. Lengths follow a log-normal with mean ``mean_len``, clipped to [min_len, max_len]."""

    n_users: int = 2_000
    n_items: int = 800
    n_clusters: int = 40
    mean_len: float = 34.0  # before de-duplication; ~30 after
    min_len: int = 5
    max_len: int = 200
    len_sigma: float = 0.6
    successors: int = 4  # per-item successor-set size
    p_successor: float = 0.75  # next item drawn from the previous item's successor set
    p_cluster: float = 0.15  # ... from a cluster the previous item's cluster leads to (else global noise)
    cluster_fanout: int = 3  # clusters reachable from a cluster
    zipf: float = 1.1  # popularity exponent within a cluster and globally
    dedup: bool = True  # drop repeated (user, item) pairs, keeping the first
    seed: int = 0


PRESETS: dict[str, SyntheticParams] = {
    # trains SASRec in well under a minute on 2 CPU cores
    "default": SyntheticParams(),
    # ML-20M's shape: 138,493 users, 26,744 items, ~20.0M interactions (repeats kept so the count holds)
    "ml-20m": SyntheticParams(n_users=138_493, n_items=26_744, n_clusters=500, mean_len=144.4, min_len=20,
                              max_len=9_254, len_sigma=1.0, dedup=False),
    # a million-item catalog for scale tests (~10M interactions): 1.95M ids are drawn, ~1.0M of them
    # occur (Zipf popularity within the 50-item clusters leaves the rest unseen, and the catalog is
    # what occurs; 1M drawn ids gave a 644,364-item catalog, 1.85M 974,378)
    "million": SyntheticParams(n_users=200_000, n_items=1_950_000, n_clusters=39_000, mean_len=50.0, min_len=5,
                               max_len=2_000, len_sigma=0.8, dedup=False),
}


def params_for(preset: str = "default", **overrides) -> SyntheticParams:
    """Preset ``preset`` with ``overrides`` applied (unknown keys -> ConfigError)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r} (choose from {', '.join(PRESETS)})")
    fields = set(asdict(PRESETS[preset]))
    bad = set(overrides) - fields
    if bad:
        raise ConfigError(
            f"unknown synthetic parameter(s) {', '.join(sorted(bad))} (known: {', '.join(sorted(fields))})"
        )
    p = replace(PRESETS[preset], **overrides)
    _validate(p)
    return p


def _validate(p: SyntheticParams) -> None:
    checks = [
        (p.n_users >= 1, "n_users must be >= 1"),
        (p.n_items >= 2, "n_items must be >= 2"),
        (1 <= p.n_clusters <= p.n_items, "n_clusters must be in [1, n_items]"),
        (1 <= p.min_len <= p.max_len, "need 1 <= min_len <= max_len"),
        (p.mean_len > 0 and p.len_sigma >= 0, "mean_len must be > 0 and len_sigma >= 0"),
        (p.successors >= 1 and p.cluster_fanout >= 1, "successors and cluster_fanout must be >= 1"),
        (
            0 <= p.p_successor and 0 <= p.p_cluster and p.p_successor + p.p_cluster <= 1,
            "p_successor, p_cluster must be >= 0 with sum <= 1",
        ),
        (p.zipf >= 0, "zipf must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"synthetic: {msg}")


def generate(params: SyntheticParams | None = None, **overrides) -> pl.DataFrame:
    """Generate interactions -> polars DataFrame (user int64, item int64, timestamp int64 seconds).

    Rows are grouped by user and in time order within a user. ``overrides`` replace fields of
    ``params`` (default: the ``default`` preset).
    """
    p = replace(params, **overrides) if params is not None else params_for("default", **overrides)
    _validate(p)
    rng = np.random.default_rng(p.seed)  # one stream, drawn in a fixed order: the data is a function of p
    step = _transitions(p, rng)
    # sequence lengths: log-normal with the requested mean
    mu = np.log(p.mean_len) - p.len_sigma**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, p.len_sigma, p.n_users)), p.min_len, p.max_len).astype(np.int64)
    items, times = _walk(p, rng, lengths, step)
    users = np.repeat(np.arange(p.n_users, dtype=np.int64), lengths)
    if p.dedup:
        key = users * (p.n_items + 1) + items
        _, first = np.unique(key, return_index=True)
        keep = np.zeros(len(key), dtype=bool)
        keep[first] = True
        users, items, times = users[keep], items[keep], times[keep]
    raw_item = rng.permutation(p.n_items).astype(np.int64) + 1  # raw ids carry no cluster information
    return pl.DataFrame({"user": users + 1, "item": raw_item[items], "timestamp": times})


def _transitions(p: SyntheticParams, rng: np.random.Generator) -> Any:
    """The catalog's structure -> ``step(cur) -> next items`` [n] and ``step.first(n)``: successors,
    cluster hops and global Zipf popularity (clusters are contiguous blocks of the 0-based item index,
    Zipf weights within a block)."""
    C, K = p.n_items, p.n_clusters
    bounds = np.linspace(0, C, K + 1).round().astype(np.int64)
    cluster_of = np.repeat(np.arange(K), np.diff(bounds))
    rank = np.arange(C) - bounds[cluster_of]
    cw = np.cumsum(1.0 / (rank + 1.0) ** p.zipf)
    cw_lo = np.where(bounds[:-1] > 0, cw[np.maximum(bounds[:-1] - 1, 0)], 0.0)
    cw_hi = cw[bounds[1:] - 1]

    def from_cluster(c: np.ndarray) -> np.ndarray:  # one Zipf-popular item of each cluster in c
        u = cw_lo[c] + rng.random(len(c)) * (cw_hi[c] - cw_lo[c])
        return np.clip(np.searchsorted(cw, u, side="right"), bounds[c], bounds[c + 1] - 1)

    gw = 1.0 / (rng.permutation(C) + 1.0) ** p.zipf  # global popularity: random ranks
    gcw = np.cumsum(gw) / gw.sum()

    def global_items(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(gcw, rng.random(n), side="right"), C - 1)

    fan_p = _decreasing(p.cluster_fanout)
    cnext = rng.integers(0, K, size=(K, p.cluster_fanout))
    succ_c = cnext[np.repeat(cluster_of, p.successors), rng.choice(p.cluster_fanout, C * p.successors, p=fan_p)]
    succ = from_cluster(succ_c).reshape(C, p.successors)
    succ_p = _decreasing(p.successors)

    def step(cur: np.ndarray) -> np.ndarray:
        n = len(cur)
        r = rng.random(n)
        nxt = global_items(n)
        s = r < p.p_successor
        nxt[s] = succ[cur[s], rng.choice(p.successors, int(s.sum()), p=succ_p)]
        c = (~s) & (r < p.p_successor + p.p_cluster)
        nc = cnext[cluster_of[cur[c]], rng.choice(p.cluster_fanout, int(c.sum()), p=fan_p)]
        nxt[c] = from_cluster(nc)
        return nxt

    step.first = global_items  # type: ignore[attr-defined]
    return step


def _walk(p: SyntheticParams, rng: np.random.Generator, lengths: np.ndarray, step: Any) -> tuple[np.ndarray, ...]:
    """Every user's sequence, all users one step at a time -> (items, timestamps), CSR order."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    order = np.argsort(-lengths, kind="stable")  # users active at step t are a prefix of `order`
    # number of users with length > t, for t = 0..max-1 (lengths[order] is descending)
    n_active = np.searchsorted(-lengths[order], -np.arange(lengths.max()), side="left")
    items = np.empty(offsets[-1], dtype=np.int64)
    times = np.empty(offsets[-1], dtype=np.int64)
    prev = step.first(p.n_users)
    t = rng.integers(946_684_800, 946_684_800 + 3 * 365 * 86_400, p.n_users)  # starts spread over 3 years
    pos0 = offsets[order]
    for i in range(int(lengths.max())):
        n = int(n_active[i])
        if i > 0:
            prev = step(prev[:n])
            t = t[:n] + rng.exponential(86_400.0, n).astype(np.int64) + 1  # gaps ~ 1 day, strictly increasing
        else:
            prev, t = prev[order], t[order]
        items[pos0[:n] + i] = prev
        times[pos0[:n] + i] = t
    return items, times


def _decreasing(n: int) -> np.ndarray:
    """Probabilities proportional to n, n-1, ..., 1 (the first choice is the most likely)."""
    w = np.arange(n, 0, -1, dtype=np.float64)
    return w / w.sum()
