"""Synthetic generator: seeded, sized by parameters, with a planted sequential signal."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.data import load_dataset
from seqrec.data.synthetic import PRESETS, generate, params_for
from seqrec.errors import ConfigError


def test_seeded_and_sized():
    a = generate(n_users=300, n_items=120, n_clusters=6, seed=3)
    b = generate(n_users=300, n_items=120, n_clusters=6, seed=3)
    c = generate(n_users=300, n_items=120, n_clusters=6, seed=4)
    assert a.equals(b) and not a.equals(c)
    assert a.columns == ["user", "item", "timestamp"]
    assert a["user"].n_unique() == 300 and a["item"].max() <= 120 and a["item"].min() >= 1
    # no repeated (user, item) with dedup, and time strictly increases within a user
    assert a.select(["user", "item"]).is_duplicated().sum() == 0
    assert (a["timestamp"].diff().filter(a["user"].diff() == 0) > 0).all()


def test_presets_shapes():
    p = params_for("ml-20m")
    assert (p.n_users, p.n_items) == (138_493, 26_744)
    assert 19e6 < p.n_users * p.mean_len < 21e6
    assert params_for("million").n_items == 1_950_000  # ~1.0M of them occur
    small = generate(params_for("ml-20m", n_users=500, seed=1))  # same generator, scaled down
    assert small["user"].n_unique() == 500 and small.height >= 500 * 20
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        params_for("huge")
    with pytest.raises(ConfigError, match="unknown synthetic parameter"):
        params_for("default", users=3)
    with pytest.raises(ConfigError):
        params_for("default", p_successor=0.9, p_cluster=0.5)
    assert set(PRESETS) == {"default", "ml-20m", "million"}


def ndcg10(scores: np.ndarray, hist, target) -> float:
    s = scores.astype(np.float64).copy()
    s[0] = -np.inf
    s[hist] = -np.inf
    rank = int((s > s[target]).sum())
    return 1.0 / np.log2(rank + 2) if rank < 10 else 0.0


def test_previous_item_predicts_next_much_better_than_popularity():
    d = load_dataset("synthetic")
    assert 1_500 <= d.n_users <= 2_500 and 500 <= d.n_items <= 1_000
    assert 25 <= d.meta["stats"]["length"]["mean"] <= 35
    C = d.n_items + 1
    # first-order transition counts from the training rows only (vectorised)
    tr = d.train
    same_user = np.repeat(np.arange(len(tr)), tr.lengths)
    nxt = np.flatnonzero(same_user[1:] == same_user[:-1])
    T = np.zeros((C, C))
    np.add.at(T, (tr.items[nxt], tr.items[nxt + 1]), 1.0)
    pop = d.item_pop.astype(np.float64)
    h = d.test.history
    last = h.items[h.offsets[1:] - 1]
    rows = range(0, len(d.test), 4)
    markov = np.mean([ndcg10(T[last[k]] + 1e-6 * pop, h.row(k), d.test.targets[k]) for k in rows])
    popular = np.mean([ndcg10(pop, h.row(k), d.test.targets[k]) for k in rows])
    assert markov > 1.5 * popular, (markov, popular)
