"""Dropout whose CPU mask comes from numpy's bulk generator.

torch's CPU ``bernoulli_`` draws one number at a time from its Mersenne Twister: 21 ms for one
[128, 200, 64] mask on one core, ~0.14 s of a 0.9 s ML-1M SASRec step over its nine dropouts
(docs/benchmarks.md, session 20). numpy's SFC64 fills the same mask in ~5 ms. Each mask's seed is
drawn from torch's generator, so training stays a function of ``train.seed`` (and of the rank and
step under DDP), and a resumed run, which restores torch's generator, draws the same masks.
On other devices, and for p = 0 or in eval mode, this is ``nn.Dropout``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # the keep test is u >= round(p * LEVELS) on uniform 16-bit u: p within 1/131,072


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU tensor of ``shape``: 1 / (1 - p) with probability 1 - p, else 0 (p in [0, 1))."""
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    n = int(np.prod(shape))
    u = np.random.Generator(np.random.SFC64(seed)).integers(0, LEVELS, n, dtype=np.uint16)
    keep = torch.from_numpy((u >= round(p * LEVELS)).astype(np.float32)).view(shape)
    return keep.mul_(1.0 / (1.0 - p)).to(dtype)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the CPU mask of ``keep_mask``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p, x.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same parameters and state) drawing its CPU masks with ``keep_mask``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
