"""Retrieval layer: exactness, filters (exclude / allow / deny), padding, fallback, save/load."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from seqrec.errors import ConfigError, DataError, SeqrecError
from seqrec.registry import RETRIEVERS
from seqrec.retrieval import (
    approximation_report,
    build_retriever,
    load_retriever,
    recall_at_k,
)
from seqrec.retrieval.exact import TorchRetriever, exact_topk

try:
    import faiss  # noqa: F401
except ImportError:
    faiss = None
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss backends need faiss-cpu installed")
ALL = [b if b == "torch" else pytest.param(b, marks=needs_faiss) for b in RETRIEVERS.names()]

C, D, M, K = 600, 16, 40, 10


def clustered(n: int, seed: int, d: int = D, centres: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cent = np.random.default_rng(99).standard_normal((centres, d)).astype(np.float32) * 2
    return (cent[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(C, 0), clustered(M, 1)


def reference(emb: np.ndarray, q: np.ndarray, k: int, banned: list[set[int]] | None = None,
              allowed: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: (score desc, id asc), -1/-inf padding."""
    s = q.astype(np.float64) @ emb.astype(np.float64).T
    ids = np.full((len(q), k), -1)
    scores = np.full((len(q), k), -np.inf)
    for r in range(len(q)):
        cand = [c for c in range(len(emb)) if (allowed is None or c in allowed)
                and (banned is None or c not in banned[r])]
        cand.sort(key=lambda c: (-s[r, c], c))
        cand = cand[:k]
        ids[r, : len(cand)] = cand
        scores[r, : len(cand)] = s[r, cand]
    return scores, ids


def csr(sets: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    items = np.array([i for s in sets for i in s], dtype=np.int64)
    return offsets, items


def approx_params(backend: str) -> dict:
    return {"faiss-ivf": {"nprobe": 4}, "faiss-hnsw": {"ef_search": 64}}.get(backend, {})


@pytest.mark.parametrize("backend", ALL)
def test_agrees_with_exact(backend, data):
    emb, q = data
    r = build_retriever(backend, **approx_params(backend)).build(emb)
    scores, ids = r.search(q, K)
    ref_s, ref_i = reference(emb, q, K)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (M, K)
    assert np.all(np.diff(scores, axis=1) <= 0), "rows must be sorted by score"
    if r.exact:
        np.testing.assert_array_equal(ids, ref_i)
        np.testing.assert_allclose(scores, ref_s, rtol=1e-4, atol=1e-4)
    else:
        assert recall_at_k(ids, ref_i) >= 0.9
        # returned scores are the true inner products of the returned items
        np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, ids, 1), rtol=1e-4, atol=1e-4)


def test_torch_accepts_tensors_and_small_blocks(data):
    emb, q = data
    a = build_retriever("torch").build(torch.from_numpy(emb)).search(torch.from_numpy(q), K)
    b = build_retriever("torch", chunk_size=37, memory_budget_mb=0.01).build(emb).search(q, K)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 3, 7, 32, 64])
def test_ties_break_by_lower_id(chunk):
    # 4 distinct vectors, each repeated: many exact ties, across chunk boundaries (small integers,
    # so that every inner product is exact in float32 whatever the summation order)
    rng = np.random.default_rng(0)
    base = rng.integers(-3, 4, (4, 8)).astype(np.float32)
    emb = base[np.arange(400) % 4]  # 400: chunks of 32 / 64 take the block-maxima shortcut
    q = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    s, ids = build_retriever("torch", chunk_size=chunk).build(emb).search(q, 13)
    _, ref = reference(emb, q, 13)
    np.testing.assert_array_equal(ids, ref)
    # all-equal scores: plain id order
    s, ids = build_retriever("torch", chunk_size=chunk).build(np.zeros((30, 4), np.float32)).search(
        np.ones((2, 4), np.float32), 11)
    np.testing.assert_array_equal(ids, np.tile(np.arange(11), (2, 1)))


