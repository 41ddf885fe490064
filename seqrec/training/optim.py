"""The optimiser a training run steps: built from ``train.optimizer`` unless the caller brings one.

``Trainer(optimizer=factory)`` takes any ``factory(model) -> torch.optim.Optimizer`` (fine-tuning
builds its own: sparse updates for some weights, dense for the rest); checkpoints save and restore
whatever it returns through ``state_dict`` / ``load_state_dict``.

Adam runs as torch's **fused** kernel on CPU and CUDA: one pass over weights, gradient and both
moments, the same algorithm (equal up to float rounding); at a 1M x 64 item table ~4x faster per
step than the per-tensor loop on this CPU. A lazy variant that updates only the item rows a step
touches (as ``torch.optim.SparseAdam``) was measured and removed: at 163k items it reached 0.64x
Adam's test NDCG@10 after the same steps, and next to the fused kernel it was not even faster
(docs/benchmarks.md, "Adam over a million item rows").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OptimizerFactory = Callable[[torch.nn.Module], "torch.optim.Optimizer | None"]


def _fused(params: list[torch.Tensor]) -> bool:
    """torch's fused Adam kernel takes floating-point tensors on CPU and CUDA."""
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)


def build_optimizer(model: torch.nn.Module, train: Any) -> torch.optim.Optimizer | None:
    """Adam or AdamW (``train.optimizer``, fused where torch has the kernel) over the parameters that
    require grad (None if none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    opt_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay,
                   fused=True if _fused(params) else None)
