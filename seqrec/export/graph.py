"""The exported graph: item-id history [B, L] -> user vector [B, d], the last position's hidden state.

``UserEncoder`` computes what ``seqrec.evaluation.user_vectors`` computes for one batch
(``seqrec.evaluation.encode.last_states``): for the built-in self-attention encoders the blocks but
the last run as the model runs them and the last block for the last query only; any other model
goes through ``model(items)[:, -1]``. It differs from ``encode._attention_last`` only in how the
attention mask is built: ONNX Runtime has no boolean ``EyeLike``, so the diagonal and the causal
triangle come from comparing position indices, which exports to plain ``Equal`` / ``LessOrEqual``.
The width check (``L <= max_len``) is left to the caller (``seqrec.serving`` truncates), since a
Python branch on a shape would be frozen into the graph at export time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqrec.evaluation.encode import _fast_path, _last_query  # the evaluation's own last-query block
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
        return _attention_last(self.model, items)


def _attention_last(model: nn.Module, items: torch.Tensor) -> torch.Tensor:
    """``encode._attention_last`` with the mask built from index comparisons (see the module doc)."""
    L = items.shape[1]
    valid = items != 0
    idx = torch.arange(L, device=items.device)
    x = model.item_emb(items)
    if model.scale_emb:
        x = x * math.sqrt(model.d)
    x = (x + model.pos_emb(L - 1 - idx)) * valid.unsqueeze(-1)  # right-aligned positions
    allowed = valid[:, None, None, :]
    if model.causal:
        allowed = allowed & (idx[None, :] <= idx[:, None])
    allowed = allowed | (idx[:, None] == idx[None, :])  # as forward: every query sees itself
    mask = torch.where(allowed, 0.0, float("-inf")).to(x.dtype)
    keep = valid.unsqueeze(-1).to(x.dtype)
    for block in model.blocks[:-1]:
        x = block(x, mask) * keep
    last = _last_query(model.blocks[-1], x, mask[:, :, -1:]) * keep[:, -1]
    return model.ln_f(last) * keep[:, -1]
