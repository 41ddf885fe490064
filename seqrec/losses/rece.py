"""RECE, REduced Cross-Entropy (Gusak, Mezentsev, Oseledets, Frolov; CIKM 2024, arXiv 2408.02354).

An LSH-like approximation of CE. In each of r rounds, positions and items are hashed to the argmax
of n_b random projections, sorted by bucket id and cut into n_c equal chunks (the last ones padded).
Position chunk k is scored against item chunks k - n_ec ... k + n_ec: positions meet the items that
share (or neighbour) their bucket, i.e. the likely large logits. All rounds feed one softmax per
position; an item met m times (across rounds) has log m subtracted from each copy so it counts once.
The position's target and the padding are masked; the positive logit is appended as the class.

Beyond the reference implementation (same value and gradients): the reference materialises all
[N, r * (2 n_ec + 1) * C / n_c] candidate logits and their multiplicities by sorting. Here a custom
autograd function streams over groups of chunks with a running log-sum-exp and recomputes the block
in backward, and the multiplicity of (position, item) is counted from the chunk ids of both in every
round (|chunk_x - chunk_w| <= n_ec), so memory is one block plus the [C, d] gradient.
"""

from __future__ import annotations

import math

import torch

from seqrec.losses.base import Loss, LossContext, register_loss
from seqrec.losses.sce import (
    BLOCK_ELEMS,
    _autocast_state,
    _bmm,
    _check_size,
    _positive_logits,
)


