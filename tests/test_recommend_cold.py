"""recommend for cold and unknown users (issue #18): the popularity fallback with a warning, the
``unknown`` policy, repeated ids answered once; and the same through ``seqrec recommend``."""

import json
import subprocess
import sys
import warnings

import numpy as np
import polars as pl
import pytest
from conftest import TINY

from seqrec import SeqRec
from seqrec.errors import SeqrecError, SeqrecWarning

# tests/conftest.py's tiny_overrides, fitted once for the module (that fixture is per test)
OVERRIDES = {"data.options": TINY, "model.d": 16, "model.max_len": 20, "model.n_blocks": 1,
             "train.epochs": 2, "train.batch_size": 32, "train.max_time_s": None, "train.num_threads": 1}
GHOSTS = [99999991, 99999992]  # item ids outside the catalog


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rec = SeqRec(model="sasrec", loss="ce", overrides=OVERRIDES).fit(log=lambda s: None)
    rec.save(tmp_path_factory.mktemp("cold") / "run")
    return rec


def _popular(rec, k, drop=()):
    """The k most popular raw item ids (ties by lower id) minus ``drop``, and their counts."""
    pop = rec.data_.item_pop[1:]
    order = [i for i in np.argsort(-pop, kind="stable") if rec.data_.item_ids[i + 1] not in set(drop)][:k]
    return rec.data_.item_ids[np.array(order) + 1].tolist(), pop[order].astype(np.float32).tolist()


def _rows(df, user):
    return df.filter(pl.col("user") == user).sort("rank")


def _silent(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeqrecWarning)  # the reference call must not warn
        return fn(*args, **kw)


@pytest.mark.parametrize("history", [[], GHOSTS], ids=["empty", "unknown-items-only"])
def test_no_known_item_gets_popularity_with_a_warning(run, history):
    with pytest.warns(SeqrecWarning, match="1 of 1 users have no known item in their history: recommended by pop"):
        out = run.recommend(histories={"cold": history}, k=5)
    items, counts = _popular(run, 5)
    assert out["item"].to_list() == items and out["rank"].to_list() == [1, 2, 3, 4, 5]
    assert out["score"].to_list() == counts and min(counts) > 0  # training counts, never 0.0 fillers
    assert items != run.data_.item_ids[1:6].tolist()  # not the first ids


def test_popularity_respects_allow_and_deny(run):
    items, _ = _popular(run, 8)
    with pytest.warns(SeqrecWarning, match="recommended by popularity"):
        out = run.recommend(histories={"cold": []}, k=3, items=items[2:8], exclude_items=items[3:4])
    assert out["item"].to_list() == [items[2], items[4], items[5]]


def test_mixed_batch_keeps_model_recommendations(run):
    d = run.data_
    warm = {"a": d.item_ids[1:5].tolist(), "b": d.item_ids[[7, 3]].tolist()}
    alone = _silent(run.recommend, histories=warm, k=6)
    with pytest.warns(SeqrecWarning, match="2 of 4 users have no known item"):
        mixed = run.recommend(histories={"x": [], "a": warm["a"], "y": GHOSTS, "b": warm["b"]}, k=6)
    assert mixed["user"].unique(maintain_order=True).to_list() == ["x", "a", "y", "b"]
    for u in ("a", "b"):
        assert _rows(mixed, u)["item"].to_list() == _rows(alone, u)["item"].to_list()
        np.testing.assert_allclose(_rows(mixed, u)["score"], _rows(alone, u)["score"], rtol=1e-5)
    assert _rows(mixed, "x")["item"].to_list() == _popular(run, 6)[0] == _rows(mixed, "y")["item"].to_list()


def test_partly_unknown_history_is_encoded_and_warned(run):
    known = run.data_.item_ids[1:4].tolist()
    alone = _silent(run.recommend, histories={"u": known}, k=5)
    with pytest.warns(SeqrecWarning, match="2 history items of 1 user not in the trained catalog"):
        out = run.recommend(histories={"u": known + GHOSTS}, k=5)
    assert out.equals(alone)


def test_unknown_users_error_names_them(run):
    ids = run.data_.user_ids[:2].tolist() + ["u9", "u10", "u77"]
    with pytest.raises(SeqrecError, match=r"^3 unknown users: 'u9', 'u10', 'u77'; pass --unknown skip\|popular"):
        run.recommend(users=ids, k=3)
    many = [f"n{i}" for i in range(8)]
    with pytest.raises(SeqrecError, match=r"8 unknown users: 'n0', 'n1', 'n2', 'n3', 'n4', …;"):
        run.recommend(users=many, k=3)
    with pytest.raises(SeqrecError, match="unknown must be one of error, skip, popular"):
        run.recommend(users=ids[:1], k=3, unknown="ignore")


