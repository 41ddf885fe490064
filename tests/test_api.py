"""Python API: fit/evaluate/recommend/save/load, config round-trip, DataFrame input."""

import numpy as np
import polars as pl
import pytest

from seqrec import SeqRec
from seqrec.errors import SeqrecError, SeqrecWarning


@pytest.fixture
def fitted(tiny_overrides):
    return SeqRec(model="sasrec", loss="ce", overrides=tiny_overrides).fit(log=lambda s: None)


def test_fit_returns_self_and_evaluates(fitted):
    m = fitted.evaluate()
    assert 0.0 <= m["ndcg@10"] <= m["hr@10"] <= 1.0
    assert m["hr@10"] <= m["hr@20"] <= m["hr@50"]
    assert fitted.fit_info_["epochs"] == 2


def test_recommend_shape_raw_ids_and_filter_seen(fitted):
    d = fitted.data_
    users = d.user_ids[:5].tolist()
    recs = fitted.recommend(users=users, k=7)
    assert recs.columns == ["user", "item", "score", "rank"]
    assert recs.height == 5 * 7
    for u, g in recs.group_by("user"):
        idx = d.user_ids.tolist().index(u[0])
        seen = set(d.item_ids[d.full.row(idx)].tolist())
        assert not seen & set(g["item"].to_list())
        assert g["rank"].to_list() == list(range(1, 8))
        assert g["score"].is_sorted(descending=True)
    keep = fitted.recommend(users=users[:1], k=d.n_items, filter_seen=False)
    assert keep.height == d.n_items


def test_recommend_histories_for_new_users_allow_and_deny(fitted):
    d = fitted.data_
    items = d.item_ids[1:].tolist()
    with pytest.warns(SeqrecWarning, match="1 history item of 1 user not in the trained catalog: ignored"):
        recs = fitted.recommend(histories={"new": items[:3], "other": items[3:5] + ["unknown-item"]}, k=5)
    assert set(recs["user"].to_list()) == {"new", "other"}
    assert not set(items[:3]) & set(recs.filter(pl.col("user") == "new")["item"].to_list())
    allow = items[10:14]
    r2 = fitted.recommend(users=d.user_ids[:3].tolist(), k=10, items=allow, exclude_items=allow[:1], filter_seen=False)
    assert set(r2["item"].to_list()) <= set(allow[1:])
    assert r2.group_by("user").len()["len"].max() == 3  # fewer than k eligible: short lists, no padding


def test_recommend_errors(fitted):
    with pytest.raises(SeqrecError, match="unknown user"):
        fitted.recommend(users=["nobody"], k=3)
    with pytest.raises(SeqrecError, match="k must be"):
        fitted.recommend(k=0)
    with pytest.raises(SeqrecError, match="not fitted"):
        SeqRec().recommend(k=3)


def test_save_load_gives_identical_recommendations(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    again = SeqRec.load(tmp_path / "m")
    a = fitted.recommend(k=10)
    b = again.recommend(k=10)
    assert a.equals(b)
    assert again.get_config() == fitted.get_config()
    assert again.evaluate() == fitted.evaluate()


def test_config_round_trip(fitted):
    import yaml

    clone = SeqRec.from_config(fitted.get_config())
    assert clone.get_config() == fitted.get_config()
    text = yaml.safe_dump(fitted.get_config(), sort_keys=False)  # what config.yaml holds
    assert yaml.safe_dump(SeqRec.from_config(yaml.safe_load(text)).get_config(), sort_keys=False) == text
    assert SeqRec.from_config(fitted.cfg_).get_config() == fitted.get_config()  # a typed Config too
    # a clone is a complete estimator: it fits and evaluates like the original
    assert clone.fit(log=lambda s: None).evaluate() == pytest.approx(fitted.evaluate())


def test_sections_and_dotted_overrides_agree():
    a = SeqRec(train={"lr": 0.01}, model={"name": "sasrec", "d": 32})
    b = SeqRec(overrides={"train.lr": 0.01, "model.d": 32})
    assert a.get_config() == b.get_config()


def test_dataframe_input(tiny_overrides):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{(u + t) % 15}", t) for u in range(40) for t in range(8)]
    df = pl.DataFrame(rows, schema=["user", "item", "timestamp"], orient="row")
    over = {k: v for k, v in tiny_overrides.items() if k != "data.options"}
    rec = SeqRec(overrides=over).fit(df, log=lambda s: None)
    out = rec.recommend(users=["u1"], k=3)
    assert out["item"].str.starts_with("i").all()
    assert rng is not None


def test_pop_model_ranks_by_popularity(tiny_overrides):
    rec = SeqRec(model="pop", overrides={k: v for k, v in tiny_overrides.items() if not k.startswith("model.")})
    rec.fit(log=lambda s: None)
    d = rec.data_
    top = rec.recommend(users=d.user_ids[:1].tolist(), k=3, filter_seen=False)["item"].to_list()
    counts = d.item_pop[1:]
    best = d.item_ids[1 + np.argsort(-counts, kind="stable")[:3]].tolist()
    assert top == best


def test_evaluate_with_approximate_backend_reports_its_recall(fitted):
    exact = fitted.evaluate()
    approx = fitted.evaluate(retrieval="faiss-hnsw")
    assert 0.0 <= approx["retrieval_recall@50"] <= 1.0 and approx["retrieval_sample"] > 0
    assert "retrieval_recall@50" not in exact  # exact search needs no approximation report
    flat = fitted.evaluate(retrieval="faiss-flat")
    assert flat["ndcg@10"] == pytest.approx(exact["ndcg@10"], abs=1e-9)


def test_set_config_changes_evaluation_only(fitted):
    from seqrec.errors import ConfigError

    with pytest.raises(ConfigError, match="only eval"):
        fitted.set_config({"train.lr": 0.1})
    before = fitted.get_config()
    try:
        assert fitted.set_config({"eval.ks": [10]}) is fitted and fitted.cfg_.eval.ks == [10]
        assert set(fitted.evaluate()) >= {"ndcg@10"} and "ndcg@20" not in fitted.evaluate()
    finally:
        fitted.set_config({"eval.ks": before["eval"]["ks"]})
