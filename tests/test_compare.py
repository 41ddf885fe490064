"""Paired comparison of two models: per-user metrics, bootstrap intervals, t-test, API and CLI."""

import json

import numpy as np
import pytest

from seqrec.api import SeqRec
from seqrec.cli import main
from seqrec.errors import SeqrecError
from seqrec.evaluation import compare_ranks, per_user, rank_metrics


def _ranks(rng, m, p_hit, k=50):
    return np.where(rng.random(m) < p_hit, rng.integers(0, k, m), -1)


def test_per_user_means_are_rank_metrics():
    rng = np.random.default_rng(0)
    ranks = _ranks(rng, 500, 0.6)
    agg = rank_metrics(ranks, [1, 10, 20])
    for m in ("ndcg@10", "hr@10", "mrr@20", "hr@1"):
        assert per_user(ranks, m).mean() == pytest.approx(agg[m], abs=1e-12)
    with pytest.raises(ValueError, match="ndcg@10"):
        per_user(ranks, "recall@x")


def test_identical_models_have_ratio_one_and_no_evidence():
    ranks = _ranks(np.random.default_rng(1), 300, 0.5)
    (r,) = compare_ranks(ranks, ranks.copy(), ["ndcg@10"], resamples=200)
    assert r["ratio"] == r["ratio_lo"] == r["ratio_hi"] == 1.0
    assert r["diff_lo"] == r["diff_hi"] == 0.0 and r["p_value"] == 1.0


def test_real_gap_is_detected_and_noise_is_not():
    rng = np.random.default_rng(2)
    base = _ranks(rng, 4000, 0.5, k=10)
    better = np.where((base < 0) & (rng.random(4000) < 0.3), 0, base)  # some misses become rank 0
    r = compare_ranks(base, better, ["hr@10", "ndcg@10"], resamples=500)
    for rec in r:
        assert rec["ratio_lo"] > 1.0 and rec["p_value"] < 1e-6
        assert rec["ratio_lo"] <= rec["ratio"] <= rec["ratio_hi"] and rec["diff_lo"] <= rec["diff"] <= rec["diff_hi"]
    # two independent draws of the same model quality: the interval covers 1 in most trials
    covered = 0
    for s in range(20):
        g = np.random.default_rng(100 + s)
        a, b = _ranks(g, 2000, 0.5, k=10), _ranks(g, 2000, 0.5, k=10)
        (rec,) = compare_ranks(a, b, ["ndcg@10"], resamples=300, seed=s)
        covered += rec["ratio_lo"] <= 1.0 <= rec["ratio_hi"]
    assert covered >= 16


def test_bad_inputs():
    with pytest.raises(ValueError, match="same users"):
        compare_ranks(np.zeros(5, int), np.zeros(6, int))
    with pytest.raises(ValueError, match="level"):
        compare_ranks(np.zeros(5, int), np.zeros(5, int), level=1.5)


def test_api_and_cli_agree(tmp_path, tiny_overrides, capsys):
    quiet = {"log": lambda s: None}
    a = SeqRec(overrides=tiny_overrides).fit(run_dir=tmp_path / "a", **quiet)
    b = SeqRec(loss="bce", overrides={**tiny_overrides, "train.seed": 1}).fit(run_dir=tmp_path / "b", **quiet)
    df = a.compare(b, metrics=("ndcg@10", "hr@20"), resamples=200)
    assert df["metric"].to_list() == ["ndcg@10", "hr@20"]
    assert df["base"][0] == pytest.approx(a.evaluate()["ndcg@10"], abs=1e-9)
    assert df["value"][0] == pytest.approx(b.evaluate()["ndcg@10"], abs=1e-9)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "200", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["metric"] for r in rows] == ["ndcg@10", "hr@10"] and rows[0]["run"] == str(tmp_path / "b")
    assert rows[0]["ratio"] == pytest.approx(df["ratio"][0], abs=1e-9)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "200"]) == 0
    assert "95% interval" in capsys.readouterr().out
    # a model fitted on other data cannot be paired; a bad metric name is one clean line
    small = {"synthetic": {"n_users": 90, "n_items": 40}}
    other = SeqRec(overrides={**tiny_overrides, "data.options": small}).fit(**quiet)
    with pytest.raises(SeqrecError, match="same users"):
        a.compare(other)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "auc"]) == 2
    assert "ndcg@10" in capsys.readouterr().err