@pytest.mark.parametrize("backend", ALL)
def test_excluded_and_denied_never_returned(backend, data):
    emb, q = data
    rng = np.random.default_rng(3)
    _, top = reference(emb, q, 30)
    # each row excludes its own best items (so filtering matters) plus random ones, with duplicates
    sets = [list(top[r, : rng.integers(0, 25)]) + list(rng.integers(0, C, 5)) * 2 for r in range(M)]
    deny = rng.integers(0, C, 50)
    r = build_retriever(backend, **approx_params(backend)).build(emb)
    scores, ids = r.search(q, K, exclude=csr(sets), deny=deny)
    for row in range(M):
        assert not set(ids[row]) & (set(sets[row]) | set(deny.tolist()))
        assert (ids[row] >= 0).all(), "enough items remain: the row must be full"
    ref_s, ref_i = reference(emb, q, K, banned=[set(s) | set(deny.tolist()) for s in sets])
    if r.exact:
        np.testing.assert_array_equal(ids, ref_i)
    else:
        assert recall_at_k(ids, ref_i) >= 0.9


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("n_allow", [20, 400])  # small: exact over the allowed; large: over-fetch
def test_allow_list_respected(backend, n_allow, data):
    emb, q = data
    rng = np.random.default_rng(4)
    allow = rng.choice(C, n_allow, replace=False)
    deny = allow[:3]
    sets = [list(rng.integers(0, C, 8)) for _ in range(M)]
    r = build_retriever(backend, **approx_params(backend)).build(emb)
    _, ids = r.search(q, K, exclude=csr(sets), allow=allow, deny=deny)
    ok = set(allow.tolist()) - set(deny.tolist())
    for row in range(M):
        assert set(ids[row]) <= ok and not set(ids[row]) & set(sets[row])
        assert (ids[row] >= 0).all()
    _, ref_i = reference(emb, q, K, banned=[set(s) for s in sets], allowed=ok)
    if r.exact:
        np.testing.assert_array_equal(ids, ref_i)
    else:
        assert recall_at_k(ids, ref_i) >= 0.9


@pytest.mark.parametrize("backend", ALL)
def test_k_larger_than_remaining_catalog(backend):
    emb = clustered(60, 5)
    q = clustered(4, 6)
    sets = [list(range(0, 60, 2)), [], list(range(59)), list(range(60))]
    deny = [1, 3]
    params = {"faiss-ivf": {"nlist": 1}}.get(backend, {})
    s, ids = build_retriever(backend, **params).build(emb).search(q, 50, exclude=csr(sets), deny=deny)
    assert ids.shape == (4, 50)
    remaining = [60 - len(set(x) | set(deny)) for x in sets]  # 28, 58, 1, 0
    for row, n in enumerate(remaining):
        got = ids[row][ids[row] >= 0]
        assert len(got) == min(n, 50) and len(set(got.tolist())) == len(got)
        assert (ids[row, len(got):] == -1).all() and np.isneginf(s[row, len(got):]).all()
        assert np.isfinite(s[row, : len(got)]).all()


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
@pytest.mark.parametrize("n_banned,max_fetch,refills", [(30, 8192, True), (150, 64, False)])
def test_refill_and_exact_fallback(backend, n_banned, max_fetch, refills, data, monkeypatch):
    emb, q = data
    _, top = reference(emb, q, 200)
    sets = [list(top[r, :n_banned]) for r in range(M)]  # the index's first page is all excluded
    # no over-fetch: the first search returns only excluded items, so rows must be refilled
    r = build_retriever(backend, overfetch_cap=0, max_fetch=max_fetch, **approx_params(backend)).build(emb)
    fetched, exact_calls = [], []
    raw, exact = r._raw, r._exact
    monkeypatch.setattr(r, "_raw", lambda qq, kf: fetched.append(kf) or raw(qq, kf))
    monkeypatch.setattr(r, "_exact", lambda qq, k, f: exact_calls.append(len(qq)) or exact(qq, k, f))
    _, ids = r.search(q, K, exclude=csr(sets))
    assert (ids >= 0).all()
    assert all(not set(ids[i]) & set(sets[i]) for i in range(M))
    _, ref_i = reference(emb, q, K, banned=[set(s) for s in sets])
    assert recall_at_k(ids, ref_i) >= 0.9
    assert fetched[0] == 16 and max(fetched) > 16  # k=10 rounded up to 16, then refilled with more
    if refills:
        assert not exact_calls, "a refill within max_fetch must not need the exact fallback"
    else:
        assert max(fetched) == 64 and sum(exact_calls) == M  # capped: every row answered exactly


@needs_faiss
def test_ivf_fills_rows_its_probed_cells_cannot(data):
    emb, q = data
    # one probed cell out of many, and a deny-list removing most items: probing cannot fill k
    r = build_retriever("faiss-ivf", nlist=15, nprobe=1).build(emb)
    deny = np.arange(0, C - 40)
    s, ids = r.search(q, K, deny=deny)
    assert (ids >= C - 40).all()
    _, ref_i = reference(emb, q, K, allowed=set(range(C - 40, C)))
    assert recall_at_k(ids, ref_i) >= 0.9