def test_unknown_skip_and_popular(run):
    known = run.data_.user_ids[:3].tolist()
    alone = _silent(run.recommend, users=known, k=4)
    with pytest.warns(SeqrecWarning, match=r"2 of 5 users are unknown, left out: 'ghost', 'nobody'"):
        skipped = run.recommend(users=[known[0], "ghost", *known[1:], "nobody"], k=4, unknown="skip")
    assert skipped.equals(alone)
    with pytest.warns(SeqrecWarning, match="1 of 4 users are unknown, recommended by popularity: 'ghost'"):
        pop = run.recommend(users=[known[0], "ghost", *known[1:]], k=4, unknown="popular")
    assert pop["user"].unique(maintain_order=True).to_list() == [str(known[0]), "ghost", *map(str, known[1:])]
    assert _rows(pop, "ghost")["item"].to_list() == _popular(run, 4)[0]
    assert pop.filter(pl.col("user") != "ghost")["item"].to_list() == alone["item"].to_list()


def test_all_unknown_skipped_gives_an_empty_frame(run):
    with pytest.warns(SeqrecWarning, match="left out"):
        out = run.recommend(users=["ghost"], k=4, unknown="skip")
    assert out.height == 0 and out.columns == ["user", "item", "score", "rank"]


def test_repeated_users_answered_once(run):
    u = run.data_.user_ids[:2].tolist()
    alone = _silent(run.recommend, users=u, k=3)
    with pytest.warns(SeqrecWarning, match="2 repeated user ids: each user answered once"):
        out = run.recommend(users=[u[0], u[1], u[0], u[0]], k=3)
    assert out.equals(alone)
    frame = pl.DataFrame({"user": ["p", "q", "p"], "item": run.data_.item_ids[[1, 2, 3]].tolist()})
    grouped = _silent(run.recommend, histories=frame, k=3)  # a frame has a row per interaction: one answer
    joined = _silent(run.recommend, histories={"p": frame["item"].to_list()[::2], "q": frame["item"][1:2].to_list()},
                     k=3)
    assert grouped.equals(joined)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "seqrec.cli", *args], capture_output=True, text=True)


def test_cli_histories_cold_users_get_popularity(run, tmp_path):
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps({"1": [], "2": GHOSTS}))
    r = _cli("recommend", str(run.path_), "--histories", str(hist), "--k", "10", "--out", str(tmp_path / "h.csv"))
    assert r.returncode == 0, r.stderr
    assert "warning: 2 of 2 users have no known item" in r.stderr and "Traceback" not in r.stderr
    out = pl.read_csv(tmp_path / "h.csv", schema_overrides={"user": pl.String})
    one = _rows(out, "1")
    assert one.height == 10 and (one["score"] > 0).all()
    assert one["item"].to_list() == _popular(run, 10)[0]


def test_cli_users_unknown_policy(run, tmp_path):
    users = tmp_path / "u.txt"
    users.write_text("\n".join(map(str, [*run.data_.user_ids[:2].tolist(), 99999999])) + "\n")
    args = ["recommend", str(run.path_), "--users", str(users), "--k", "3", "--out", str(tmp_path / "u.csv")]
    r = _cli(*args)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: 1 unknown user: 99999999; pass --unknown skip|popular (API: unknown='skip'|'popular'), "
        "or their histories"]
    r = _cli(*args, "--unknown", "skip")
    assert r.returncode == 0 and "warning: 1 of 3 users are unknown, left out: 99999999" in r.stderr
    assert pl.read_csv(tmp_path / "u.csv")["user"].n_unique() == 2
    r = _cli(*args, "--unknown", "popular")
    assert r.returncode == 0 and "recommended by popularity" in r.stderr
    assert pl.read_csv(tmp_path / "u.csv")["user"].n_unique() == 3


def test_malformed_inputs_are_one_line_errors(run):
    with pytest.raises(SeqrecError, match="users must be a list of raw user ids"):
        run.recommend(users="u1", k=3)
    with pytest.raises(SeqrecError, match=r"histories\['a'\] must be a list of raw item ids, got a str"):
        run.recommend(histories={"a": "123"}, k=3)
    with pytest.raises(SeqrecError, match="histories need columns user, item"):
        run.recommend(histories=pl.DataFrame({"user": ["a"]}), k=3)
