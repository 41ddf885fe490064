"""ce_chunked, the samplers and the sampled losses against brute-force references (tiny shapes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqrec.errors import ConfigError, SeqrecError
from seqrec.losses import LossContext
from seqrec.losses.sampling import NegativeSampler
from seqrec.registry import LOSSES


def _inputs(n: int, c: int, d: int, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * scale).requires_grad_()
    w = (torch.randn(c, d, generator=g) * scale).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g)
    return x, w, y


def _value_and_grads(loss, x, w, y, ctx=None):
    x.grad = w.grad = None
    v = loss(x, y, w, ctx)
    v.backward()
    return v.detach(), x.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("n,c,d,chunk", [(7, 13, 4, 5), (33, 100, 8, 17), (16, 64, 3, 64), (5, 9, 6, 100),
                                         (20, 50, 8, "auto")])
def test_ce_chunked_equals_ce(n, c, d, chunk):
    x, w, y = _inputs(n, c, d, seed=n + c, scale=2.0)
    ref = _value_and_grads(LOSSES.build("ce"), x, w, y)
    got = _value_and_grads(LOSSES.build("ce_chunked", chunk_size=chunk), x, w, y)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ce_chunked_matches_cross_entropy_with_large_logits():
    # logits ~ ±200: a naive exp would overflow, the online log-sum-exp must not
    x, w, y = _inputs(10, 30, 4, seed=3, scale=7.0)
    v = LOSSES.build("ce_chunked", chunk_size=7)(x, y, w)
    torch.testing.assert_close(v, F.cross_entropy(x @ w.T, y))


def test_ce_chunked_bf16_autocast_finite_and_close():
    x, w, y = _inputs(24, 70, 16, seed=5)
    ref = LOSSES.build("ce")(x, y, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = LOSSES.build("ce_chunked", chunk_size=16)(x, y, w)
    assert v.dtype == torch.float32
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    torch.testing.assert_close(v, ref.detach(), rtol=0.05, atol=0.05)


def test_ce_chunked_auto_chunk_and_validation():
    loss = LOSSES.build("ce_chunked", memory_budget_mb=1)
    assert loss.resolve_chunk(1024, 10**6) == 256  # 1 MiB / (1024 * 4 B)
    assert loss.resolve_chunk(10, 300) == 300
    assert loss.predict_bytes(12800, 10**6, 64) < 12800 * 10**6 * 4 / 100  # the [N, C] float32 logits
    with pytest.raises(ConfigError):
        LOSSES.build("ce_chunked", chunk_size=0)
    with pytest.raises(ConfigError):
        LOSSES.build("ce_chunked", impl="magic")
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        LOSSES.build("ce_chunked", memory_budget_mb="lots")
    # the default budget follows the device: 32 MiB on CPU, 512 MiB on CUDA (where launches dominate)
    auto = LOSSES.build("ce_chunked")
    assert auto.resolve_chunk(1024, 10**6) == 32 * 2**20 // (4 * 1024)
    assert auto.resolve_chunk(1024, 10**6, "cuda") == 512 * 2**20 // (4 * 1024)
    assert LOSSES.build("ce_chunked", memory_budget_mb=1).resolve_chunk(1024, 10**6, "cuda") == 256


# ---- samplers ---------------------------------------------------------------------------------

def _histories(b: int, c: int, per_row: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    items = torch.cat([torch.randperm(c, generator=g)[:per_row] for _ in range(b)])
    offsets = torch.arange(b + 1) * per_row
    return offsets, items


@pytest.mark.parametrize("c,shared", [(50, False), (50, True), (20000, False), (20000, True)])
def test_exclude_seen_never_returns_seen_and_no_repeats(c, shared):
    # c=50 exercises the exact dense path, c=20000 the rejection path
    b, per_row, n = 4, c // 2, min(20, c // 2)
    offsets, items = _histories(b, c, per_row, seed=c)
    seq = torch.arange(b).repeat_interleave(3)
    ctx = LossContext(seq_idx=seq, hist_offsets=offsets, hist_items=items,
                      generator=torch.Generator().manual_seed(1))
    sampler = NegativeSampler(n, "uniform_exclude_seen", shared=shared)
    neg = sampler.sample(torch.zeros(len(seq), dtype=torch.long), c, ctx)
    assert neg.ids.shape == ((b if shared else len(seq)), n)
    for r in range(neg.ids.shape[0]):
        h = seq[r] if not shared else r
        seen = set(items[offsets[h]:offsets[h + 1]].tolist())
        got = neg.ids[r].tolist()
        assert not seen & set(got)
        assert len(set(got)) == n
    assert (neg.row == (seq if shared else torch.arange(len(seq)))).all()


def test_exclude_seen_refuses_when_too_few_unseen():
    offsets, items = _histories(1, 10, 8, seed=0)
    ctx = LossContext(seq_idx=torch.zeros(2, dtype=torch.long), hist_offsets=offsets, hist_items=items)
    with pytest.raises(SeqrecError, match="unseen"):
        NegativeSampler(3, "uniform_exclude_seen").sample(torch.zeros(2, dtype=torch.long), 10, ctx)


def test_popularity_sampler_follows_popularity_and_skips_zero():
    pop = torch.tensor([0.0, 1.0, 3.0, 0.0])
    ctx = LossContext(item_pop=pop, generator=torch.Generator().manual_seed(0))
    ids = NegativeSampler(4000, "popularity").sample(torch.zeros(1, dtype=torch.long), 4, ctx).ids
    counts = torch.bincount(ids.flatten(), minlength=4).double()
    assert counts[0] == 0 and counts[3] == 0
    assert 0.70 < counts[2] / counts.sum() < 0.80  # expected 0.75
    flat = NegativeSampler(4000, "popularity", pop_alpha=0.0).sample(torch.zeros(1, dtype=torch.long), 4, ctx)
    assert (torch.bincount(flat.ids.flatten(), minlength=4) > 800).all()  # alpha=0: uniform


def test_samplers_deterministic_under_seed():
    def draw(seed):
        ctx = LossContext(seq_idx=torch.tensor([0, 0, 1]), generator=torch.Generator().manual_seed(seed))
        return NegativeSampler(5, shared=True).sample(torch.zeros(3, dtype=torch.long), 1000, ctx).ids

    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))


def test_sampler_validation():
    with pytest.raises(ConfigError):
        NegativeSampler(0)
    with pytest.raises(ConfigError):
        NegativeSampler(3, "magic")
    with pytest.raises(ConfigError):
        LOSSES.build("gbce", t=1.5)


# ---- sampled losses ---------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [False, True])
def test_gbce_t0_equals_bce(shared):
    x, w, y = _inputs(12, 40, 8, seed=2)
    seq = torch.arange(12) // 4

    def run(name, **kw):
        ctx = LossContext(seq_idx=seq, generator=torch.Generator().manual_seed(3))
        return _value_and_grads(LOSSES.build(name, n_negatives=6, shared=shared, **kw), x, w, y, ctx)

    for a, b in zip(run("gbce", t=0.0), run("bce"), strict=True):
        torch.testing.assert_close(a, b)


def test_bce_matches_brute_force_and_masks_target():
    x, w, y = _inputs(9, 5, 4, seed=4)
    loss = LOSSES.build("bce", n_negatives=8)
    ctx = LossContext(generator=torch.Generator().manual_seed(0))
    v = loss(x, y, w, ctx)
    ids = NegativeSampler(8).sample(y, 5, LossContext(generator=torch.Generator().manual_seed(0))).ids
    s = x @ w.T
    neg = torch.gather(s, 1, ids)
    ref = F.softplus(-s[torch.arange(9), y]) + (F.softplus(neg) * (ids != y[:, None])).sum(1)
    assert (ids == y[:, None]).any()  # C=5 with 8 draws: the target is drawn and must be masked
    torch.testing.assert_close(v, ref.mean())


def test_gbce_beta_formula():
    loss = LOSSES.build("gbce", n_negatives=256, t=0.75)
    alpha = 256 / 9999
    assert loss.beta(10000) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert LOSSES.build("gbce", n_negatives=10, t=1.0).beta(101) == pytest.approx(0.1)


@pytest.mark.parametrize("shared", [False, True])
def test_sampled_softmax_all_items_equals_ce(shared):
    # every item drawn exactly once (without replacement, empty histories), target masked
    # among the negatives -> softmax over [target, all others] = full CE
    n, c, d = 10, 12, 5
    x, w, y = _inputs(n, c, d, seed=6)
    seq = torch.arange(n) // 5
    ctx = LossContext(seq_idx=seq, hist_offsets=torch.zeros(3, dtype=torch.long),
                      hist_items=torch.zeros(0, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    loss = LOSSES.build("sampled_softmax", n_negatives=c, sampler="uniform_exclude_seen", shared=shared)
    got = _value_and_grads(loss, x, w, y, ctx)
    ref = _value_and_grads(LOSSES.build("ce"), x, w, y)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sampled_softmax_target_drawn_is_masked():
    # a catalog of 2 items: the only negative of each position is the other item or the
    # target itself; with the target masked the loss is CE over the distinct items drawn
    x, w, y = _inputs(50, 2, 3, seed=8)
    loss = LOSSES.build("sampled_softmax", n_negatives=1, shared=False)
    ids = NegativeSampler(1).sample(y, 2, LossContext(generator=torch.Generator().manual_seed(1))).ids[:, 0]
    v = loss(x, y, w, LossContext(generator=torch.Generator().manual_seed(1)))
    s = x @ w.T
    pos, other = s[torch.arange(50), y], s[torch.arange(50), ids]
    per = torch.where(ids == y, torch.zeros(()), F.softplus(other - pos))  # masked -> loss 0
    assert (ids == y).any() and (ids != y).any()
    torch.testing.assert_close(v, per.mean())


def test_sampled_softmax_logq_and_in_batch_run_finite():
    x, w, y = _inputs(16, 30, 4, seed=9)
    ctx = LossContext(seq_idx=torch.arange(16) // 8, item_pop=torch.arange(30).float() + 1,
                      generator=torch.Generator().manual_seed(0))
    for kw in ({"logq": True}, {"in_batch": True}, {"logq": True, "in_batch": True, "sampler": "popularity"}):
        x.grad = w.grad = None
        v = LOSSES.build("sampled_softmax", n_negatives=7, **kw)(x, y, w, ctx)
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(w.grad).all()


def test_logq_uniform_full_draw_matches_ce_shift():
    # uniform draws: logq adds log(C/n) to every negative -> equal to CE with negatives weighted C/n
    x, w, y = _inputs(6, 8, 3, seed=10)
    ctx = lambda: LossContext(generator=torch.Generator().manual_seed(2))  # noqa: E731
    plain = LOSSES.build("sampled_softmax", n_negatives=4, shared=False)(x, y, w, ctx())
    corr = LOSSES.build("sampled_softmax", n_negatives=4, shared=False, logq=True)(x, y, w, ctx())
    assert corr > plain  # log(8/4) > 0 raises every negative logit


def test_sampled_losses_finite_under_bf16_autocast():
    x, w, y = _inputs(16, 40, 8, seed=11)
    for name in ("bce", "gbce", "sampled_softmax"):
        x.grad = w.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = LOSSES.build(name, n_negatives=5)(x, y, w, LossContext(seq_idx=torch.arange(16) // 4))
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_per_position_chunking_does_not_change_result():
    x, w, y = _inputs(40, 100, 8, seed=12)

    def run(budget):
        ctx = LossContext(generator=torch.Generator().manual_seed(5))
        return _value_and_grads(LOSSES.build("gbce", n_negatives=16, memory_budget_mb=budget), x, w, y, ctx)

    for a, b in zip(run(1e-3), run(64), strict=True):  # 1 KB -> one position per chunk
        torch.testing.assert_close(a, b)


def test_full_ce_matches_autograd_cross_entropy(monkeypatch):
    """ce's blocked forward-time gradients equal autograd's log_softmax + nll ones, over several
    blocks (the last one partial), scaled by the incoming gradient; without grad only the value."""
    from seqrec.losses import ce

    monkeypatch.setitem(ce.BLOCK_BYTES, "cpu", 1)  # MIN_ROWS positions per block
    n = 2 * ce.MIN_ROWS + 37
    assert ce.block_rows(n, 90) == ce.MIN_ROWS
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(n, 16, generator=g) * 3).requires_grad_()
    w = torch.randn(90, 16, generator=g).requires_grad_()
    y = torch.randint(0, 90, (n,), generator=g)
    ours = ce.FullCE()(x, y, w, None)
    gx, gw = torch.autograd.grad(2.5 * ours, (x, w))
    ref = F.cross_entropy(x @ w.T, y)
    rx, rw = torch.autograd.grad(2.5 * ref, (x, w))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(gx, rx, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(ce.FullCE()(x, y, w, None), ref, atol=1e-5)
