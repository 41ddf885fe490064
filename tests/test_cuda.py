"""The same contracts on CUDA: every loss against its CPU or brute-force reference, training,
checkpoints and exact retrieval.

CI has no GPU, so this module skips there; on a GPU machine run ``pytest tests/test_cuda.py``.
Selections (SCE buckets, RECE chunks, negatives) come from a CUDA generator, then the CPU
brute-force references of test_losses*.py score the same selection.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_losses import _histories
from test_losses_sce_rece import _rece_reference, _sce_reference, _sce_union_reference

from seqrec import SeqRec
from seqrec.losses import LossContext, sce_variants
from seqrec.losses.rece import rece_hash
from seqrec.losses.sampling import NegativeSampler
from seqrec.losses.sce import sce_select
from seqrec.registry import LOSSES
from seqrec.retrieval import build_retriever

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
CUDA = torch.device("cuda")


def _pair(n: int, c: int, d: int, seed: int, scale: float = 1.0):
    """The same (x [n,d], w [c,d], y [n]) as CPU leaves and as CUDA leaves."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, d, generator=g) * scale, torch.randn(c, d, generator=g) * scale
    y = torch.randint(0, c, (n,), generator=g)
    y[: n // 3] = y[0]  # shared targets, as in real batches
    cpu = (x.clone().requires_grad_(), w.clone().requires_grad_(), y)
    gpu = (x.to(CUDA).requires_grad_(), w.to(CUDA).requires_grad_(), y.to(CUDA))
    return cpu, gpu


def _vg(fn, x, w):
    """(value, dL/dx, dL/dw) as CPU tensors."""
    x.grad = w.grad = None
    v = fn()
    v.backward()
    return v.detach().cpu(), x.grad.cpu(), w.grad.cpu()


def _close(a, b, rtol=1e-4, atol=1e-5):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=CUDA).manual_seed(seed)


def _ctx(seed: int, **kw) -> LossContext:
    return LossContext(generator=_gen(seed), **kw)


def _ce(x, w, y):
    return _vg(lambda: F.cross_entropy(x @ w.T, y), x, w)


@pytest.mark.parametrize("impl", ["chunked", "auto"])
@pytest.mark.parametrize("n,c,d,chunk", [(33, 100, 8, 17), (300, 5003, 64, 1000), (64, 20000, 32, "auto")])
def test_ce_and_ce_chunked_on_cuda_equal_cpu_ce(impl, n, c, d, chunk):
    # "auto" may run cut-cross-entropy or Liger when installed: still exact CE (no gradient filtering)
    (xc, wc, yc), (xg, wg, yg) = _pair(n, c, d, seed=n + c, scale=2.0)
    ref = _ce(xc, wc, yc)
    _close(_vg(lambda: LOSSES.build("ce")(xg, yg, wg, None), xg, wg), ref)
    loss = LOSSES.build("ce_chunked", chunk_size=chunk, impl=impl)
    _close(_vg(lambda: loss(xg, yg, wg, None), xg, wg), ref, rtol=1e-3, atol=1e-5)


