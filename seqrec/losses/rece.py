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
from typing import Literal

import torch

from seqrec.losses.base import Loss, LossContext, check_int, check_size
from seqrec.losses.kernels import add_positive_grad, autocast_state, block_elems, bmm, positive_logits


@torch.no_grad()
def _bucket_ids(vectors: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """argmax_b <proj[b], vectors[i]> for every row, [M] int64, scanned in row chunks."""
    chunk = max(1, block_elems() // proj.shape[0])
    p = proj.T
    # one preallocated result: keeping each chunk's small argmax alive between the big score
    # buffers fragments the heap (glibc) and grew RSS by ~1.5 GB at C = 1M
    ids = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
    for i in range(0, vectors.shape[0], chunk):
        ids[i:i + chunk] = (vectors[i:i + chunk].float() @ p).argmax(1)
    return ids


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

    def __init__(self, n: int, c: int, d: int, n_chunks: int, n_extra: int, rounds: int,
                 elems: int | None = None) -> None:
        self.n_c, self.e, self.r = n_chunks, n_extra, rounds
        self.p, self.q = -(-n // n_chunks), -(-c // n_chunks)
        self.window = (2 * n_extra + 1) * self.q  # candidate items per position chunk
        per_chunk = self.p * self.window + self.window * d + self.p * d
        self.g = max(1, min(n_chunks, (elems or block_elems()) // per_chunk))  # chunks per working block


class _Round:
    """One round in chunk order: positions and items sorted by bucket, the item order padded by n_ec
    empty chunks on both ends, so position chunk k's candidate items are the contiguous slots
    k*q ... k*q + window and a group's windows are overlapping strided views of one gather."""

    def __init__(self, hidden, item_emb, h, plan: _Plan, rnd: int) -> None:
        eq = plan.e * plan.q
        edge = h["order_w"].new_full((eq,), -1)
        self.ox = h["order_x"][rnd]  # [n_c * p]
        self.ow = torch.cat([edge, h["order_w"][rnd], edge])  # [(n_c + 2 n_ec) * q]
        self.xs = hidden[self.ox.clamp(min=0)]
        self.item_emb = item_emb
        # chunk ids, in this round's item order, of the other rounds (multiplicity count)
        self.cw = {t: h["chunk_w"][t, self.ow.clamp(min=0)] for t in range(plan.r) if t != rnd}
        self.rnd = rnd


def _window(t: torch.Tensor, k0: int, k1: int, plan: _Plan) -> torch.Tensor:
    """Rows [k0*q, (k1 + 2 n_ec + 1)*q) of ``t`` as [G, window, ...] overlapping windows (a view)."""
    inner = t.shape[1:]
    step = plan.q * t.stride(0)
    return t.as_strided((k1 - k0, plan.window, *inner), (step, *t.stride()),
                        t.storage_offset() + k0 * step)


def _block(targets, h, plan: _Plan, rt: _Round, k0: int, ac):
    """Logits float32 [G, p, window] of position chunks k0..k0+G-1 in round ``rt``.

    Target and padding masked to -inf, log-multiplicity subtracted. Also returns the positions
    (clamped) with their validity and the rows used, xb [G, p, d] and wb [G, window, d] (views).
    """
    p, q, e = plan.p, plan.q, plan.e
    k1 = min(plan.n_c, k0 + plan.g)
    g = k1 - k0
    ix = rt.ox[k0 * p:k1 * p].view(g, p)
    valid_x, ix = ix >= 0, ix.clamp(min=0)
    xb = rt.xs[k0 * p:k1 * p].view(g, p, -1)
    # the group's item rows, (G + 2 n_ec) chunks, gathered once; windows are views into them
    wb = _window(rt.item_emb[rt.ow[k0 * q:(k1 + 2 * e) * q].clamp(min=0)], 0, g, plan)
    logits = bmm(xb, wb, ac)
    if plan.r > 1:
        # times this (position, item) pair is met over all rounds: neighbour chunks in round t
        # (always in this round, so count = 1 + matches in the other rounds)
        extra = None
        for t, cw in rt.cw.items():
            near = (_window(cw, k0, k1, plan).unsqueeze(1) - h["chunk_x"][t, ix].unsqueeze(2)).abs_().le_(e)
            extra = near if extra is None else extra.add_(near)
            del near
        logits.sub_(extra.float().log1p_())
        del extra
    c = rt.item_emb.shape[0]
    if k0 * q < e * q or (k1 + 2 * e) * q > e * q + c:  # the windows reach padding slots
        logits.masked_fill_((_window(rt.ow, k0, k1, plan) < 0).unsqueeze(1), float("-inf"))
    # the position's own target (at most once per window, items being unique within a round) is
    # the appended class, never a negative: find its column from its rank instead of comparing
    col = h["rank_w"][rt.rnd, targets[ix]] - (torch.arange(k0, k1, device=ix.device).unsqueeze(1) - e) * q
    hit = ((col >= 0) & (col < plan.window)).unsqueeze(2)
    # a gather/scatter instead of hit.nonzero(): no host sync per block (it stalls a GPU)
    col = col.clamp_(0, plan.window - 1).unsqueeze(2)
    logits.scatter_(2, col, logits.gather(2, col).masked_fill_(hit, float("-inf")))
    return logits, ix, valid_x, xb, wb


class _RECEFunction(torch.autograd.Function):
    """Per-position RECE loss [N] from (X, W, y) and the hashing ``h`` of every round."""

    @staticmethod
    def forward(ctx, hidden, item_emb, targets, plan, *h_tensors):
        h = dict(zip(KEYS, h_tensors, strict=True))
        ac = autocast_state(hidden.device.type)
        pos = positive_logits(hidden, item_emb, targets)
        n = pos.shape[0]
        # running log-sum-exp over [positive, candidates of every round], plus one scratch slot
        # that padding slots write to (index writes without a boolean mask: no host sync)
        lse = torch.cat([pos, pos.new_zeros(1)])
        for rnd in range(plan.r):
            rt = _Round(hidden, item_emb, h, plan, rnd)
            for k0 in range(0, plan.n_c, plan.g):
                logits, ix, valid = _block(targets, h, plan, rt, k0, ac)[:3]
                row = logits.logsumexp(-1)
                del logits
                # within one round every position sits in exactly one chunk slot: no index clash
                # among real positions (padding slots all go to the scratch slot n)
                idx = torch.where(valid, ix, n)
                lse[idx] = torch.logaddexp(lse[idx], row)
            del rt
        lse = lse[:n]
        ctx.save_for_backward(hidden, item_emb, targets, lse, pos, *h_tensors)
        ctx.plan, ctx.ac = plan, ac
        return lse - pos

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, item_emb, targets, lse, pos, *h_tensors = ctx.saved_tensors
        h = dict(zip(KEYS, h_tensors, strict=True))
        plan = ctx.plan
        n, d = hidden.shape
        c = item_emb.shape[0]
        q, eq = plan.q, plan.e * plan.q
        g = grad_loss.float()
        dx = torch.zeros(n, d, device=hidden.device)
        dw = torch.zeros(c, d, device=hidden.device)
        for rnd in range(plan.r):
            rt = _Round(hidden, item_emb, h, plan, rnd)
            # gradients in the round's sorted layout: windows are contiguous slices, so they are
            # accumulated with plain adds (index_add_ over random rows is ~40x slower on CPU)
            dxs = torch.zeros(rt.xs.shape, device=hidden.device)
            dws = torch.zeros(rt.ow.shape[0], d, device=hidden.device)
            for k0 in range(0, plan.n_c, plan.g):
                logits, ix, valid, xb, wb = _block(targets, h, plan, rt, k0, ctx.ac)
                k1 = k0 + logits.shape[0]
                coef = g[ix] * valid  # padding slots carry no gradient
                prob = torch.exp(logits.sub_(lse[ix].unsqueeze(2))).mul_(coef.unsqueeze(2))
                del logits
                dxs[k0 * plan.p:k1 * plan.p].view(prob.shape[0], plan.p, d).add_(torch.bmm(prob, wb.float()))
                gw = torch.bmm(prob.transpose(1, 2), xb.float())  # [G, window, d]
                del prob
                for o in range(2 * plan.e + 1):  # window offset o covers item chunk k - n_ec + o
                    dws[(k0 + o) * q:(k1 + o) * q].view(k1 - k0, q, d).add_(gw[:, o * q:(o + 1) * q])
                del gw, xb, wb
            del rt
            valid = h["order_x"][rnd] >= 0
            dx.index_add_(0, h["order_x"][rnd][valid], dxs[valid])
            del dxs
            # back to catalog order: item i sits at slot rank_w[i] (+ the n_ec leading empty chunks)
            step = max(1, block_elems() // d)
            for c0 in range(0, c, step):
                dw[c0:c0 + step].add_(dws.index_select(0, h["rank_w"][rnd, c0:c0 + step] + eq))
            del dws
        # softmax - 1 on the appended true class
        add_positive_grad(dx, dw, g * (torch.exp(pos - lse) - 1.0), hidden, item_emb, targets)
        return (dx.to(hidden.dtype), dw.to(item_emb.dtype)) + (None,) * (2 + len(KEYS))


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

    def __init__(self, n_buckets: int | Literal["auto"] = "auto", n_extra_chunks: int = 1, rounds: int = 2,
                 buckets_per_chunk: int = 1) -> None:
        self.n_buckets = check_size("n_buckets", n_buckets)
        self.n_extra_chunks = check_int("n_extra_chunks", n_extra_chunks, 0)
        self.rounds = check_int("rounds", rounds, 1)
        self.buckets_per_chunk = check_int("buckets_per_chunk", buckets_per_chunk, 1)

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
        # larger blocks on CUDA: there the cost is kernel launches per block, not cache misses
        plan = _Plan(n, c, d, n_c, self.n_extra_chunks, self.rounds, block_elems(hidden.device))
        per_pos = _RECEFunction.apply(hidden, item_emb, targets.long(), plan, *(h[k] for k in KEYS))
        ctx.stats["rece_n_chunks"] = float(n_c)
        return per_pos.mean()

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        _, n_c = self.resolve(n, c)
        plan = _Plan(n, c, d, n_c, self.n_extra_chunks, self.rounds)
        grads = 4 * (c + n) * d + dtype_bytes * (c + n) * d * (dtype_bytes != 4)
        slots_w, slots_x = (n_c + 2 * plan.e) * plan.q, n_c * plan.p
        # hashing: order (int64), rank (int64), chunk ids (int16) per round, plus sort buffers
        hashing = self.rounds * (8 + 8 + 2) * (slots_w + slots_x) + 8 * 3 * c
        # backward of one round: the gradients in sorted layout, X in sorted order
        sorted_rows = (slots_w + 2 * slots_x) * d * 4
        cells = plan.g * plan.p * plan.window
        # one block: logits (f32) plus the larger of the softmax buffer (f32) and, with rounds > 1,
        # the multiplicity count (int16) with its log (f32); padding mask (bool); the bmm output
        # and the group's gathered item rows
        per_cell = 4 + max(4, (2 + 4) * (self.rounds > 1)) + 1
        block = (cells * per_cell + plan.g * (plan.window + plan.p) * d * 4
                 + (plan.g + 2 * plan.e) * plan.q * d * 4)
        return int(grads + hashing + sorted_rows + block + n * 16)
