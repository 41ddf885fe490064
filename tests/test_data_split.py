"""Splits are leak-free by construction (hypothesis property tests)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.data.preprocess import Preprocessing, preprocess
from seqrec.data.split import split
from seqrec.errors import DataError

rows = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 50)), min_size=1, max_size=80)


def make(rs, has_time=True):
    u, i, t = map(list, zip(*rs, strict=False))
    return preprocess(
        pl.DataFrame({"user": u, "item": i, "timestamp": t}), Preprocessing(), has_time=has_time
    )


def check_common(d):
    U = d.n_users
    assert len(d.train) == U and len(d.full) == U
    assert d.item_pop.tolist() == np.bincount(d.train.items, minlength=d.n_items + 1).tolist()
    for es in (d.valid, d.test):
        assert len(np.unique(es.users)) == len(es.users)  # at most one row per user
        for k, u in enumerate(es.users):
            full, hist = d.full.row(u), es.history.row(k)
            n = len(hist)
            # history is exactly the user's sequence before the target; the target follows it
            assert n >= 1 and hist.tolist() == full[:n].tolist() and es.targets[k] == full[n]
            # nothing from the target on is in the user's training sequence
            assert len(d.train.row(u)) <= n


@settings(max_examples=60, deadline=None)
@given(rows)
def test_leave_one_out(rs):
    d = split("t", make(rs), "leave_one_out")
    check_common(d)
    n = d.full.lengths
    assert sorted(d.valid.users.tolist()) == sorted(d.test.users.tolist()) == np.flatnonzero(n >= 3).tolist()
    for k, u in enumerate(d.test.users):
        full = d.full.row(u)
        assert d.test.targets[k] == full[-1] and d.test.history.row(k).tolist() == full[:-1].tolist()
        assert d.train.row(u).tolist() == full[:-2].tolist()  # train = all but the last two
    for k, u in enumerate(d.valid.users):
        assert d.valid.history.row(k).tolist() == d.train.row(u).tolist()  # valid history = train row
        assert d.valid.targets[k] == d.full.row(u)[-2]
    short = np.flatnonzero(n < 3)  # too short to evaluate: kept whole in training
    for u in short:
        assert d.train.row(u).tolist() == d.full.row(u).tolist()


@settings(max_examples=60, deadline=None)
@given(rows, st.floats(0.05, 0.95))
def test_global_temporal(rs, q):
    inter = make(rs)
    d = split("t", inter, "global_temporal", q=q)
    check_common(d)
    cut = d.meta["cut"]
    ts = inter.timestamps
    off = d.full.offsets
    test_users = {u for u in range(d.n_users) if ts[off[u] : off[u + 1]].max() >= cut}
    # test users are never trained on; everyone else trains on their whole (pre-cut) sequence
    for u in range(d.n_users):
        if u in test_users:
            assert len(d.train.row(u)) == 0
        else:
            assert d.train.row(u).tolist() == d.full.row(u).tolist()
            assert ts[off[u] : off[u + 1]].max() < cut
    assert set(d.test.users.tolist()) <= test_users and set(d.valid.users.tolist()) <= set(
        d.test.users.tolist()
    )
    for k, u in enumerate(d.test.users):
        assert d.test.history.lengths[k] == d.full.lengths[u] - 1  # last one scored, the rest history
    for k, u in enumerate(d.valid.users):
        assert d.valid.history.lengths[k] == d.full.lengths[u] - 2


def test_global_temporal_needs_time():
    with pytest.raises(DataError, match="needs real timestamps"):
        split("t", make([(1, 1, 0), (1, 2, 1)], has_time=False), "global_temporal")


def test_meta_fingerprint_changes_with_data():
    a = split("t", make([(1, 1, 0), (1, 2, 1), (1, 3, 2)]))
    b = split("t", make([(1, 1, 0), (1, 2, 1), (1, 4, 2)]))
    c = split("t", make([(1, 1, 0), (1, 2, 1), (1, 3, 2), (2, 3, 2)]))
    assert len({a.meta["fingerprint"], b.meta["fingerprint"], c.meta["fingerprint"]}) == 3
    assert a.meta["fingerprint"] == split("t", make([(1, 1, 0), (1, 2, 1), (1, 3, 2)])).meta["fingerprint"]
    assert a.meta["stats"]["users"] == 1 and a.meta["stats"]["interactions"] == 3
