"""Preprocessing: stable order, de-dup, k-core fixpoint, contiguous ids."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.data.preprocess import Preprocessing, kcore, preprocess
from seqrec.errors import ConfigError, DataError


def frame(users, items, ts, rating=None):
    d = {"user": users, "item": items, "timestamp": ts}
    if rating is not None:
        d["rating"] = rating
    return pl.DataFrame(d)


def test_ties_keep_input_order():
    # all timestamps equal: each user's sequence is exactly the input order of its rows
    users = [2, 1, 2, 1, 2, 1]
    items = [30, 10, 10, 30, 20, 20]
    inter = preprocess(frame(users, items, [5] * 6), Preprocessing())
    assert inter.item_ids[inter.items].tolist() == [10, 30, 20, 30, 10, 20]
    assert inter.user_ids[inter.users].tolist() == [1, 1, 1, 2, 2, 2]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=60))
def test_order_is_time_then_input(rows):
    users, items, ts = map(list, zip(*rows, strict=False))
    inter = preprocess(frame(users, items, ts), Preprocessing())
    want = sorted(range(len(rows)), key=lambda r: (users[r], ts[r], r))  # Python's sort is stable
    assert inter.item_ids[inter.items].tolist() == [items[r] for r in want]
    assert inter.timestamps.tolist() == [ts[r] for r in want]


def test_dedup_keeps_first_in_time():
    inter = preprocess(frame([1, 1, 1, 1], [7, 8, 7, 9], [3, 1, 2, 4]), Preprocessing(dedup=True))
    assert inter.item_ids[inter.items].tolist() == [8, 7, 9]
    assert inter.timestamps.tolist() == [1, 2, 4]  # the repeated 7 kept at its first (t=2), not t=3


def naive_kcore(pairs, ku, ki):
    pairs = list(pairs)
    while True:
        cu, ci = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        kept = [(u, i) for u, i in pairs if cu[u] >= ku and ci[i] >= ki]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=150),
    st.integers(0, 4),
    st.integers(0, 4),
)
def test_kcore_reaches_the_fixpoint(pairs, ku, ki):
    df = pl.DataFrame(
        {"user": [u for u, _ in pairs], "item": [i for _, i in pairs]},
        schema={"user": pl.Int64, "item": pl.Int64},
    )
    out = kcore(df, ku, ki)
    got = list(zip(out["user"].to_list(), out["item"].to_list(), strict=False))
    assert got == naive_kcore(pairs, ku, ki)  # same rows, same order
    if got:  # fixpoint: every remaining user and item meets its threshold
        assert min(Counter(u for u, _ in got).values()) >= ku
        assert min(Counter(i for _, i in got).values()) >= ki


def test_kcore_once_is_a_single_pass():
    users3 = [1, 1, 2, 2, 3]
    items3 = [5, 6, 5, 7, 7]
    once = preprocess(
        frame(users3, items3, list(range(5))), Preprocessing(min_user=2, min_item=2, kcore="once")
    )
    fix = kcore(frame(users3, items3, list(range(5))), 2, 2)
    assert once.item_ids[once.items].tolist() == [5, 5, 7]  # single pass: item 6 and user 3 removed
    assert fix.height == 0  # fixpoint cascade: then user 1 and item 7 fall below 2, then user 2


def test_contiguous_ids_and_padding():
    inter = preprocess(frame(["b", "a", "b"], ["z", "x", "y"], [1, 2, 3]), Preprocessing())
    assert inter.user_ids.tolist() == ["a", "b"] and inter.item_ids.tolist() == ["<pad>", "x", "y", "z"]
    assert inter.users.tolist() == [0, 1, 1] and inter.items.tolist() == [1, 3, 2]


def test_empty_and_errors():
    with pytest.raises(DataError, match="leaves no interactions"):
        preprocess(frame([1, 2], [1, 2], [1, 2]), Preprocessing(min_user=2), source="x.csv")
    with pytest.raises(DataError, match="needs a rating column"):
        preprocess(frame([1], [1], [1]), Preprocessing(min_rating=4))
    with pytest.raises(DataError, match="no interactions"):
        preprocess(frame([1], [1], [1], [1.0]), Preprocessing(min_rating=4))
    with pytest.raises(DataError, match="unparsable timestamp"):
        preprocess(frame([1, 1], [1, 2], [1, None]), Preprocessing(), source="x.csv")
    with pytest.raises(ConfigError, match="unknown preprocessing key"):
        Preprocessing.from_dict({"min_users": 5})
    with pytest.raises(ConfigError):
        Preprocessing(min_user=-1)


def test_numpy_outputs_are_int64():
    inter = preprocess(frame([1, 1], [3, 4], [1, 2]), Preprocessing())
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
