"""seqrec.peft: the SparseGrad layer, LoRA, MeProp, top-k, the combined optimiser and the registry."""

import pytest
import torch
from torch import nn

from seqrec.errors import ConfigError, SeqrecError
from seqrec.peft import PEFT, CombinedOptimizer, ffn_modules
from seqrec.peft.lora import LoRALinear
from seqrec.peft.meprop import MePropLinear, keep_topk_rows
from seqrec.peft.sparse import SparseGradLinear, energy_share, mode_factors, topk_coo
from seqrec.registry import MODELS

D64 = torch.float64


def _linear_and_rotation(d_in=8, d_out=24, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out).double()
    p, q = mode_factors(torch.randn(6, d_out, d_in, dtype=D64))
    return lin, p, q


def test_hosvd_factors_are_orthogonal():
    _, p, q = _linear_and_rotation()
    assert torch.allclose(p.T @ p, torch.eye(p.shape[0], dtype=D64), atol=1e-12)
    assert torch.allclose(q @ q.T, torch.eye(q.shape[0], dtype=D64), atol=1e-12)


def test_rotation_keeps_outputs_and_input_gradients_and_sparse_weight_gradient_has_k_entries():
    lin, p, q = _linear_and_rotation()
    layer = SparseGradLinear(lin, p, q, k=10)
    x = torch.randn(3, 5, 8, dtype=D64, requires_grad=True)
    y, y0 = layer(x), lin(x)
    assert torch.allclose(y, y0, rtol=0, atol=1e-12)
    gy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, gy, retain_graph=True)
    (dx0,) = torch.autograd.grad(y0, x, gy)
    assert torch.allclose(dx, dx0, rtol=0, atol=1e-12)
    y.backward(gy)
    g = layer.weight_rot.sparse_grad  # moved out of .grad (dense clipping cannot take sparse tensors)
    assert layer.weight_rot.grad is None and g.is_sparse and g._nnz() == 10
    # the kept entries are the 10 largest of the exact rotated gradient P^T (g^T x) Q
    full = p.T @ (gy.reshape(-1, 24).T @ x.detach().reshape(-1, 8)) @ q
    assert torch.allclose(g.to_dense().abs().sum(), full.abs().flatten().topk(10).values.sum())
    assert torch.allclose(layer.bias.grad, gy.reshape(-1, 24).sum(0))  # bias: plain, not rotated


def test_export_gives_identical_outputs():
    lin, p, q = _linear_and_rotation(seed=1)
    layer = SparseGradLinear(lin, p, q, k=5)
    with torch.no_grad():
        layer.weight_rot.add_(torch.randn_like(layer.weight_rot))  # a trained W~
    x = torch.randn(7, 8, dtype=D64)
    out = layer.to_linear()
    assert type(out) is nn.Linear and torch.allclose(out(x), layer(x), rtol=0, atol=1e-12)


def test_lora_merge_is_exact():
    lin, _, _ = _linear_and_rotation()
    layer = LoRALinear(lin, rank=3, scale=0.5)
    assert torch.equal(layer(torch.ones(2, 8, dtype=D64)), lin(torch.ones(2, 8, dtype=D64)))  # B = 0 at start
    nn.init.normal_(layer.lora_b)
    x = torch.randn(6, 8, dtype=D64)
    assert torch.allclose(layer.to_linear()(x), layer(x), rtol=0, atol=1e-12)


def test_meprop_keeps_k_entries_per_output_gradient_row():
    g = torch.randn(5, 4, 24)
    kept = keep_topk_rows(g, 3)
    assert ((kept != 0).sum(-1) == 3).all()
    assert torch.equal(kept.abs().amax(-1), g.abs().amax(-1))
    lin, _, _ = _linear_and_rotation()
    layer = MePropLinear(lin, k=3)
    x = torch.randn(4, 8, dtype=D64, requires_grad=True)
    gy = torch.randn(4, 24, dtype=D64)
    layer(x).backward(gy)
    gs = keep_topk_rows(gy, 3)
    assert torch.allclose(x.grad, gs @ lin.weight) and torch.allclose(layer.weight.grad, gs.T @ x.detach())
    assert ((layer.weight.grad != 0).any(1).sum()) <= 4 * 3  # at most k rows of W per example


def test_topk_coo_exact_k_and_values():
    g = torch.randn(6, 9)
    s = topk_coo(g, 7)
    assert s._nnz() == 7 and s.is_coalesced()
    kept = s.to_dense()[s.to_dense() != 0].abs().sort().values
    assert torch.equal(kept, g.abs().flatten().topk(7).values.sort().values)


def test_registry_names_budget_and_did_you_mean():
    assert {"sparsegrad", "lora", "meprop", "topk", "full"} <= set(PEFT.names())
    with pytest.raises(ConfigError, match="did you mean 'sparsegrad'"):
        PEFT.check_name("sparsgrad", "--peft")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"budget must be in \(0, 1\]"):
            PEFT.build("topk", budget=bad)
    lora = PEFT.build("lora", budget=0.01)
    assert lora.rank_of(256, 64) == max(1, round(0.01 * 256 * 64 / 320))


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_ffn_mult_and_discovery(name):
    m = MODELS.build(name, 30, d=8, n_blocks=2, n_heads=1, max_len=6, ffn_mult=3)
    paths = ffn_modules(m)
    assert paths == {"up": ["blocks.0.up", "blocks.1.up"], "down": ["blocks.0.down", "blocks.1.down"]}
    assert m.get_submodule("blocks.0.up").weight.shape == (24, 8)
    assert MODELS.build("bert4rec", 30, d=8).blocks[0].up.out_features == 32  # BERT's 4x stays the default
    assert MODELS.build("sasrec", 30, d=8).blocks[0].up.out_features == 8     # SASRec's 1x stays the default


