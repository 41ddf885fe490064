"""The trainer's optimiser (training/optim.py): Adam through torch's fused kernel."""

from __future__ import annotations

import torch

from seqrec.config import Config
from seqrec.registry import MODELS
from seqrec.training.optim import build_optimizer


def test_adam_is_fused_on_cpu() -> None:
    model = MODELS.build("sasrec", 300, d=8, n_heads=1, n_blocks=1, max_len=5)
    opt = build_optimizer(model, Config().train)
    assert type(opt) is torch.optim.Adam and opt.defaults["fused"]
    adamw = build_optimizer(model, Config().train.model_copy(update={"optimizer": "adamw"}))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["fused"]


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
