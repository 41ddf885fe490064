"""Prepared directory: exact round trip, atomic writes, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.data import load_dataset, save_prepared
from seqrec.data import prepared as prepared_mod
from seqrec.errors import ConfigError, DataError

SMALL = {"n_users": 60, "n_items": 40, "n_clusters": 4, "mean_len": 8}


def same(a, b):
    assert a.name == b.name and a.meta["fingerprint"] == b.meta["fingerprint"]
    for s, t in (
        (a.train, b.train),
        (a.full, b.full),
        (a.valid.history, b.valid.history),
        (a.test.history, b.test.history),
    ):
        assert np.array_equal(s.offsets, t.offsets) and np.array_equal(s.items, t.items)
    for x, y in (
        (a.valid.users, b.valid.users),
        (a.valid.targets, b.valid.targets),
        (a.test.users, b.test.users),
        (a.test.targets, b.test.targets),
        (a.user_ids, b.user_ids),
        (a.item_ids, b.item_ids),
        (a.item_pop, b.item_pop),
        (a.timestamps, b.timestamps),
    ):
        assert np.array_equal(x, y)
    assert a.meta["stats"] == b.meta["stats"] and a.meta["split"] == b.meta["split"]


@pytest.mark.parametrize("how", ["leave_one_out", "global_temporal"])
def test_round_trip(tmp_path, how):
    d = load_dataset("synthetic", split=how, synthetic=SMALL)
    out = save_prepared(d, tmp_path / "prep")
    assert sorted(p.name for p in out.iterdir()) == [
        "interactions.parquet",
        "items.parquet",
        "meta.json",
        "stats.json",
        "users.parquet",
    ]
    same(d, load_dataset(out))
    assert [p.name for p in tmp_path.iterdir()] == ["prep"]  # no temp dirs left


def test_string_ids_round_trip(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("user,item,timestamp\nb,x,1\nb,y,2\nb,z,3\na,y,1\n")
    d = load_dataset(p, fmt="csv")
    same(d, load_dataset(save_prepared(d, tmp_path / "prep")))


def test_roles_rebuilt_when_missing(tmp_path):
    d = load_dataset("synthetic", synthetic=SMALL)
    want = prepared_mod.roles_of(d)
    d.roles = None
    assert np.array_equal(prepared_mod.roles_of(d), want)


def test_overwrite_and_refusals(tmp_path):
    d = load_dataset("synthetic", synthetic=SMALL)
    out = tmp_path / "prep"
    save_prepared(d, out)
    save_prepared(d, out)  # replacing a prepared dir is fine
    same(d, load_dataset(out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        save_prepared(d, other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot write"):
        save_prepared(d, blocker / "sub")
    with pytest.raises(ConfigError, match="already preprocessed"):
        load_dataset(out, min_user=5)


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    d = load_dataset("synthetic", synthetic=SMALL)

    def boom(data, tmp):
        (tmp / "interactions.parquet").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepared_mod, "_write", boom)
    with pytest.raises(DataError, match="No space left"):
        save_prepared(d, tmp_path / "prep")
    assert list(tmp_path.iterdir()) == []


def test_tampered_dir_is_refused(tmp_path):
    import polars as pl

    out = save_prepared(load_dataset("synthetic", synthetic=SMALL), tmp_path / "prep")
    items = pl.read_parquet(out / "items.parquet")
    items.with_columns(pl.col("raw").reverse()).write_parquet(out / "items.parquet")
    with pytest.raises(DataError, match="fingerprint"):
        load_dataset(out)
    (out / "meta.json").unlink()
    with pytest.raises(DataError):
        load_dataset(out)