@needs_faiss
def test_faissless_install_falls_back_to_torch(monkeypatch, data, tmp_path):
    emb, q = data
    saved = build_retriever("faiss-flat").build(emb).save(tmp_path / "flat")
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    msg = "faiss is not importable: retrieval backend 'faiss-hnsw' falls back to exact 'torch'"
    with pytest.warns(RuntimeWarning, match=msg):
        r = build_retriever("faiss-hnsw", ef_search=64)
    assert isinstance(r, TorchRetriever)
    _, ids = r.build(emb).search(q, K)
    np.testing.assert_array_equal(ids, reference(emb, q, K)[1])
    with pytest.raises(DataError, match="needs faiss"):
        load_retriever(saved)


@pytest.mark.parametrize("backend", ALL)
def test_save_load_round_trip(backend, data, tmp_path):
    emb, q = data
    r = build_retriever(backend, **approx_params(backend)).build(emb)
    before = r.search(q, K, deny=[0, 1])
    path = r.save(tmp_path / "index" / backend)
    r.save(path)  # overwriting an existing index works (atomic swap)
    assert sorted(p.name for p in tmp_path.joinpath("index").iterdir()) == [backend]
    back = load_retriever(path)
    assert type(back) is type(r) and back.params == r.params and back.n_items == C
    after = back.search(q, K, deny=[0, 1])
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def varied_norms(n: int, seed: int) -> np.ndarray:
    """Clustered directions with log-normal lengths, as a trained item table's (popular items long)."""
    rng = np.random.default_rng(seed)
    cent = np.random.default_rng(99).standard_normal((50, 16)).astype(np.float32)
    x = cent[rng.integers(0, 50, n)] + 0.7 * rng.standard_normal((n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x * np.exp(0.5 * rng.standard_normal((n, 1)))).astype(np.float32)


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@needs_faiss
def test_ivf_clusters_the_l2_reduction_of_inner_product(tmp_path):
    """Cells over mips_to_l2 vectors: on items of varied length, nprobe 16 of 512 cells recalls 0.89 of
    the top 10 where cells clustered by inner product (the earlier index) recall 0.76."""
    from seqrec.retrieval.faiss_ivf import mips_to_l2

    emb, q = varied_norms(20_000, 0), varied_norms(1_200, 1)  # on 2 threads: its cells in two shares
    red = mips_to_l2(emb)
    np.testing.assert_allclose(np.linalg.norm(red, axis=1), np.linalg.norm(emb, axis=1).max(), rtol=1e-5)
    _, ref = exact_topk(torch.from_numpy(emb), torch.from_numpy(q), K)
    r = build_retriever("faiss-ivf", nlist=512, nprobe=16, target_recall=None).build(emb)
    assert r._index.d == 17
    assert recall_at_k(r.search(q, K)[1], ref) >= 0.83
    np.testing.assert_allclose(r.item_embeddings(), emb)
    # the cells found by one GEMM are faiss's own quantizer's (blocks of 7 rows: the loop's edges)
    qa = np.hstack([q, np.zeros((len(q), 1), np.float32)])
    ids, dist = r._cells(qa, rows=7)
    want_d, want_i = r._index.quantizer.search(qa, 16)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-3)
    assert (np.sort(ids, 1) == np.sort(want_i, 1)).mean() > 0.99  # near-ties may swap the last cell
    # the grouped scan (each cell times all its queries) returns faiss's own IVF search, on 1 and 2
    # threads (2: the cells ranked and scanned in two shares, a thread each; the settings come back after)
    for threads in (1, 2):
        with torch_threads(threads):
            s, ids = r.search(q, K)
            assert torch.get_num_threads() == threads and faiss.omp_get_max_threads() == threads
        want_i = r._index.search(qa, K)[1]
        assert (np.sort(ids, 1) == np.sort(want_i, 1)).mean() > 0.99
        np.testing.assert_allclose(s, np.take_along_axis(q @ emb.T, ids, 1), rtol=1e-5, atol=1e-4)
    # an inner-product index saved by an earlier version still loads and searches as it is
    path = r.save(tmp_path / "ivf")
    old = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 512, faiss.METRIC_INNER_PRODUCT)
    old.train(emb)
    old.add(emb)
    faiss.write_index(old, str(path / "index.faiss"))
    back = load_retriever(path)
    s, ids = back.search(q, K)
    assert recall_at_k(ids, ref) >= 0.5
    np.testing.assert_allclose(s, np.take_along_axis(q @ emb.T, ids, 1), rtol=1e-4, atol=1e-4)


