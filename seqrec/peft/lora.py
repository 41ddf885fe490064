"""LoRA (Hu et al., ICLR 2022) on the feed-forward linears: W x + s B A x, W frozen.

Rank matched to the sparse budget: r = max(1, round(k / (d_in + d_out))) with k = budget * d_out * d_in,
so r * (d_in + d_out) ~ k trainable values per linear. A is Kaiming-uniform, B zero (the model
starts exactly as trained); ``merge`` gives W + s B A, the same function as one plain linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.models.base import Float, Int
from seqrec.peft.base import PeftMethod, plain_linear


class LoRALinear(nn.Module):
    """y = x W^T + b + scale * (x A^T) B^T with W frozen; A [r, d_in], B [d_out, r] and b trained."""

    def __init__(self, linear: nn.Linear, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        d_out, d_in = linear.weight.shape
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        self.lora_a = nn.Parameter(torch.empty(rank, d_in, dtype=self.weight.dtype, device=self.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(d_out, rank, dtype=self.weight.dtype, device=self.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    def to_linear(self) -> nn.Linear:
        """The merged linear (W + scale B A, b)."""
        with torch.no_grad():
            return plain_linear(self.weight + self.scale * self.lora_b @ self.lora_a, self.bias)


class LoRA(PeftMethod):
    """LoRA with the rank matched to ``budget`` (or ``rank`` when given); ``scale`` multiplies B A."""

    def __init__(self, budget: Float = 0.01, rank: Int = 0, scale: Float = 1.0) -> None:
        super().__init__(budget)
        self.rank, self.scale = int(rank), float(scale)

    def rank_of(self, d_out: int, d_in: int) -> int:
        return self.rank if self.rank > 0 else max(1, round(self.k_of(d_out, d_in) / (d_in + d_out)))

    def wrap(self, linear: nn.Linear, kind: str) -> nn.Module:
        d_out, d_in = linear.weight.shape
        return LoRALinear(linear, self.rank_of(d_out, d_in), self.scale)
