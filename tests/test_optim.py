"""LazyAdam: the item table's rows update only where a step has a gradient (training/optim.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from seqrec.config import Config, upgrade_saved
from seqrec.registry import MODELS
from seqrec.training.optim import LAZY_ITEMS_AUTO, LazyAdam, build_optimizer, lazy_items_on


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


def test_auto_turns_on_from_the_threshold_and_builds_two_groups() -> None:
    assert not lazy_items_on("auto", LAZY_ITEMS_AUTO - 1) and lazy_items_on("auto", LAZY_ITEMS_AUTO)
    assert lazy_items_on(True, 10) and not lazy_items_on(False, 10**7)
    train = Config().train
    small = MODELS.build("sasrec", 100, d=8, n_heads=1, n_blocks=1, max_len=5)
    assert type(build_optimizer(small, train)) is torch.optim.Adam
    big = MODELS.build("sasrec", LAZY_ITEMS_AUTO, d=2, n_heads=1, n_blocks=1, max_len=5)
    opt = build_optimizer(big, train)
    assert isinstance(opt, LazyAdam)
    lazy_params = [p for g in opt.param_groups if g.get("lazy") for p in g["params"]]
    assert len(lazy_params) == 1 and lazy_params[0] is big.item_emb.weight
    assert type(build_optimizer(big, train.model_copy(update={"lazy_items": False}))) is torch.optim.Adam


def test_runs_saved_before_lazy_items_resume_with_dense_adam() -> None:
    tree = Config().to_dict()
    del tree["train"]["lazy_items"]
    assert Config.from_tree(upgrade_saved(tree)).train.lazy_items is False
    assert Config.from_tree(tree).train.lazy_items == "auto"  # a new config typed by a user