@needs_faiss
def test_params_validation():
    with pytest.raises(ConfigError, match="unknown retrieval backend 'annoy'"):
        build_retriever("annoy")
    with pytest.raises(ConfigError, match="unknown key retrieval.nprobe for retrieval backend 'faiss-hnsw'"):
        build_retriever("faiss-hnsw", nprobe=3)
    with pytest.raises(ConfigError, match="nprobe must be an integer"):
        build_retriever("faiss-ivf", nprobe=0).build(clustered(100, 0))
    with pytest.raises(ConfigError, match="cannot change after build"):
        build_retriever("faiss-hnsw").set_params(M=8)
    r = build_retriever("faiss-ivf", target_recall=None).build(clustered(200, 0))  # untuned
    assert r.params["nlist"] == 5 and r.params["nprobe"] == 5  # 200 items: 1.5 sqrt(C) capped at C / 39
    r = build_retriever("faiss-ivf", target_recall=None).build(clustered(20000, 0))
    assert r.params["nlist"] == 212 and r.params["nprobe"] == 10  # 1.5 sqrt(20,000)
    assert r.set_params(nprobe=5).params["nprobe"] == 5 and r._index.nprobe == 5


def test_bad_inputs_are_refused(data):
    emb, q = data
    r = build_retriever("torch")
    with pytest.raises(SeqrecError, match="not built"):
        r.search(q, K)
    r.build(emb)
    with pytest.raises(SeqrecError, match="dimension"):
        r.search(q[:, :3], K)
    with pytest.raises(SeqrecError, match="k must be a positive integer"):
        r.search(q, 0)
    with pytest.raises(SeqrecError, match=r"id -1 outside the catalog \[0, 600\)"):
        r.search(q[:1], K, exclude=(np.array([0, 1]), np.array([-1])))
    with pytest.raises(SeqrecError, match="exclude offsets"):
        r.search(q[:2], K, exclude=(np.array([0, 1]), np.array([1])))
    with pytest.raises(SeqrecError, match="allow holds id 600"):
        r.search(q, K, allow=[600])


@needs_faiss
def test_recall_at_k_and_approximation_report(data):
    exact = np.array([[1, 2, 3, -1], [4, 5, 6, 7], [-1, -1, -1, -1]])
    approx = np.array([[3, 9, 1, -1], [7, 6, 5, 4], [1, 2, 3, 4]])
    assert recall_at_k(approx, exact) == pytest.approx((2 / 3 + 1) / 2)
    emb, q = data
    sets = [[r, r + 1] for r in range(M)]
    ivf = build_retriever("faiss-ivf", nprobe=1).build(emb)
    rep = approximation_report(ivf, q, K, csr(sets), sample=25, seed=0)
    assert set(rep) == {"recall@k_vs_exact", "sample"} and rep["sample"] == 25
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(M, 25, replace=False))
    _, ids = ivf.search(q[rows], K, exclude=csr([sets[i] for i in rows]))
    _, ref = reference(emb, q[rows], K, banned=[set(sets[i]) for i in rows])
    assert rep["recall@k_vs_exact"] == pytest.approx(recall_at_k(ids, ref))
    assert approximation_report(build_retriever("torch").build(emb), q, K)["recall@k_vs_exact"] == 1.0


