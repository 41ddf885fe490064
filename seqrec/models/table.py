"""The item table shared by the encoders' input lookup and the losses' scoring matrix.

``weight`` [C, d] holds the catalog only (row c = model id c + 1), so ``item_embeddings()`` is the
parameter itself, not a slice of a [C + 1, d] table: the loss's dense [C, d] gradient then becomes
the parameter's gradient as it is. With a padding row inside the table, every step built two more
[C + 1, d] buffers (the slice's backward and the lookup's dense gradient) and added them: at a
million items that was most of a CPU step, page faults included (docs/benchmarks.md). The lookup's
gradient is sparse (the B x L rows it read), added into the loss's dense one in place.

Padding (id 0) reads as a zero vector and learns nothing; ids above C are the ``n_extra`` special
rows (BERT4Rec's mask token), a separate parameter ``extra`` [n_extra, d].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ItemTable(nn.Module):
    """Model ids int64 [...] (0 padding, 1..C items, C+1.. special) -> vectors [..., d]."""

    def __init__(self, n_items: int, d: int, n_extra: int = 0) -> None:
        super().__init__()
        self.n_items, self.n_extra = n_items, n_extra
        self.weight = nn.Parameter(torch.empty(n_items, d))
        self.extra = nn.Parameter(torch.empty(n_extra, d)) if n_extra else None
        self._register_load_state_dict_pre_hook(_split_old_layout, with_module=True)
        # drawn as nn.Embedding draws its table: the random stream, so every later draw, stays as it was
        self.reset_(nn.init.normal_)

    @property
    def num_embeddings(self) -> int:
        """Rows of the old single table: padding, the items and the special rows."""
        return 1 + self.n_items + self.n_extra

    def reset_(self, init: Callable[[torch.Tensor], Any]) -> None:
        """Initialise as ``init`` would the single [1 + C + n_extra, d] table (same random draws, so
        the same values as before the split), padding row dropped."""
        full = torch.empty(self.num_embeddings, self.weight.shape[1], device=self.weight.device)
        init(full)
        with torch.no_grad():
            self.weight.copy_(full[1:self.n_items + 1])
            if self.extra is not None:
                self.extra.copy_(full[self.n_items + 1:])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # sparse: the lookup's gradient holds only the rows read (CPU and CUDA support it)
        x = F.embedding((ids - 1).clamp(0, self.n_items - 1), w, sparse=w.device.type in ("cpu", "cuda"))
        if self.extra is not None:
            special = ids > self.n_items
            x = torch.where(special.unsqueeze(-1), self.extra[(ids - self.n_items - 1).clamp(0, self.n_extra - 1)], x)
        return x * (ids != 0).unsqueeze(-1).to(x.dtype)


def _split_old_layout(module: ItemTable, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """A state dict of the single-table layout (``weight`` [1 + C + n_extra, d], saved before the
    split) loads into this one: row 0 dropped, the special rows moved to ``extra``."""
    key = prefix + "weight"
    w = state.get(key)
    if w is not None and w.dim() == 2 and w.shape[0] == module.num_embeddings and prefix + "extra" not in state:
        state[key] = w[1:module.n_items + 1]
        if module.extra is not None:
            state[prefix + "extra"] = w[module.n_items + 1:]


def is_old_layout(state: dict[str, Any], n_items: int) -> bool:
    """Whether a model state dict has the single [1 + C + ..., d] item table (before the split)."""
    w = state.get("item_emb.weight")
    return w is not None and w.shape[0] > n_items
