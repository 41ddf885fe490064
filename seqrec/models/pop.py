"""Most-popular baseline, expressed as an Encoder so evaluation needs no special case."""

from __future__ import annotations

import numpy as np
import torch

from seqrec.errors import ConfigError
from seqrec.models.base import Encoder


class Pop(Encoder):
    """Scores every item by log(1 + training count), the same for every user.

    d = 1: ``forward`` returns ones [B, L, 1] and ``item_embeddings()`` the column [C, 1] of
    log(1 + count), so ``hidden @ item_embeddings().T`` ranks items by popularity (ties: the evaluator
    breaks them by lower item id). Not trained by gradients (``trainable = False``): the trainer calls
    ``fit_popularity(data.item_pop)`` instead. The counts live in a buffer, so they are saved with the
    state dict. It reads no history, so its input is one column (``max_len = 1``).
    """

    trainable = False
    max_len = 1

    def __init__(self, n_items: int):
        super().__init__(n_items, 1)
        self.register_buffer("scores", torch.zeros(self.n_items, 1))

    def fit_popularity(self, item_pop: np.ndarray) -> Pop:
        """item_pop: counts [C+1] indexed by model id (index 0, padding, is ignored). Returns self."""
        pop = np.asarray(item_pop, dtype=np.float64)
        if pop.shape != (self.n_items + 1,):
            raise ConfigError(f"pop: item_pop must have shape ({self.n_items + 1},) = n_items + 1, "
                              f"got {pop.shape}")
        if (pop[1:] < 0).any():
            raise ConfigError("pop: item_pop has negative counts")
        self.scores.copy_(torch.from_numpy(np.log1p(pop[1:])).view(-1, 1))
        return self

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, L] -> ones [B, L, 1]."""
        return torch.ones(*items.shape, 1, dtype=self.scores.dtype, device=items.device)

    def item_embeddings(self) -> torch.Tensor:
        """[C, 1]: log(1 + training count) of items 1..C."""
        return self.scores
