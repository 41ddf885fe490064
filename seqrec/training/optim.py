"""The optimiser a training run steps: built from ``train.optimizer`` unless the caller brings one.

``Trainer(optimizer=factory)`` takes any ``factory(model) -> torch.optim.Optimizer`` (fine-tuning
builds its own: sparse updates for some weights, dense for the rest); checkpoints save and restore
whatever it returns through ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OptimizerFactory = Callable[[torch.nn.Module], "torch.optim.Optimizer | None"]


def build_optimizer(model: torch.nn.Module, train: Any) -> torch.optim.Optimizer | None:
    """Adam or AdamW (``train.optimizer``) over the parameters that require grad (None if none)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    opt_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
