"""The exported graph: item-id history [B, L] -> user vector [B, d], the last position's hidden state.

``UserEncoder`` computes what ``seqrec.evaluation.user_vectors`` computes for one batch
(``seqrec.evaluation.encode.last_states``): for the built-in self-attention encoders the blocks but
the last run as the model runs them and the last block for the last query only; any other model
goes through ``model(items)[:, -1]``. It calls ``encode.attention_last``, the evaluation's own
computation without its width check (``L <= max_len`` is left to the caller: ``seqrec.serving``
truncates), since a Python branch on a shape would be frozen into the graph at export time.
"""

from __future__ import annotations

import torch
from torch import nn

from seqrec.evaluation.encode import _fast_path, attention_last  # the evaluation's own computation
from seqrec.models.base import Encoder


class UserEncoder(nn.Module):
    """``items`` int64 [B, L] (left-padded with 0, L <= max_len; BERT4Rec's mask token already
    appended by the caller, as ``evaluation.ranking.model_inputs`` does) -> float32 [B, d]."""

    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model.eval()
        self.fast = _fast_path(self.model)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.model(items)[:, -1]
        return attention_last(self.model, items)

