"""SASRec (causal) and BERT4Rec (bidirectional) self-attention encoders.

Both share one pre-LN transformer stack. Positions are counted from the RIGHT end of the padded
window (the last column is position 0), so with left padding the most recent item always gets the
same positional embedding whatever the batch's padded width: a batch padded to its own longest
sequence gives exactly the same hidden state for the last item as one padded to ``max_len``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.errors import ConfigError
from seqrec.models.base import Encoder, Float, Int, check_int, check_prob
from seqrec.models.dropout import Dropout
from seqrec.models.dropout import dropout as masked_dropout
from seqrec.models.table import ItemTable

Layout = Literal["pre_ln", "sasrec"]
LAYOUTS = get_args(Layout)


class Block(nn.Module):
    """Transformer block in one of two layouts:

    - ``pre_ln``: x + Attn(LN(x)), then x + FFN(LN(x)) (the usual modern layout);
    - ``sasrec``: the layout of the SASRec reference code (Kang & McAuley; also its PyTorch ports used
      by later CE papers): queries from LN(x) but keys/values from the raw x, the residual taken
      from LN(x); then h = LN(.), h + FFN(h).

    The FFN linears are named ``up`` (d -> d_ff) and ``down`` (d_ff -> d) so that fine-tuning methods
    (seqrec.peft) can find them.
    """

    def __init__(self, d: int, n_heads: int, d_ff: int, dropout: float, act: str, layout: str = "pre_ln"):
        super().__init__()
        self.n_heads, self.p, self.layout = n_heads, dropout, layout
        self.ln1 = nn.LayerNorm(d, eps=1e-8)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=1e-8)
        self.up = nn.Linear(d, d_ff)
        self.down = nn.Linear(d_ff, d)
        self.act = nn.ReLU() if act == "relu" else nn.GELU()
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, L, d]; mask: bool [B, 1, L, L], True where query i may attend to key j."""
        B, L, d = x.shape
        h = self.ln1(x)
        if self.layout == "sasrec":
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(h, w[:d], b[:d])
            k, v = F.linear(x, w[d:], b[d:]).split(d, dim=2)
            x = h  # the residual branch starts from the normalised input
        else:
            q, k, v = self.qkv(h).split(d, dim=2)
        q, k, v = (t.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.p if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu":
            # SDPA's own maths, with the attention dropout's mask from seqrec.models.dropout (SDPA's
            # CPU dropout draws its mask with torch's slow bernoulli_)
            s = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5).masked_fill_(~mask, float("-inf"))
            y = masked_dropout(s.softmax(-1), p, True) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, L, d)))
        if self.layout == "sasrec":
            x = self.ln2(x)
            return x + self.drop(self.down(self.drop(self.act(self.up(x)))))
        return x + self.drop(self.down(self.drop(self.act(self.up(self.ln2(x))))))


