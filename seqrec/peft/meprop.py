"""MeProp (Sun et al., ICML 2017): backpropagate only the top-k entries of each output-gradient row.

For a linear y = x W^T + b and output gradient g [N, d_out], each row of g keeps its k largest
entries by magnitude (k = max(1, round(budget * d_out))), the rest set to 0; that sparse g gives the
input gradient (g W), the weight gradient (g^T x: per example only k rows of W) and the bias gradient.
The weights are dense parameters (AdamW); export is the same linear.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.peft.base import PeftMethod, plain_linear


def keep_topk_rows(g: torch.Tensor, k: int) -> torch.Tensor:
    """``g`` [..., n] with all but the ``k`` largest-magnitude entries of each row set to 0."""
    idx = g.abs().topk(min(k, g.shape[-1]), dim=-1, sorted=False).indices
    return torch.zeros_like(g).scatter_(-1, idx, g.gather(-1, idx))


class MePropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.k, ctx.has_bias = k, bias is not None
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gs = keep_topk_rows(g.to(w.dtype), ctx.k)  # under autocast g may be bf16: work in the weight's dtype
        g2 = gs.reshape(-1, gs.shape[-1])
        dx = gs @ w if ctx.needs_input_grad[0] else None
        dw = g2.T @ x.reshape(-1, x.shape[-1]).to(w.dtype) if ctx.needs_input_grad[1] else None
        db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


class MePropLinear(nn.Module):
    """A linear whose backward keeps ``k`` entries of each output-gradient row."""

    def __init__(self, linear: nn.Linear, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MePropFunction.apply(x, self.weight, self.bias, self.k)

    def to_linear(self) -> nn.Linear:
        return plain_linear(self.weight.detach(), None if self.bias is None else self.bias.detach())


class MeProp(PeftMethod):
    """MeProp with k = max(1, round(budget * d_out)) entries per output-gradient row."""

    def wrap(self, linear: nn.Linear, kind: str) -> nn.Module:
        return MePropLinear(linear, max(1, round(self.budget * linear.weight.shape[0])))
