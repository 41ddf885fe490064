"""``seqrec plan``: predicted peak memory of one training step, per component and per loss.

Pick a loss that fits before training: parameters, their gradients, Adam's two moments, the
transformer's saved activations and the loss's own extra memory (``Loss.predict_bytes``, checked
against ``seqrec bench losses``), for the configured loss and for every registered loss.
"""

from __future__ import annotations

from typing import Any

from seqrec.errors import ConfigError

F32 = 4


def _model_shape(model: str) -> tuple[int, int]:
    """(extra item-table rows, FFN width multiplier) of a transformer model, from its class."""
    from seqrec.registry import MODELS

    try:
        cls = MODELS.get(model)
    except ConfigError:  # not a registered model: the transformer defaults
        return 1, 1
    return int(getattr(cls, "n_special", 1)), int(getattr(cls, "ff_mult", 1))


def predict_memory(n_items: int, batch_size: int, max_len: int, d: int, n_blocks: int, n_heads: int,
                   loss_name: str, loss_params: dict[str, Any] | None = None, tokens: int | None = None,
                   model: str = "sasrec", optimizer_states: int = 2, ffn_mult: int | None = None) -> dict[str, int]:
    """Predicted peak bytes of one float32 training step of a pre-LN transformer encoder.

    n_items: catalog size C; batch_size x max_len: the padded batch the encoder sees; tokens: the
    number N of positions with a target that reach the loss (default batch_size * max_len, the upper
    bound); optimizer_states: float32 tensors per parameter (Adam: 2); ffn_mult: the feed-forward
    width / d (``model.ffn_mult``; None: the model class's default). The loss is sized with
    training's capacity rule (``ctx.capacity`` = batch_size x max_len).
    Returns bytes per component: parameters, gradients, optimizer_state, activations, loss, total.
    """
    from seqrec.registry import LOSSES

    n_special, ff_mult = _model_shape(model)
    d_ff = (ffn_mult or ff_mult) * d
    per_block = (4 * d * d + 4 * d) + (2 * d * d_ff + d_ff + d) + 4 * d  # attention, FFN, 2 LayerNorms
    # item rows + special rows (BERT4Rec's mask token): padding has no row (seqrec.models.table)
    n_params = (n_items + n_special - 1) * d + max_len * d + n_blocks * per_block + 2 * d
    t = batch_size * max_len
    n = t if tokens is None else tokens
    # saved for backward per block (float32 unless noted): LN1 in/out, q, k, v, attention output,
    # projection input, LN2 in/out, residual (10 [T, d]); FFN up output, activation output, dropout
    # mask (3 [T, d_ff]); attention probabilities, their dropped copy and the dropout mask
    # (≈ 2.25 [B, h, L, L]); plus the embedding lookup, its dropout and the final LayerNorm (4 [T, d])
    block = (10 * t * d + 3 * t * d_ff) * F32 + int(2.25 * batch_size * n_heads * max_len * max_len * F32)
    # + the [N, d] hidden states gathered for the loss
    activations = n_blocks * block + 4 * t * d * F32 + n * d * F32
    loss = LOSSES.build(loss_name, **(loss_params or {})).predict_bytes(n, n_items, d, F32, capacity=t)
    # predict_bytes (what `seqrec bench losses` measures) includes the [C, d] gradient of the item
    # embeddings, which "gradients" already counts here
    loss = max(loss - n_items * d * F32, 0)
    out = {"parameters": n_params * F32, "gradients": n_params * F32,
           "optimizer_state": optimizer_states * n_params * F32, "activations": activations,
           "loss": int(loss)}
    out["total"] = sum(out.values())
    return out


def fmt_bytes(b: float) -> str:
    for unit, k in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if b >= k:
            return f"{b / k:,.1f} {unit}"
    return f"{int(b)} B"


def catalog_size(cfg: Any) -> int:
    from seqrec.data import load_dataset

    data = load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir, fmt=cfg.data.format,
                        split=cfg.data.split, **(cfg.data.options or {}))
    return data.n_items