@torch.no_grad()
def _bucket_ids(vectors: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """argmax_b <proj[b], vectors[i]> for every row, [M] int64, scanned in row chunks."""
    chunk = max(1, BLOCK_ELEMS // proj.shape[0])
    p = proj.T
    rows = range(0, vectors.shape[0], chunk)
    return torch.cat([(vectors[i:i + chunk].float() @ p).argmax(1) for i in rows])


KEYS = ("order_x", "order_w", "chunk_x", "chunk_w", "rank_w")


@torch.no_grad()
def rece_hash(hidden: torch.Tensor, item_emb: torch.Tensor, n_buckets: int, n_chunks: int, rounds: int,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Hash, sort and chunk positions and items for every round.

    Returns ``order_x`` [r, n_c * p] and ``order_w`` [r, n_c * q]: positions / items in chunk order
    (chunk k holds slots k*p ... k*p + p - 1), -1 for padding slots; and ``chunk_x`` [r, N],
    ``chunk_w`` [r, C]: each position's / item's chunk id; ``rank_w`` [r, C]: each item's slot in
    ``order_w``. p = ceil(N / n_c), q = ceil(C / n_c).
    """
    n, d = hidden.shape
    c = item_emb.shape[0]
    dev = hidden.device
    p, q = -(-n // n_chunks), -(-c // n_chunks)
    # int16 chunk ids halve the traffic of the multiplicity count, which runs over whole blocks
    cdt = torch.int16 if n_chunks < 2**15 else torch.int32
    out = {k: [] for k in KEYS}
    with torch.autocast(dev.type, enabled=False):
        for _ in range(rounds):
            proj = torch.randn(n_buckets, d, generator=generator, device=dev)
            for side, vecs, size in (("x", hidden.detach(), p), ("w", item_emb.detach(), q)):
                m = vecs.shape[0]
                order = torch.sort(_bucket_ids(vecs, proj), stable=True).indices
                rank = torch.empty(m, dtype=torch.long, device=dev)
                rank[order] = torch.arange(m, device=dev)
                pad = torch.full((n_chunks * size - m,), -1, dtype=torch.long, device=dev)
                out[f"order_{side}"].append(torch.cat([order, pad]))
                out[f"chunk_{side}"].append((rank // size).to(cdt))
                if side == "w":
                    out["rank_w"].append(rank)
    return {k: torch.stack(v) for k, v in out.items()}


class _Plan:
    """Static shapes of one RECE evaluation (chunks, window, group size)."""

    def __init__(self, n: int, c: int, d: int, n_chunks: int, n_extra: int, rounds: int) -> None:
        self.n_c, self.e, self.r = n_chunks, n_extra, rounds
        self.p, self.q = -(-n // n_chunks), -(-c // n_chunks)
        self.window = (2 * n_extra + 1) * self.q  # candidate items per position chunk
        per_chunk = self.p * self.window + self.window * d + self.p * d
        self.g = max(1, min(n_chunks, BLOCK_ELEMS // per_chunk))


def _block(hidden, item_emb, targets, h, plan: _Plan, rnd: int, k0: int, ac):
    """Logits float32 [G, p, window] of position chunks k0..k0+G-1 in round ``rnd``.

    Target and padding masked to -inf, log-multiplicity subtracted. Also returns the position and
    item indices (clamped to be valid gather indices), the positions' validity and the gathered rows.
    """
    p, q, e = plan.p, plan.q, plan.e
    k1 = min(plan.n_c, k0 + plan.g)
    ix = h["order_x"][rnd, k0 * p:k1 * p].view(k1 - k0, p)
    # item chunks k-e..k+e of every k in the group: slots (k0-e)q .. (k1+e)q, -1 beyond the ends,
    # then a sliding window of 2e+1 chunks
    full = h["order_w"][rnd]
    lo, hi = (k0 - e) * q, (k1 + e) * q
    ow = torch.cat([full.new_full((max(0, -lo),), -1), full[max(lo, 0):hi],
                    full.new_full((max(0, hi - full.numel()),), -1)])
    iw = ow.unfold(0, plan.window, q)  # [G, window]
    valid_x, valid_w = ix >= 0, iw >= 0
    ix, iw = ix.clamp(min=0), iw.clamp(min=0)
    xb, wb = hidden[ix], item_emb[iw]
    logits = _bmm(xb, wb, ac)
    if plan.r > 1:
        # times this (position, item) pair is met over all rounds: neighbour chunks in round t
        # (always in this round, so count = 1 + matches in the other rounds)
        extra = None
        for t in range(plan.r):
            if t == rnd:
                continue
            near = (h["chunk_w"][t, iw].unsqueeze(1) - h["chunk_x"][t, ix].unsqueeze(2)).abs_().le_(e)
            extra = near if extra is None else extra.add_(near)
            del near
        logits.sub_(extra.float().log1p_())
        del extra
    if not bool(valid_w.all()):
        logits.masked_fill_(~valid_w.unsqueeze(1), float("-inf"))
    # the position's own target (at most once per window, items being unique within a round) is
    # the appended class, never a negative: find its column from its rank instead of comparing
    col = h["rank_w"][rnd, targets[ix]] - (torch.arange(k0, k1, device=ix.device).unsqueeze(1) - e) * q
    hit = (col >= 0) & (col < plan.window)
    g_idx, p_idx = hit.nonzero(as_tuple=True)
    logits[g_idx, p_idx, col[g_idx, p_idx]] = float("-inf")
    return logits, ix, valid_x, iw, xb, wb


class _RECEFunction(torch.autograd.Function):
    """Per-position RECE loss [N] from (X, W, y) and the hashing ``h`` of every round."""

    @staticmethod
    def forward(ctx, hidden, item_emb, targets, plan, *h_tensors):
        h = dict(zip(KEYS, h_tensors, strict=True))
        ac = _autocast_state(hidden.device.type)
        pos = _positive_logits(hidden, item_emb, targets)
        lse = pos.clone()  # running log-sum-exp over [positive, candidates of every round]
        for rnd in range(plan.r):
            for k0 in range(0, plan.n_c, plan.g):
                logits, ix, valid, _, _, _ = _block(hidden, item_emb, targets, h, plan, rnd, k0, ac)
                row = logits.logsumexp(-1)
                del logits
                # within one round every position sits in exactly one chunk slot: no index clash
                idx = ix[valid]
                lse[idx] = torch.logaddexp(lse[idx], row[valid])
        ctx.save_for_backward(hidden, item_emb, targets, lse, pos, *h_tensors)
        ctx.plan, ctx.ac = plan, ac
        return lse - pos

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, item_emb, targets, lse, pos, *h_tensors = ctx.saved_tensors
        h = dict(zip(KEYS, h_tensors, strict=True))
        plan = ctx.plan
        n, d = hidden.shape
        g = grad_loss.float()
        dx = torch.zeros(n, d, device=hidden.device)
        dw = torch.zeros(item_emb.shape[0], d, device=hidden.device)
        for rnd in range(plan.r):
            for k0 in range(0, plan.n_c, plan.g):
                logits, ix, valid, iw, xb, wb = _block(hidden, item_emb, targets, h, plan, rnd, k0, ctx.ac)
                coef = g[ix] * valid  # padding slots carry no gradient
                prob = torch.exp(logits.sub_(lse[ix].unsqueeze(2))).mul_(coef.unsqueeze(2))
                del logits
                dx.index_add_(0, ix.reshape(-1), torch.bmm(prob, wb.float()).reshape(-1, d))
                dw.index_add_(0, iw.reshape(-1), torch.bmm(prob.transpose(1, 2), xb.float()).reshape(-1, d))
                del prob
        dpos = g * (torch.exp(pos - lse) - 1.0)  # softmax - 1 on the appended true class
        dx.add_(dpos.unsqueeze(1) * item_emb[targets].float())
        dw.index_add_(0, targets, dpos.unsqueeze(1) * hidden.float())
        return (dx.to(hidden.dtype), dw.to(item_emb.dtype)) + (None,) * (2 + len(KEYS))


@register_loss
class RECE(Loss):
    """Reduced Cross-Entropy.

    Parameters
    ----------
    n_buckets : int or "auto"
        Hash buckets n_b per round. "auto": sqrt(4 * (1 + 2 * n_extra_chunks) * min(C, N)) (authors'
        rule), so each position meets about (1 + 2 n_ec) * C / n_b items per round.
    n_extra_chunks : int
        n_ec, neighbour item chunks scored on each side of a position's own chunk (0 = own chunk only).
    rounds : int
        Independent hashing rounds r; their candidates share one softmax (duplicates count once).
    buckets_per_chunk : int
        Buckets per chunk; n_c = n_b / buckets_per_chunk chunks (1, as in the paper).
    """

    name = "rece"

    def __init__(self, n_buckets: int | str = "auto", n_extra_chunks: int = 1, rounds: int = 2,
                 buckets_per_chunk: int = 1) -> None:
        self.n_buckets = _check_size("n_buckets", n_buckets)
        if isinstance(n_extra_chunks, str) and n_extra_chunks.strip().isdigit():
            n_extra_chunks = int(n_extra_chunks)
        if n_extra_chunks != 0:
            n_extra_chunks = _check_size("n_extra_chunks", n_extra_chunks, allow_auto=False)
        self.n_extra_chunks = n_extra_chunks
        self.rounds = _check_size("rounds", rounds, allow_auto=False)
        self.buckets_per_chunk = _check_size("buckets_per_chunk", buckets_per_chunk, allow_auto=False)

    def resolve(self, n: int, c: int) -> tuple[int, int]:
        """(n_b, n_c) used for a batch of n positions and a catalog of c items."""
        if self.n_buckets == "auto":
            n_b = max(1, int(math.sqrt(4 * (1 + 2 * self.n_extra_chunks) * min(c, n))))
        else:
            n_b = self.n_buckets
        n_c = max(1, min(n_b // self.buckets_per_chunk, n, c))
        return n_b, n_c

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        n, d = hidden.shape
        if n == 0:
            return hidden.sum() * 0.0
        c = item_emb.shape[0]
        n_b, n_c = self.resolve(n, c)
        h = rece_hash(hidden, item_emb, n_b, n_c, self.rounds, ctx.generator)
        plan = _Plan(n, c, d, n_c, self.n_extra_chunks, self.rounds)
        per_pos = _RECEFunction.apply(hidden, item_emb, targets.long(), plan, *(h[k] for k in KEYS))
        ctx.stats["rece_n_chunks"] = float(n_c)
        return per_pos.mean()

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4) -> int:
        n_b, n_c = self.resolve(n, c)
        plan = _Plan(n, c, d, n_c, self.n_extra_chunks, self.rounds)
        grads = 4 * (c + n) * d + dtype_bytes * (c + n) * d * (dtype_bytes != 4)
        # order + chunk ids per round (int64), sort buffers of the catalog while hashing
        hashing = self.rounds * (8 + 4) * (n_c * plan.q + n_c * plan.p) + 8 * 3 * c
        cells = plan.g * plan.p * plan.window
        # logits + prob (f32), mask (bool), count (int16) + chunk-id difference (int32) + its log (f32);
        # gathered rows and the bmm outputs
        block = (cells * (4 + 4 + 1 + (2 + 4 + 4) * (self.rounds > 1))
                 + plan.g * (plan.window + plan.p) * d * 4 * 3)
        return int(grads + hashing + block + n * 16)