def test_renamed_memory_knobs_and_old_saved_params(data, tmp_path):
    import json

    from seqrec.retrieval.base import Retriever

    emb, q = data
    for old, new in (("block_mb", "memory_budget_mb"), ("chunk", "chunk_size")):
        with pytest.raises(ConfigError, match=rf"^retrieval\.{old} was renamed to retrieval\.{new}$"):
            build_retriever("torch", **{old: 8})
        with pytest.raises(ConfigError, match=f"renamed to retrieval.{new}"):
            build_retriever("torch").build(emb).set_params(**{old: 8})
    with pytest.raises(ConfigError, match="did you mean 'chunk_size'"):
        build_retriever("torch", chunk_sise=8)
    r = build_retriever("torch", chunk_size=64).build(emb)
    assert r.name == "torch" and r.params["memory_budget_mb"] == 64.0
    path = r.save(tmp_path / "torch")
    meta = json.loads((path / "retriever.json").read_text())
    assert meta["backend"] == "torch"  # the file keeps its field name
    meta["params"] = {"device": "auto", "block_mb": 2.0, "chunk": 50}  # an index saved before the rename
    (path / "retriever.json").write_text(json.dumps(meta))
    back = Retriever.load(path)
    assert isinstance(back, TorchRetriever) and back.params["memory_budget_mb"] == 2.0
    assert back.params["chunk_size"] == 50
    np.testing.assert_array_equal(back.search(q, K)[1], r.search(q, K)[1])


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-flat"])
def test_search_in_blocks_of_rows_equals_one_block(backend, data, monkeypatch):
    """Filtered and unfiltered searches run in blocks of query rows (bounded memory for 200k users):
    tiny blocks (one to three rows) give the ids one block gives, and the same scores up to float
    rounding (faiss-ivf's grouped scan multiplies each cell by however many of the block's queries
    probe it, and BLAS rounds the last bit differently for different row counts)."""
    import seqrec.retrieval.faiss_index as fi
    import seqrec.retrieval.faiss_ivf as ivf

    emb, q = data
    rng = np.random.default_rng(5)
    _, top = reference(emb, q, 30)
    sets = [list(top[r, : rng.integers(0, 25)]) for r in range(M)]
    r = build_retriever(backend, **approx_params(backend)).build(emb)
    whole = [r.search(q, K), r.search(q, K, exclude=csr(sets))]
    monkeypatch.setattr(fi, "SEARCH_BLOCK_BYTES", 100 * 64 * 3)
    monkeypatch.setattr(ivf, "SCAN_BYTES", 1)  # faiss-ivf's grouped scan: one query per batch
    blocks = [r.search(q, K), r.search(q, K, exclude=csr(sets))]
    for (s0, i0), (s1, i1) in zip(whole, blocks, strict=True):
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_allclose(s1, s0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("most", [4, 0])  # 0: every chunk after the first falls back to its own top-k
def test_block_maxima_shortcut_is_exact_under_filters(most, monkeypatch):
    """Chunks after the first keep only the 32-score blocks whose maximum beats a row's k-th best so
    far: with exclusions, deny-list and rows that run out of items, the result is brute force's."""
    import seqrec.retrieval.exact as ex

    monkeypatch.setattr(ex._above_kth, "__defaults__", (32, most))
    rng = np.random.default_rng(5)
    emb = rng.integers(-3, 4, (640, 6)).astype(np.float32)  # small integers: exact ties across blocks
    q = rng.integers(-3, 4, (9, 6)).astype(np.float32)
    _, top = reference(emb, q, 40)
    sets = [list(top[r, : 3 * r]) + list(rng.integers(0, 640, 5)) for r in range(len(q))]
    sets[8] = list(range(634))  # a row left with fewer than k items
    deny = rng.integers(0, 640, 11)
    s, ids = build_retriever("torch", chunk_size=64).build(emb).search(q, 10, exclude=csr(sets), deny=deny)
    ref_s, ref_i = reference(emb, q, 10, banned=[set(x) | set(deny.tolist()) for x in sets])
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [1 << 23, 7])
def test_rank_one_search_in_blocks_equals_scoring(budget, monkeypatch):
    """The popularity-style 1-d search (sorted catalog, rows skip their excluded items) gives what
    scoring every item gives, also when its rows go in blocks of a few (bounded memory)."""
    import seqrec.retrieval.exact as ex

    rng = np.random.default_rng(0)
    e = np.round(rng.standard_normal((300, 1)), 1).astype(np.float32)  # many ties
    q = np.array([[1.0], [-2.0], [0.0], [0.5], [3.0]], dtype=np.float32)
    sets = [list(rng.integers(0, 300, n)) for n in (0, 40, 5, 250, 12)]
    deny = rng.integers(0, 300, 7)
    filters = ex.Filters(len(q), 300, exclude=csr(sets), deny=deny)
    monkeypatch.setattr(ex._rank_one_topk, "__defaults__", (budget,))
    s1, i1 = ex.exact_topk(torch.from_numpy(e), torch.from_numpy(q), 10, filters)
    wide = np.concatenate([e, np.zeros_like(e)], 1)  # the same scores through the dense path
    s2, i2 = ex.exact_topk(torch.from_numpy(wide), torch.from_numpy(np.concatenate([q, q], 1)), 10, filters)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
