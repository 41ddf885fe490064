"""Self-tuning of the approximate backends to a recall target, and the exact fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.errors import ConfigError, SeqrecWarning
from seqrec.retrieval import build_retriever, load_retriever, recall_at_k
from seqrec.retrieval.exact import exact_topk
from seqrec.retrieval.tune import MIN_SPEEDUP, recall_lower_bound

faiss = pytest.importorskip("faiss")
APPROX = ["faiss-ivf", "faiss-hnsw"]


def clustered(n: int, seed: int, d: int = 16, centres: int = 64) -> np.ndarray:
    cent = np.random.default_rng(7).standard_normal((centres, d)).astype(np.float32) * 2
    rng = np.random.default_rng(seed)
    return (cent[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


def exact_ids(items: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    return exact_topk(torch.from_numpy(items), torch.from_numpy(q), k)[1]


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items [20000, 16], tuning queries [500, 16], held-out test queries [500, 16])."""
    return clustered(20000, 0), clustered(500, 1), clustered(500, 2)


@pytest.mark.parametrize("backend", APPROX)
def test_tuning_meets_target_on_given_queries(catalog, backend):
    items, tune_q, _ = catalog
    target = 0.95
    r = build_retriever(backend, target_recall=target).build(items, queries=tune_q)
    t = r.tuning
    param = "nprobe" if backend == "faiss-ivf" else "ef_search"
    assert t["param"] == param and r.params[param] == t["value"] and t["query_source"] == "given"
    if r.params["exact_fallback"]:  # timings decide; the fallback must then be exact
        assert recall_at_k(r.search(tune_q, 10)[1], exact_ids(items, tune_q)) == 1.0
        return
    recall = recall_at_k(r.search(tune_q, 10)[1], exact_ids(items, tune_q))  # measured independently
    assert recall >= target and t["recall"] == pytest.approx(recall, abs=1e-4)
    assert t["speedup"] >= MIN_SPEEDUP
    # the smallest meeting value among those tried: the next smaller one tried misses the target
    # (its mean recall minus 2 standard errors, re-measured here)
    lower = [v for v, _, _ in t["trials"] if v < t["value"]]
    if lower:
        r.set_params(**{param: max(lower)})
        assert recall_lower_bound(r.search(tune_q, 10)[1], exact_ids(items, tune_q)) < target


def test_default_sample_is_item_embeddings_without_self_match(catalog):
    items, _, test_q = catalog
    r = build_retriever("faiss-ivf", target_recall=0.9, tune_queries=300).build(items)
    assert r.tuning["query_source"] == "items" and r.tuning["queries"] == 300
    if not r.params["exact_fallback"]:
        assert recall_at_k(r.search(test_q, 10)[1], exact_ids(items, test_q)) >= 0.85


@pytest.mark.parametrize("backend", APPROX)
@pytest.mark.parametrize("why", ["slower", "unreachable"])
def test_fallback_to_exact_with_warning(backend, why, monkeypatch):
    """Exact search made 'infinitely fast' (no setting can beat it), or recall pinned below the
    target (no setting reaches it): the index answers exactly and says so."""
    from seqrec.retrieval import tune

    if why == "slower":
        real = tune.Tunable._time_exact
        monkeypatch.setattr(tune.Tunable, "_time_exact", lambda *a: (float("inf"), real(*a)[1]))
    else:
        monkeypatch.setattr(tune, "recall_at_k", lambda a, e: 0.5)
        monkeypatch.setattr(tune, "recall_lower_bound", lambda a, e: 0.5)
    items = clustered(2000, 0)
    q = clustered(50, 1)
    msg = "" if why == "slower" else r"\((nprobe|ef_search) up to \d+ reaches 0.500"
    with pytest.warns(SeqrecWarning, match=f"not reached at 2x exact search's speed or more {msg}.*searching exactly"):
        r = build_retriever(backend).build(items, queries=q)
    assert r.params["exact_fallback"] and r.tuning["exact_fallback"]
    np.testing.assert_array_equal(r.search(q, 10)[1], exact_ids(items, q))
    # an explicit search setting replaces the fallback
    param = "nprobe" if backend == "faiss-ivf" else "ef_search"
    r.set_params(**{param: 2 if backend == "faiss-ivf" else 10})
    assert not r.params["exact_fallback"]


@pytest.mark.parametrize("backend", APPROX)
def test_tuned_values_round_trip_through_save_load(catalog, backend, tmp_path):
    items, tune_q, test_q = catalog
    r = build_retriever(backend, target_recall=0.9).build(items, queries=tune_q)
    r.save(tmp_path / "ix")
    back = load_retriever(tmp_path / "ix")
    param = r.tuning["param"]
    assert back.params[param] == r.params[param] and back.params["target_recall"] == 0.9
    assert back.params["exact_fallback"] == r.params["exact_fallback"] and back.tuning == r.tuning
    np.testing.assert_array_equal(back.search(test_q, 10)[1], r.search(test_q, 10)[1])


def test_fallback_round_trips(tmp_path, monkeypatch):
    from seqrec.retrieval import tune

    monkeypatch.setattr(tune, "recall_lower_bound", lambda a, e: 0.5)
    with pytest.warns(SeqrecWarning):
        r = build_retriever("faiss-hnsw").build(clustered(500, 0))
    r.save(tmp_path / "ix")
    back = load_retriever(tmp_path / "ix")
    assert back.params["exact_fallback"] and back.tuning["exact_fallback"]


@pytest.mark.parametrize("backend,untuned", [("faiss-ivf", {}), ("faiss-hnsw", {"ef_search": 128})])
def test_tuning_off_is_todays_behaviour(catalog, backend, untuned):
    items, _, test_q = catalog
    off = build_retriever(backend, target_recall=None).build(items)
    assert off.tuning is None and not off.params["exact_fallback"]
    if backend == "faiss-ivf":
        assert off.params["nprobe"] == off.default_nprobe(off.params["nlist"])
    else:
        assert off.params["ef_search"] == 128
    # the untuned parameters, given explicitly: no tuning either, identical results
    given = build_retriever(backend, **{"nprobe": off.params["nprobe"]} if backend == "faiss-ivf"
                            else untuned).build(items)
    assert given.tuning is None
    a, b = off.search(test_q, 10), given.search(test_q, 10)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("bad", [0, 1.5, "high", True])
def test_bad_target_is_a_config_error(catalog, bad):
    with pytest.raises(ConfigError, match="target_recall"):
        build_retriever("faiss-ivf", target_recall=bad).build(catalog[0][:2000])


def test_unknown_tuning_key_is_refused():
    with pytest.raises(ConfigError):
        build_retriever("faiss-ivf", target_recal=0.9)


def test_exact_backends_ignore_queries(catalog):
    items, tune_q, test_q = catalog
    r = build_retriever("torch").build(items, queries=tune_q)
    np.testing.assert_array_equal(r.search(test_q, 10)[1], exact_ids(items, test_q))