class _SelfAttentionEncoder(Encoder):
    """Shared body: embeddings -> n_blocks pre-LN blocks -> final LayerNorm, padding rows zeroed."""

    n_special: int = 1  # model ids besides items 1..C: padding (+ mask token, a row of item_emb.extra)
    act: str = "relu"
    ff_mult: int = 1  # the default of ``ffn_mult`` (seqrec.plan reads it from the class)
    scale_emb: bool = True

    def _setup(self, n_items: int, d: int, n_blocks: int, n_heads: int, max_len: int, dropout: float,
               block: Layout = "pre_ln", ffn_mult: int = 1) -> None:
        super().__init__(n_items, d)
        if block not in LAYOUTS:
            raise ConfigError(f"model.block must be one of {', '.join(LAYOUTS)}, got {block!r}")
        self.block = block
        self.n_blocks = check_int("n_blocks", n_blocks, 1)
        self.n_heads = check_int("n_heads", n_heads, 1)
        self.max_len = check_int("max_len", max_len, 1)
        self.dropout = check_prob("dropout", dropout)
        self.ffn_mult = check_int("ffn_mult", ffn_mult, 1)
        if self.d % self.n_heads:
            raise ConfigError(f"model.d={self.d} must be divisible by model.n_heads={self.n_heads}")
        self.item_emb = ItemTable(n_items, self.d, self.n_special - 1)
        self.pos_emb = nn.Embedding(self.max_len, self.d)
        self.emb_drop = Dropout(self.dropout)
        d_ff = self.ffn_mult * self.d
        self.blocks = nn.ModuleList(
            Block(self.d, self.n_heads, d_ff, self.dropout, self.act, block) for _ in range(self.n_blocks))
        self.ln_f = nn.LayerNorm(self.d, eps=1e-8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the SASRec reference implementations: Xavier-normal for every matrix, zero biases. The
        # item table first (it is registered first), drawn as the one [1 + C + extra, d] matrix it was.
        self.item_emb.reset_(nn.init.xavier_normal_)
        for name, p in self.named_parameters():
            if name.startswith("item_emb."):
                continue
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def ffn_linears(self) -> dict[str, list[str]]:
        """The feed-forward linears by kind (``seqrec.peft`` adapts them): "up" (d -> ffn_mult*d) and
        "down" (ffn_mult*d -> d) of every block, as module paths."""
        return {kind: [f"blocks.{i}.{kind}" for i in range(self.n_blocks)] for kind in ("up", "down")}

    def item_embeddings(self) -> torch.Tensor:
        """[C, d]: the input table's item rows, the parameter itself (tied input/output embeddings)."""
        return self.item_emb.weight

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: int64 [B, L], L <= max_len, left-padded with 0 -> hidden float [B, L, d] (0 at padding)."""
        B, L = items.shape
        if L > self.max_len:
            raise ValueError(f"sequence width {L} exceeds model.max_len={self.max_len}; truncate the input")
        valid = items != 0  # [B, L]
        pos = torch.arange(L - 1, -1, -1, device=items.device)  # right-aligned: last column is 0
        x = self.item_emb(items)
        if self.scale_emb:
            x = x * math.sqrt(self.d)
        x = self.emb_drop(x + self.pos_emb(pos)) * valid.unsqueeze(-1)
        mask = valid[:, None, None, :]  # key is a real item: [B, 1, 1, L]
        if self.causal:
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=items.device).tril()
        # Every query may see itself: a padding query then has one key instead of none (an all-masked
        # row gives NaN on older torch / some kernels). A real query's own key is already allowed.
        mask = mask | torch.eye(L, dtype=torch.bool, device=items.device)
        keep = valid.unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.ln_f(x) * keep


class SASRec(_SelfAttentionEncoder):
    """SASRec (Kang & McAuley, ICDM 2018): causal self-attention, position t predicts item t+1.

    Item table [C+1, d] (row 0 = padding) scaled by sqrt(d), learned positional embeddings
    (right-aligned, see module doc), blocks with a ReLU point-wise FFN (d -> ffn_mult*d -> d; the paper's
    is d -> d, ``ffn_mult=1``) in ``block`` layout
    (``pre_ln`` or the reference code's ``sasrec``, see ``Block``), final LayerNorm; the output
    matrix is the input table's rows 1..C (tied).
    """

    causal = True

    def __init__(self, n_items: int, d: Int = 64, n_blocks: Int = 2, n_heads: Int = 1, max_len: Int = 200,
                 dropout: Float = 0.2, block: Layout = "pre_ln", ffn_mult: Int = 1):
        self._setup(n_items, d, n_blocks, n_heads, max_len, dropout, block, ffn_mult)


class BERT4Rec(_SelfAttentionEncoder):
    """BERT4Rec (Sun et al., CIKM 2019): bidirectional self-attention over a sequence with masked items.

    Model ids: 0 = padding, 1..C = items (``item_emb.weight`` [C, d]), C+1 = ``mask_token``
    (``item_emb.extra`` [1, d]). GELU FFN
    (d -> ffn_mult*d -> d, 4 as in BERT); no causal mask (only padding keys are hidden). ``mask_prob`` is read by
    the trainer's masked-item sampler; at evaluation the mask token goes after the last item.
    """

    causal = False
    n_special = 2
    act = "gelu"
    ff_mult = 4
    scale_emb = False

    def __init__(self, n_items: int, d: Int = 64, n_blocks: Int = 2, n_heads: Int = 2, max_len: Int = 200,
                 dropout: Float = 0.2, mask_prob: Float = 0.2, ffn_mult: Int = 4):
        self._setup(n_items, d, n_blocks, n_heads, max_len, dropout, ffn_mult=ffn_mult)
        self.mask_prob = check_prob("mask_prob", mask_prob)
        if self.mask_prob == 0.0:
            raise ConfigError("model.mask_prob must be > 0 (BERT4Rec learns only from masked items), got 0")
        self.mask_token = self.n_items + 1
