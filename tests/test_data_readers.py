"""Every reader on small files written in the official format -> canonical (user, item, timestamp)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import polars as pl
import pytest

from seqrec.data import load_interactions
from seqrec.data.readers import FORMATS, infer_format, read
from seqrec.errors import DataError


def seqs(inter) -> dict:
    """raw user -> list of raw items in order."""
    return {
        inter.user_ids[u]: [inter.item_ids[i] for i in inter.items[inter.users == u]]
        for u in range(len(inter.user_ids))
    }


def load(path, fmt=None, **kw):
    return load_interactions(path, fmt=fmt, **kw)[1]


def test_ml1m_dat(tmp_path):
    p = tmp_path / "ratings.dat"
    # latin-1 file, '::' separated; user 1 has a timestamp tie (input order kept), user 2 is out of order
    p.write_bytes(
        b"1::1193::5::978300760\n1::661::3::978300760\n2::914::3::978302000\n2::3408::4::978300000\n"
    )
    inter = load(p)  # format inferred from the file name
    assert seqs(inter) == {1: [1193, 661], 2: [3408, 914]}
    assert inter.has_time and inter.timestamps.tolist() == [978300760, 978300760, 978300000, 978302000]


def test_movielens_csv_with_min_rating(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text(
        "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n1,32,1.0,1112484819\n"
    )
    assert seqs(load(p, "movielens-csv")) == {1: [29, 32, 2]}
    assert seqs(load(p, "movielens-csv", min_rating=3.0)) == {1: [29, 2]}


def test_ml100k_u_data(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n")
    assert seqs(load(p)) == {186: [302], 196: [377, 242]}


def test_amazon_csv_string_ids(tmp_path):
    p = tmp_path / "ratings_Beauty.csv"
    p.write_text(
        "A39HTATAQ9V7YF,0205616461,5.0,1369699200\nA3JM6GV9MNOF9X,0558925278,3.0,1355443200\n"
        "A39HTATAQ9V7YF,0558925278,4.0,1355443200\n"
    )
    inter = load(p, "amazon-csv")
    assert seqs(inter) == {"A39HTATAQ9V7YF": ["0558925278", "0205616461"], "A3JM6GV9MNOF9X": ["0558925278"]}
    assert inter.item_ids[0] == "<pad>" and len(inter.item_ids) == 3


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_json_lines(tmp_path, gz):
    rows = [
        {"reviewerID": "U1", "asin": "B2", "reviewText": "très bien", "overall": 5.0, "unixReviewTime": 20},
        {"reviewerID": "U1", "asin": "B1", "overall": 4.0, "unixReviewTime": 10, "helpful": [0, 0]},
        {"reviewerID": "U2", "asin": "B1", "overall": 1.0, "unixReviewTime": 30},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    p = tmp_path / ("reviews_Beauty_5.json.gz" if gz else "reviews.json")
    p.write_bytes(gzip.compress(text) if gz else text)
    inter = load(p)
    assert seqs(inter) == {"U1": ["B1", "B2"], "U2": ["B1"]}
    assert seqs(load(p, min_rating=4.5)) == {"U1": ["B2"]}


def test_recbole_inter(tmp_path):
    p = tmp_path / "ml-100k.inter"
    p.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t242\t3\t881250949\n196\t302\t3\t881250000\n22\t377\t1\t878887116\n"
    )
    inter = load(p)
    assert seqs(inter) == {"196": ["302", "242"], "22": ["377"]} and inter.has_time
    q = tmp_path / "x.inter"  # no timestamp column: file order
    q.write_text("item_id:token\tuser_id:token\nb\tu\na\tu\n")
    inter = load(q)
    assert seqs(inter) == {"u": ["b", "a"]} and not inter.has_time


def test_sasrec_lines_keep_line_order_and_ids(tmp_path):
    p = tmp_path / "ml-1m.txt"
    p.write_text("1 3\n1 1\n1 2\n2 2\n2 3\n")
    inter = load(p, "sasrec")
    assert seqs(inter) == {1: [3, 1, 2], 2: [2, 3]} and not inter.has_time
    # contiguous 1-based raw item ids map to themselves (comparable with other SASRec code)
    assert inter.item_ids[1:].tolist() == [1, 2, 3] and inter.items.tolist() == [3, 1, 2, 2, 3]


def test_s3rec_lines(tmp_path):
    p = tmp_path / "Beauty.txt"
    p.write_text("1 1 2 3 4 5\n2 3 7\n")
    assert seqs(load(p, "s3rec")) == {1: [1, 2, 3, 4, 5], 2: [3, 7]}


def test_generic_csv_columns_and_dates(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text("uid;sku;when;stars\na;x;2020-01-02;5\na;y;2020-01-01;2\nb;x;2019-12-31;4\n")
    inter = load(
        p, "csv", user_col="uid", item_col="sku", time_col="when", rating_col="stars", sep=";", min_rating=3
    )
    assert seqs(inter) == {"a": ["x"], "b": ["x"]}
    no_time = load(p, "csv", user_col="uid", item_col="sku", time_col=None, sep=";")
    assert seqs(no_time) == {"a": ["x", "y"], "b": ["x"]} and not no_time.has_time


def test_parquet(tmp_path):
    p = tmp_path / "events.parquet"
    pl.DataFrame({"u": [5, 5, 6], "i": [9, 8, 9], "ts": [2, 1, 1]}).write_parquet(p)
    inter = load(p, user_col="u", item_col="i", time_col="ts")
    assert seqs(inter) == {5: [8, 9], 6: [9]}


def test_infer_format_and_unknown(tmp_path):
    from pathlib import Path

    assert infer_format(Path("x/ratings.dat")) == "ml-1m-dat"
    assert infer_format(Path("a.inter")) == "recbole"
    with pytest.raises(DataError, match="pass --format"):
        infer_format(Path("data.txt"))
    p = tmp_path / "a.txt"
    p.write_text("1 2\n")
    with pytest.raises(DataError, match="unknown format 'nope'"):
        read(p, "nope")
    assert set(FORMATS) == {
        "ml-1m-dat",
        "movielens-csv",
        "ml-100k",
        "amazon-csv",
        "amazon-json",
        "recbole",
        "sasrec",
        "s3rec",
        "csv",
        "parquet",
    }


@pytest.mark.parametrize("fmt", ["sasrec", "s3rec", "ml-100k", "amazon-csv", "csv", "amazon-json", "recbole"])
def test_invalid_utf8_is_refused(tmp_path, fmt):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"user,item,timestamp\n\xff\xfe 1 2\n")
    with pytest.raises(DataError, match="bad.txt"):
        load(p, fmt)


def test_raw_id_round_trip(tmp_path):
    p = tmp_path / "r.csv"
    rng = np.random.default_rng(0)
    users, items = rng.integers(100, 120, 200), rng.integers(1000, 1300, 200)
    pl.DataFrame({"user": users, "item": items, "timestamp": np.arange(200)}).write_csv(p)
    inter = load(p, "csv")
    # internal -> raw gives back exactly the input pairs, ordered by (user, time)
    order = np.lexsort((np.arange(200), users))
    assert inter.user_ids[inter.users].tolist() == users[order].tolist()
    assert inter.item_ids[inter.items].tolist() == items[order].tolist()
    # raw -> internal: ids are contiguous, items start at 1 (0 = padding)
    assert inter.items.min() == 1 and inter.items.max() == len(inter.item_ids) - 1
    assert sorted(set(inter.users.tolist())) == list(range(len(inter.user_ids)))


def test_generic_defaults_detect_rating_and_missing_time(tmp_path):
    # a DataFrame-like table with user, item, rating and no timestamp: row order is time order
    p = tmp_path / "t.parquet"
    pl.DataFrame({"user": [1, 1, 2], "item": [5, 4, 4], "rating": [1.0, 5.0, 5.0]}).write_parquet(p)
    inter = load(p, "parquet")
    assert seqs(inter) == {1: [5, 4], 2: [4]} and not inter.has_time
    assert seqs(load(p, "parquet", min_rating=3)) == {1: [4], 2: [4]}