class _Custom(nn.Module):
    """A custom encoder that names its feed-forward linears."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.expand, self.shrink = nn.Linear(4, 16), nn.Linear(16, 4)

    def ffn_linears(self):
        return {"up": ["expand"], "down": ["shrink"]}

    def item_embeddings(self):
        return self.emb.weight[1:]

    def forward(self, items):
        x = self.emb(items)
        return x + self.shrink(torch.relu(self.expand(x)))


@pytest.mark.parametrize("name", ["topk", "lora", "meprop"])
def test_custom_encoder_attach_train_export(name):
    torch.manual_seed(0)
    m = _Custom()
    items = torch.randint(1, 11, (3, 5))
    before = m(items).detach()
    method = PEFT.build(name, budget=0.1)
    method.attach(m)
    assert torch.allclose(m(items), before, atol=1e-6)  # attaching changes no output
    assert not m.emb.weight.requires_grad
    opt = method.optimizer_factory(type("T", (), {"lr": 0.05, "betas": (0.9, 0.99), "weight_decay": 0.0})())(m)
    for _ in range(3):
        opt.zero_grad()
        m(items).square().mean().backward()
        opt.step()
    after = m(items).detach()
    assert not torch.allclose(after, before)
    method.export(m)
    assert type(m.expand) is nn.Linear and torch.allclose(m(items), after, atol=1e-6)


def test_no_ffn_linears_is_one_line_error():
    with pytest.raises(SeqrecError, match="no feed-forward linears"):
        ffn_modules(nn.Sequential(nn.Linear(2, 2)))


def test_combined_optimizer_state_round_trip_and_sparse_updates_only_k_values():
    lin, p, q = _linear_and_rotation()
    layer = SparseGradLinear(lin.float(), p, q, k=4)
    dense = torch.optim.AdamW([layer.bias], lr=0.1)
    opt = CombinedOptimizer([dense, torch.optim.SparseAdam([layer.weight_rot], lr=0.1)], [layer.weight_rot])
    x = torch.randn(5, 8)
    w0 = layer.weight_rot.detach().clone()
    layer(x).sum().backward()
    opt.step()
    assert int((layer.weight_rot.detach() != w0).sum()) == 4
    state = opt.state_dict()
    opt2 = CombinedOptimizer([torch.optim.AdamW([layer.bias], lr=0.1),
                              torch.optim.SparseAdam([layer.weight_rot], lr=0.1)], [layer.weight_rot])
    opt2.load_state_dict(state)
    assert len(opt2.param_groups) == 2 and opt2.param_groups[1]["lr"] == 0.1
    w = layer.weight_rot
    assert torch.equal(opt2.parts[1].state[w]["exp_avg"], opt.parts[1].state[w]["exp_avg"])
    opt.zero_grad()
    assert layer.bias.grad is None and layer.weight_rot.sparse_grad is None


def test_rotation_compacts_real_gradients_of_a_trained_sasrec(tiny_overrides, capsys):
    """The share of gradient energy in the top 1% of entries, original vs rotated (P^T G Q and the
    other orientation P^T G Q^T), on held-out batches of a briefly trained SASRec (ffn_mult=4)."""
    from seqrec.api import SeqRec
    from seqrec.peft.finetune import _gradient_source
    from seqrec.peft.sparse import collect_gradients
    from seqrec.registry import LOSSES

    ov = {**tiny_overrides, "model.d": 32, "model.n_blocks": 2, "model.ffn_mult": 4, "train.batch_size": 8}
    rec = SeqRec(overrides=ov).fit(log=lambda s: None)
    model = rec.model_
    source = _gradient_source(rec.cfg_, model, LOSSES.build("ce"), rec.data_, force=True)
    grads = collect_gradients(model, ffn_modules(model), source, 14)
    shares = {}
    for kind, g in grads.items():
        fit, held = g[:len(g) // 2], g[len(g) // 2:]  # rotations from the first batches, measured on the rest
        p, q = mode_factors(fit)
        shares[kind] = [sum(energy_share(x) for x in gs) / len(gs) for gs in
                        (held, [p.T @ x.double() @ q for x in held], [p.T @ x.double() @ q.T for x in held])]
    with capsys.disabled():
        print("\ntop-1% energy share (original, P^T G Q, P^T G Q^T):",
              {k: [round(v, 3) for v in s] for k, s in shares.items()})
    for kind, (orig, rot, _) in shares.items():
        assert rot > orig, (kind, shares)


def test_grow_items_keeps_trained_rows_and_moves_the_mask_row():
    from seqrec.peft.catalog import grow_items

    table = torch.randn(5 + 2, 3)  # padding, items 1..5, mask token
    other = torch.randn(7, 3)      # a tensor of the same shape that is not the item table
    out = grow_items({"emb": table, "pos": other}, ["emb"], 5, 8)
    assert out["emb"].shape == (8 + 2, 3) and torch.equal(out["emb"][:6], table[:6])
    assert torch.equal(out["emb"][-1], table[-1]) and torch.equal(out["pos"], other)
    assert out["emb"][6:9].abs().sum() > 0


@pytest.mark.parametrize("kind", ["sparsegrad", "meprop"])
def test_custom_backward_under_bf16_autocast(kind):
    """train.autocast=bf16: the saved weight stays float32 and the backward mixes no dtypes."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 16)
    layer = SparseGradLinear(lin, torch.eye(16), torch.eye(8), 200) if kind == "sparsegrad" else MePropLinear(lin, 16)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    assert torch.allclose(x.grad, torch.ones(4, 16) @ lin.weight.detach(), atol=0.05)  # k = everything kept
