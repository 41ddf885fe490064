"""LazyAdam: the item table's rows update only where a step has a gradient (training/optim.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from seqrec.config import Config, upgrade_saved
from seqrec.registry import MODELS
from seqrec.training.optim import LazyAdam, build_optimizer


def _pair(decoupled: bool = False, wd: float = 0.0) -> tuple[torch.nn.Parameter, torch.nn.Parameter,
                                                            torch.optim.Optimizer,
                                                               torch.optim.Optimizer]:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(50, 6))
    b = torch.nn.Parameter(a.detach().clone())
    dense_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    dense = dense_cls([a], lr=1e-2, betas=(0.9, 0.98), weight_decay=wd)
    lazy = LazyAdam([{"params": [b], "lazy": True}], lr=1e-2, betas=(0.9, 0.98), weight_decay=wd,
                    decoupled_weight_decay=decoupled)
    return a, b, dense, lazy


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.01), (True, 0.01)])
def test_every_row_touched_is_adam(decoupled: bool, wd: float) -> None:
    a, b, dense, lazy = _pair(decoupled, wd)
    for step in range(5):
        g = torch.randn(50, 6, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        dense.step()
        lazy.step()
    torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-6)


def test_untouched_rows_keep_weights_and_moments() -> None:
    a, b, dense, lazy = _pair()
    g = torch.randn(50, 6)
    b.grad = g.clone()
    lazy.step()  # every row moves once, every moment is non-zero
    before = b.detach().clone()
    m, v = (lazy.state[b][k].clone() for k in ("exp_avg", "exp_avg_sq"))
    g2 = torch.zeros(50, 6)
    g2[[3, 17]] = torch.randn(2, 6)
    b.grad = g2
    lazy.step()
    moved = (b.detach() != before).any(dim=1).nonzero().squeeze(1).tolist()
    assert moved == [3, 17]
    untouched = [i for i in range(50) if i not in (3, 17)]
    assert torch.equal(lazy.state[b]["exp_avg"][untouched], m[untouched])
    assert torch.equal(lazy.state[b]["exp_avg_sq"][untouched], v[untouched])
    assert float(lazy.state[b]["step"]) == 2.0


def test_state_dict_round_trip_continues_identically() -> None:
    _, b, _, lazy = _pair()
    b.grad = torch.randn(50, 6)
    lazy.step()
    b2 = torch.nn.Parameter(b.detach().clone())
    lazy2 = LazyAdam([{"params": [b2], "lazy": True}], lr=1e-2, betas=(0.9, 0.98))
    lazy2.load_state_dict(copy.deepcopy(lazy.state_dict()))
    g = torch.zeros(50, 6)
    g[:10] = torch.randn(10, 6)
    b.grad, b2.grad = g.clone(), g.clone()
    lazy.step()
    lazy2.step()
    assert torch.equal(b.detach(), b2.detach())


def test_adam_is_fused_and_lazy_items_is_opt_in() -> None:
    train = Config().train
    model = MODELS.build("sasrec", 300, d=8, n_heads=1, n_blocks=1, max_len=5)
    opt = build_optimizer(model, train)
    assert type(opt) is torch.optim.Adam and opt.defaults["fused"]
    lazy = build_optimizer(model, train.model_copy(update={"lazy_items": True}))
    assert isinstance(lazy, LazyAdam)
    lazy_params = [p for g in lazy.param_groups if g.get("lazy") for p in g["params"]]
    assert len(lazy_params) == 1 and lazy_params[0] is model.item_emb.weight


def test_fused_adam_is_adam() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(40, 6))
    b = torch.nn.Parameter(a.detach().clone())
    plain = torch.optim.Adam([a], lr=1e-2, betas=(0.9, 0.98), foreach=False)
    fused = torch.optim.Adam([b], lr=1e-2, betas=(0.9, 0.98), fused=True)
    for step in range(5):
        g = torch.randn(40, 6, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        plain.step()
        fused.step()
    torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-6)


def test_runs_saved_before_lazy_items_resume_unchanged() -> None:
    tree = Config().to_dict()
    del tree["train"]["lazy_items"]
    assert upgrade_saved(tree)["train"]["lazy_items"] is False  # no "setting changed" on resume
