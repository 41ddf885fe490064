"""GRU4Rec-style encoder: a GRU over item embeddings. Also the worked example of
docs/custom_models.md — everything a custom encoder needs is in this file."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqrec.models.base import Encoder, Float, Int, check_int, check_prob
from seqrec.models.table import ItemTable


class GRU4Rec(Encoder):
    """GRU over item embeddings (Hidasi et al., 2016), trained seq-to-seq with a tied output matrix.

    Item table [C+1, d] (row 0 = padding); hidden state at t summarises items <= t (causal).
    ``n_blocks`` stacked GRU layers; ``max_len``: the longest history it reads (training windows and
    evaluation inputs are cut to it; the GRU itself takes any length).
    """

    causal = True
    renamed = {"n_layers": "n_blocks"}  # old config key -> one-line ConfigError naming the new one

    def __init__(self, n_items: int, d: Int = 64, n_blocks: Int = 1, max_len: Int = 200, dropout: Float = 0.2):
        super().__init__(n_items, d)  # validates and stores n_items, d
        self.n_blocks = check_int("n_blocks", n_blocks, 1)
        self.max_len = check_int("max_len", max_len, 1)
        self.dropout = check_prob("dropout", dropout)
        self.item_emb = ItemTable(n_items, self.d)
        self.item_emb.reset_(lambda t: nn.init.normal_(t, std=self.d ** -0.5))
        self.drop = nn.Dropout(self.dropout)
        self.gru = nn.GRU(self.d, self.d, self.n_blocks, batch_first=True,
                          dropout=self.dropout if self.n_blocks > 1 else 0.0)

    def item_embeddings(self) -> torch.Tensor:
        """[C, d]: the input table's item rows, the parameter itself (tied)."""
        return self.item_emb.weight

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: int64 [B, L], left-padded with 0 -> hidden [B, L, d] (0 at padding)."""
        B, L = items.shape
        valid = items != 0
        n = valid.sum(1)  # real length of each row
        # The GRU must not run over the left padding (its biases would change the state), so shift
        # each row left to start at column 0, run a packed GRU, and shift the outputs back.
        col = torch.arange(L, device=items.device)
        shift = (L - n).unsqueeze(1)  # [B, 1] padding width
        right = items.gather(1, (col + shift) % L)  # row b: its n items, then padding
        packed = pack_padded_sequence(self.drop(self.item_emb(right)), n.clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)
        idx = ((col - shift) % L).unsqueeze(-1).expand(B, L, self.d)
        return self.drop(out.gather(1, idx)) * valid.unsqueeze(-1)