def test_ce_chunked_auto_with_half_hidden_on_cuda():
    # bf16 hidden states: cut-cross-entropy's path when it is installed, else Liger's or the chunked one
    (xc, wc, yc), (xg, wg, yg) = _pair(300, 5003, 64, seed=4)
    xh = xg.detach().bfloat16().requires_grad_()
    ref = _ce(xh.detach().float().cpu().requires_grad_(), wc, yc)
    got = _vg(lambda: LOSSES.build("ce_chunked", impl="auto")(xh, yg, wg, None), xh, wg)
    _close((got[0], got[1].float(), got[2]), ref, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name,params", [
    ("ce_chunked", {"chunk_size": 300}),
    ("sce", {"n_buckets": 8, "bucket_size_x": 64, "bucket_size_y": 128}),
    ("sce", {"n_buckets": 2, "bucket_size_x": 64, "bucket_size_y": 128, "cover": True}),
    ("sce", {"n_buckets": 2, "bucket_size_x": 64, "bucket_size_y": 128, "cover": True, "union": True}),
    ("sce", {"n_buckets": 64, "bucket_size_x": 128, "bucket_size_y": 256, "union": True}),  # dense path
    ("rece", {"n_extra_chunks": 1, "rounds": 2}),
    ("bce", {}), ("gbce", {"n_negatives": 32, "t": 0.75}),
    ("sampled_softmax", {"n_negatives": 100}),
])
def test_bf16_autocast_on_cuda_finite_and_close(name, params):
    _, (x, w, y) = _pair(256, 3000, 32, seed=1)
    ctx = lambda: _ctx(3, seq_idx=torch.arange(256, device=CUDA) // 32)  # noqa: E731
    loss = LOSSES.build(name, **params)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v = loss(x, y, w, ctx())
    v.backward()
    assert v.dtype == torch.float32 and torch.isfinite(v)
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all() and x.grad.abs().sum() > 0
    assert float(v.detach()) == pytest.approx(float(loss(x, y, w, ctx()).detach()), rel=0.05)


# ---------------------------------------------------------------- SCE, RECE on CUDA vs brute force
@pytest.mark.parametrize("mix_x", [True, False])
@pytest.mark.parametrize("n,c,n_b,k_x,k_y", [(20, 30, 4, 6, 7), (400, 3000, 24, 60, 200)])
def test_sce_on_cuda_matches_bruteforce(mix_x, n, c, n_b, k_x, k_y):
    (xc, wc, yc), (xg, wg, yg) = _pair(n, c, 16, seed=3)
    idx_x, idx_y = sce_select(xg, wg, n_b, k_x, k_y, mix_x, _gen(5))
    ref = _vg(lambda: _sce_reference(xc, wc, yc, idx_x.cpu(), idx_y.cpu()), xc, wc)
    loss = LOSSES.build("sce", n_buckets=n_b, bucket_size_x=k_x, bucket_size_y=k_y, mix_x=mix_x)
    ctx = _ctx(5)
    _close(_vg(lambda: loss(xg, yg, wg, ctx), xg, wg), ref)
    assert ctx.stats["sce_coverage"] == pytest.approx(idx_x.unique().numel() / n)


@pytest.mark.parametrize("dense", [True, False])
def test_sce_union_on_cuda_matches_bruteforce(monkeypatch, dense):
    monkeypatch.setattr(sce_variants, "UNION_DENSE_RATIO", 1e9 if dense else 0)
    (xc, wc, yc), (xg, wg, yg) = _pair(400, 3000, 16, seed=3)
    idx_x, idx_y = sce_select(xg, wg, 40, 60, 200, True, _gen(5))
    ref = _vg(lambda: _sce_union_reference(xc, wc, yc, idx_x.cpu(), idx_y.cpu()), xc, wc)
    loss = LOSSES.build("sce", n_buckets=40, bucket_size_x=60, bucket_size_y=200, union=True)
    _close(_vg(lambda: loss(xg, yg, wg, _ctx(5)), xg, wg), ref)


def test_sce_covering_buckets_equal_full_ce_on_cuda():
    (xc, wc, yc), (xg, wg, yg) = _pair(12, 17, 6, seed=0)
    loss = LOSSES.build("sce", n_buckets=3, bucket_size_x=12, bucket_size_y=17)
    _close(_vg(lambda: loss(xg, yg, wg, _ctx(1)), xg, wg), _ce(xc, wc, yc))


@pytest.mark.parametrize("n,c,n_buckets,n_extra,rounds", [(11, 13, 4, 1, 3), (300, 2000, 16, 1, 2)])
def test_rece_on_cuda_matches_bruteforce(n, c, n_buckets, n_extra, rounds):
    (xc, wc, yc), (xg, wg, yg) = _pair(n, c, 8, seed=7)
    loss = LOSSES.build("rece", n_buckets=n_buckets, n_extra_chunks=n_extra, rounds=rounds)
    _, n_c = loss.resolve(n, c)
    h = {k: v.cpu() for k, v in rece_hash(xg, wg, n_buckets, n_c, rounds, _gen(2)).items()}
    ref = _vg(lambda: _rece_reference(xc, wc, yc, h, n_extra)[0], xc, wc)
    _close(_vg(lambda: loss(xg, yg, wg, _ctx(2)), xg, wg), ref)


def test_rece_single_chunk_equals_full_ce_on_cuda():
    (xc, wc, yc), (xg, wg, yg) = _pair(12, 17, 6, seed=0)
    loss = LOSSES.build("rece", n_buckets=1, n_extra_chunks=1, rounds=3)
    _close(_vg(lambda: loss(xg, yg, wg, _ctx(1)), xg, wg), _ce(xc, wc, yc))


@pytest.mark.parametrize("name,params", [("sce", {"n_buckets": 3, "bucket_size_x": 5, "bucket_size_y": 8}),
                                         ("sce", {"n_buckets": 3, "bucket_size_x": 5, "bucket_size_y": 8,
                                                  "cover": True}),
                                         ("sce", {"n_buckets": 3, "bucket_size_x": 5, "bucket_size_y": 8,
                                                  "union": True}),
                                         ("rece", {"n_buckets": 3, "n_extra_chunks": 1, "rounds": 2}),
                                         ("sampled_softmax", {"n_negatives": 7})])
def test_cuda_losses_deterministic_under_seed(name, params):
    _, (x, w, y) = _pair(20, 40, 6, seed=0)
    loss = LOSSES.build(name, **params)
    a = _vg(lambda: loss(x, y, w, _ctx(11)), x, w)
    _close(_vg(lambda: loss(x, y, w, _ctx(11)), x, w), a, rtol=1e-6, atol=1e-7)
    assert len({round(float(loss(x, y, w, _ctx(s)).detach()), 6) for s in range(6)}) > 1


# ---------------------------------------------------------------- sampled losses on CUDA
@pytest.mark.parametrize("shared", [False, True])
def test_gbce_t0_equals_bce_on_cuda(shared):
    _, (x, w, y) = _pair(12, 40, 8, seed=2)
    seq = torch.arange(12, device=CUDA) // 4

    def run(name, **kw):
        loss = LOSSES.build(name, n_negatives=6, shared=shared, **kw)
        return _vg(lambda: loss(x, y, w, _ctx(3, seq_idx=seq)), x, w)

    _close(run("gbce", t=0.0), run("bce"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shared", [False, True])
def test_sampled_softmax_all_items_equals_ce_on_cuda(shared):
    (xc, wc, yc), (xg, wg, yg) = _pair(10, 12, 5, seed=6)
    ctx = _ctx(0, seq_idx=torch.arange(10, device=CUDA) // 5, hist_offsets=torch.zeros(3, dtype=torch.long).to(CUDA),
               hist_items=torch.zeros(0, dtype=torch.long).to(CUDA))
    loss = LOSSES.build("sampled_softmax", n_negatives=12, sampler="uniform_exclude_seen", shared=shared)
    _close(_vg(lambda: loss(xg, yg, wg, ctx), xg, wg), _ce(xc, wc, yc))


@pytest.mark.parametrize("c,shared", [(50, False), (50, True), (20000, False), (20000, True)])
def test_exclude_seen_on_cuda_never_returns_seen(c, shared):
    b, n = 4, min(20, c // 2)
    offsets, items = _histories(b, c, c // 2, seed=c)
    seq = torch.arange(b).repeat_interleave(3)
    ctx = _ctx(1, seq_idx=seq.to(CUDA), hist_offsets=offsets.to(CUDA), hist_items=items.to(CUDA))
    neg = NegativeSampler(n, "uniform_exclude_seen", shared=shared).sample(
        torch.zeros(len(seq), dtype=torch.long, device=CUDA), c, ctx)
    ids = neg.ids.cpu()
    assert neg.ids.is_cuda and ids.shape == ((b if shared else len(seq)), n)
    for r in range(ids.shape[0]):
        h = seq[r] if not shared else r
        got = ids[r].tolist()
        assert not set(items[offsets[h]:offsets[h + 1]].tolist()) & set(got)
        assert len(set(got)) == n


# ---------------------------------------------------------------- training, checkpoints, retrieval
@pytest.mark.parametrize("loss", ["ce", "sce", "rece", "sampled_softmax"])
def test_fit_on_cuda_then_load_on_cpu(tiny_overrides, tmp_path, loss):
    over = {**tiny_overrides, "train.device": "cuda", "train.epochs": 3, "train.checkpoint_every_steps": 2}
    model = SeqRec(loss=loss, overrides=over).fit(run_dir=tmp_path / "run", log=lambda s: None)
    assert model.fit_info_["cuda_peak_mb"] > 0  # trained on the GPU (the fitted model is handed back on CPU)
    # a finished run extended on CUDA continues from its saved RNG and loss-generator state
    r = subprocess.run([sys.executable, "-m", "seqrec.cli", "fit", "--resume", str(tmp_path / "run"),
                        "--set", "train.epochs=4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-400:]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
    again = SeqRec.load(tmp_path / "run")
    assert not next(again.model_.parameters()).is_cuda
    m = again.evaluate()
    assert 0.0 <= m["ndcg@10"] <= m["hr@10"] <= 1.0


def test_exact_retrieval_on_cuda_equals_cpu():
    rng = np.random.default_rng(0)
    emb, q = rng.standard_normal((5000, 32), dtype=np.float32), rng.standard_normal((300, 32), dtype=np.float32)
    a = build_retriever("torch", device="cpu").build(emb).search(q, 20)
    b = build_retriever("torch", device="cuda", memory_budget_mb=1).build(emb).search(q, 20)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4)
