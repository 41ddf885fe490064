"""Query vectors for evaluation and ``recommend``: the hidden state of each history's last position.

Evaluation needs one vector per user, the last position's, but ``model.forward`` computes all L.
For the built-in self-attention encoders (SASRec, BERT4Rec) ``last_states`` runs every block but
the last as the model does and the last block for the last query only: keys and values still need
every position, but the last block's query, attention rows, output projection, FFN and the final
LayerNorm are computed once per sequence instead of L times. The boolean attention mask is turned
into an additive float mask once per batch instead of once per block. Any other model (a plug-in,
a GRU, a subclass overriding ``forward``) goes through ``model(items)[:, -1]``.

The result equals ``model(items)[:, -1]`` up to float rounding (differently shaped matmuls, ~1e-6);
``tests/test_evaluation_speed.py`` checks it for both block layouts and BERT4Rec.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.models.base import Encoder
from seqrec.models.transformer import Block, _SelfAttentionEncoder

# Users per encoder call are chosen so that one call holds at most this many (padded) positions:
# the [B, 1, L, L] attention mask and the [B, L, d] activations then stay cache-sized. Measured on the
# 2-core Xeon (docs/benchmarks.md, "Evaluation speed"): 256 users x 200 items encodes ML-1M ~1.8x faster
# than 1,024 x 200, while short histories still go in large batches.
ENCODE_TOKENS = 256 * 200


def encode_batches(lengths: np.ndarray, max_users: int, tokens: int | None = None) -> Iterator[np.ndarray]:
    """Rows in order of length, cut into batches of at most ``max_users`` rows and ``tokens`` (default
    ``ENCODE_TOKENS``) padded positions (rows x the batch's longest length; at least one row) -> index arrays."""
    tokens = ENCODE_TOKENS if tokens is None else tokens
    order = np.argsort(lengths, kind="stable")
    lo = 0
    while lo < len(order):
        hi = min(lo + max_users, len(order))
        while True:  # lengths ascend, so a batch is as wide as its last row; each pass shrinks it
            width = max(int(lengths[order[hi - 1]]), 1)
            if hi - lo == 1 or (hi - lo) * width <= tokens:
                break
            hi = lo + max(1, tokens // width)
        yield order[lo:hi]
        lo = hi


def encode_context(dtype: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``eval.encode_dtype``: "float32" (exact, the default) or "bfloat16" (autocast: faster on CPUs
    with AMX/AVX-512-BF16 and on GPUs; query vectors change by ~1e-2, metrics slightly)."""
    if dtype == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def last_states(model: Encoder, items: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last position of each row: int64 [B, L] left-padded -> float [B, d].

    The model must be in eval mode (no dropout) for the fast path; in training mode it falls back.
    """
    if _fast_path(model):
        return _attention_last(model, items)
    return model(items)[:, -1]


def _fast_path(model: Encoder) -> bool:
    """True for the built-in self-attention encoders with their own forward and blocks, in eval mode."""
    return (isinstance(model, _SelfAttentionEncoder) and not model.training
            and type(model).forward is _SelfAttentionEncoder.forward
            and all(type(b) is Block for b in model.blocks))


def _attention_last(model: _SelfAttentionEncoder, items: torch.Tensor) -> torch.Tensor:
    """``_SelfAttentionEncoder.forward(items)[:, -1]`` computing the last block for the last query only."""
    B, L = items.shape
    if L > model.max_len:
        raise ValueError(f"sequence width {L} exceeds model.max_len={model.max_len}; truncate the input")
    return attention_last(model, items)


def attention_last(model: _SelfAttentionEncoder, items: torch.Tensor) -> torch.Tensor:
    """``_attention_last`` without the width check (the exported graph calls it: a Python branch on a
    shape would be frozen into the graph). The masks come from comparing position indices, which
    export to plain ``Equal`` / ``LessOrEqual`` (ONNX Runtime has no boolean ``EyeLike``)."""
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
    allowed = allowed | (idx[:, None] == idx[None, :])  # as forward: no empty rows
    # the additive mask scaled_dot_product_attention would build from the boolean one in every block
    mask = torch.where(allowed, 0.0, float("-inf")).to(x.dtype)
    keep = valid.unsqueeze(-1).to(x.dtype)
    for block in model.blocks[:-1]:
        x = block(x, mask) * keep
    last = _last_query(model.blocks[-1], x, mask[:, :, -1:]) * keep[:, -1]
    return model.ln_f(last) * keep[:, -1]


def _last_query(block: Block, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Block.forward(x, full_mask)[:, -1]`` (eval mode): x [B, L, d], mask [B, 1, 1, L] -> [B, d]."""
    B, L, d = x.shape
    heads = block.n_heads
    h = block.ln1(x)
    w, b = block.qkv.weight, block.qkv.bias
    if block.layout == "sasrec":  # queries and the residual from LN(x), keys and values from the raw x
        q = F.linear(h[:, -1:], w[:d], b[:d])
        k, v = F.linear(x, w[d:], b[d:]).split(d, dim=2)
        res = h[:, -1]
    else:
        q = F.linear(h[:, -1:], w[:d], b[:d])
        k, v = F.linear(h, w[d:], b[d:]).split(d, dim=2)
        res = x[:, -1]
    q = q.view(B, 1, heads, d // heads).transpose(1, 2)
    k, v = (t.view(B, L, heads, d // heads).transpose(1, 2) for t in (k, v))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, 1, d / heads]
    out = res + block.proj(y.reshape(B, d))
    if block.layout == "sasrec":
        out = block.ln2(out)
        return out + block.down(block.act(block.up(out)))
    return out + block.down(block.act(block.up(block.ln2(out))))
