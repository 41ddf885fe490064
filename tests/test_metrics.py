"""Ranking metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from seqrec.evaluation.metrics import coverage, rank_metrics, target_ranks


def test_target_ranks_found_and_missing():
    topk = np.array([[5, 3, 9], [1, 2, 4], [7, -1, -1]])
    assert target_ranks(topk, np.array([3, 8, 7])).tolist() == [1, -1, 0]


def test_rank_metrics_hand_computed():
    ranks = np.array([0, 1, 4, -1])  # target at position 1, 2, 5 (1-based) and missing
    m = rank_metrics(ranks, [1, 5, 10])
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(3 / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)
    assert m["hr@10"] == m["hr@5"]


def test_rank_metrics_k_cuts_off():
    m = rank_metrics(np.array([5]), [5, 10])
    assert m["hr@5"] == 0.0 and m["ndcg@5"] == 0.0 and m["mrr@5"] == 0.0
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == pytest.approx(1 / math.log2(7))


def test_coverage_counts_distinct_items_ignoring_empty_slots():
    topk = np.array([[0, 1, -1], [0, 2, 3]])
    c = coverage(topk, [1, 3], n_items=10)
    assert c["coverage@1"] == pytest.approx(0.1)
    assert c["coverage@3"] == pytest.approx(0.4)
