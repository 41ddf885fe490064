"""SCE's options beyond the paper (``sce`` with ``cover=true`` / ``union=true``; off by default).

``cover``: the positions that no bucket picked, which the paper drops from the step, get buckets
drawn from them alone, so every position gets a loss.
``union``: a position's softmax runs over the union of its buckets' items, each item once (log
copy-count correction, as RECE does), instead of the max over its buckets. Two equivalent kernels:
bucket by bucket (``_SCEUnionFunction``) or, when the [N, C] logits are no more than the buckets'
cells, a masked softmax over the catalog (``_UnionDenseFunction``).
"""

from __future__ import annotations

import torch

from seqrec.losses.kernels import (
    add_positive_grad,
    autocast_state,
    block_elems,
    bmm,
    bucket_centres,
    bucket_logits,
    group_size,
    logsumexp_,
    negative_lse,
    positive_logits,
    rows,
    topk_rows_chunked,
    topk_share,
)

# ``cover``: passes of extra buckets over the positions no bucket picked
COVER_PASSES = 4
# ``union``: a masked softmax over the catalog when N * C <= this x the buckets' cells
# (1: whichever scores fewer logits)
UNION_DENSE_RATIO = 1.0


@torch.no_grad()
def cover_buckets(x: torch.Tensor, w: torch.Tensor, idx_x: torch.Tensor, idx_y: torch.Tensor, n_buckets: int,
                  mix_x: bool, generator: torch.Generator | None, stride: int = 1,
                  off: int = 0, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cover``: (idx_x, idx_y) of ``sce_select`` plus buckets for the positions none picked.

    x [N, d] float32 hidden states, w [C, d] items. The uncovered positions get buckets drawn the
    same way from them alone (n_b scaled by their share of N), until every position is in one (at
    most ``COVER_PASSES`` passes); a last short bucket is padded with the scratch index N. Items
    come from the same share as ``sce_select``'s: rows i = ``off`` mod ``stride`` and ``extra``.
    """
    n = x.shape[0]
    bucket_size_x, bucket_size_y = idx_x.shape[1], idx_y.shape[1]
    xs, ys = [idx_x], [idx_y]
    inside = torch.zeros(n + 1, dtype=torch.bool, device=x.device)  # + the scratch slot
    for _ in range(COVER_PASSES):
        inside[xs[-1].reshape(-1)] = True
        left = (~inside[:n]).nonzero().squeeze(1)
        u = left.numel()
        if u == 0:
            break
        nb = max(1, round(n_buckets * u / n))
        omega = bucket_centres(x[left], nb, mix_x, generator)
        ix = left[topk_rows_chunked(omega, x[left], min(bucket_size_x, u))]
        if ix.shape[1] < bucket_size_x:
            ix = torch.cat([ix, ix.new_full((nb, bucket_size_x - ix.shape[1]), n)], 1)
        xs.append(ix)
        ys.append(topk_share(omega, w, bucket_size_y, stride, off, extra))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- union
def union_loss(hidden: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor, idx_x: torch.Tensor,
               idx_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per_pos [N], 0 where uncovered; covered [N]) under the ``union`` rule, with whichever kernel
    scores fewer logits."""
    if dense_union(hidden.shape[0], item_emb.shape[0], idx_x.numel() * idx_y.shape[1]):
        return _union_dense(hidden, item_emb, targets, idx_x, idx_y)
    return _SCEUnionFunction.apply(hidden, item_emb, targets, idx_x, idx_y)


def dense_union(n: int, c: int, cells: int) -> bool:
    """True when the masked softmax over the catalog ([n, c] logits) beats ``cells`` bucket logits."""
    return n * c <= UNION_DENSE_RATIO * cells


def union_bytes(n: int, c: int, n_b: int, k_x: int, k_y: int, block: int) -> tuple[int, int]:
    """(extra saved bytes, working-block bytes) of ``union`` on top of SCE's ``predict_bytes``
    (``block``: SCE's bucket-group block, kept by the bucket kernel)."""
    saved = 2 * n_b * (n + min(c, n_b * k_y))  # the two bfloat16 bucket-incidence matrices
    if dense_union(n, c, n_b * k_x * k_y):
        # blocks of rows: float32 logits, the bool mask and the bfloat16 incidence product
        block = min(n, max(1, block_elems() // c)) * c * (4 + 1 + 2) + 2 * n_b * (n + c)
    return saved, block


class CopyCounts:
    """How many of position idx_x[b, a]'s buckets hold item idx_y[b, j], per bucket group.

    Count = <bucket set of the position, bucket set of the item>: a 0/1 matmul of the position x
    bucket incidence [N, n_b] with the item x bucket incidence [U, n_b] (U = distinct bucket
    items), [g, k_x, n_b] @ [g, n_b, k_y] per group. Exact in bfloat16 while no position sits in
    more than 256 buckets (integers to 256 are exact and the products are 0/1); float32 beyond.
    """

    def __init__(self, idx_x: torch.Tensor, idx_y: torch.Tensor, n: int) -> None:
        n_b = idx_x.shape[0]
        cols = torch.arange(n_b, device=idx_x.device).unsqueeze(1)
        per_pos = torch.zeros(n, dtype=torch.int32, device=idx_x.device).index_add_(
            0, idx_x.reshape(-1), torch.ones(idx_x.numel(), dtype=torch.int32, device=idx_x.device))
        self.dtype = torch.bfloat16 if int(per_pos.max()) <= 256 else torch.float32
        self.pos = torch.zeros(n, n_b, dtype=self.dtype, device=idx_x.device)
        self.pos[idx_x, cols] = 1
        uniq, self.inv = idx_y.unique(return_inverse=True)  # [n_b, k_y] into U rows
        self.item = torch.zeros(uniq.numel(), n_b, dtype=self.dtype, device=idx_x.device)
        self.item[self.inv, cols] = 1
        self.idx_x = idx_x

    def log(self, b0: int, b1: int) -> torch.Tensor:
        """log copy count, float32 [g, k_x, k_y] for buckets b0:b1 (every count is >= 1)."""
        a, b = rows(self.pos, self.idx_x[b0:b1]), rows(self.item, self.inv[b0:b1])
        return torch.bmm(a, b.transpose(1, 2)).float().log_()


class _SCEUnionFunction(torch.autograd.Function):
    """Per-position loss [N] (0 where uncovered) and coverage [N] with the ``union`` rule: a
    position's softmax runs over the union of its buckets' items, each item once (every copy's
    logit lowered by log of its copy count, as RECE does), plus the positive."""

    @staticmethod
    def forward(ctx, hidden, item_emb, targets, idx_x, idx_y):
        n = hidden.shape[0]
        ac = autocast_state(hidden.device.type)
        pos = positive_logits(hidden, item_emb, targets)
        counts = CopyCounts(idx_x, idx_y, n)
        row_lse = negative_lse(hidden, item_emb, targets, idx_x, idx_y, ac, counts)  # negatives only
        flat, lse_rows = idx_x.reshape(-1), row_lse.reshape(-1)
        top = torch.full((n,), float("-inf"), device=hidden.device)
        top.scatter_reduce_(0, flat, lse_rows, "amax", include_self=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        mass = torch.zeros(n, device=hidden.device).index_add_(0, flat, torch.exp(lse_rows - top[flat]))
        total = torch.logaddexp(mass.log() + top, pos)  # the position's log-partition
        covered = torch.zeros(n, dtype=torch.bool, device=hidden.device)
        covered[flat] = True
        per_pos = torch.where(covered, total - pos, torch.zeros_like(pos))
        ctx.save_for_backward(hidden, item_emb, targets, idx_x, idx_y, total, pos, covered)
        ctx.ac, ctx.counts = ac, counts
        ctx.mark_non_differentiable(covered)
        return per_pos, covered

    @staticmethod
    def backward(ctx, grad_loss, _grad_covered):
        hidden, item_emb, targets, idx_x, idx_y, total, pos, covered = ctx.saved_tensors
        counts = ctx.counts
        n, d = hidden.shape
        n_b, k_x = idx_x.shape
        coef = torch.where(covered, grad_loss.float(), torch.zeros_like(total))
        dx = torch.zeros(n, d, device=hidden.device)
        dw = torch.zeros(item_emb.shape[0], d, device=hidden.device)
        g = group_size(n_b, k_x, idx_y.shape[1], d + n_b)  # + the count matmul inputs
        for b0 in range(0, n_b, g):  # every copy gets softmax / count: each item's total is its softmax
            ix, iy = idx_x[b0:b0 + g], idx_y[b0:b0 + g]
            logits, xb, wb = bucket_logits(hidden, item_emb, targets, ix, iy, ctx.ac)
            logits.sub_(counts.log(b0, b0 + g)).sub_(total[ix].unsqueeze(2))
            prob = logits.exp_().mul_(coef[ix].unsqueeze(2))
            dx.index_add_(0, ix.reshape(-1), torch.bmm(prob, wb.float()).reshape(-1, d))
            dw.index_add_(0, iy.reshape(-1), torch.bmm(prob.transpose(1, 2), xb.float()).reshape(-1, d))
            del logits, prob
        add_positive_grad(dx, dw, coef * (torch.exp(pos - total) - 1.0), hidden, item_emb, targets)
        return dx.to(hidden.dtype), dw.to(item_emb.dtype), None, None, None


def _masked_rows(hidden, item_emb, targets, inc_x, inc_y, r0, r1, ac):
    """Logits float32 [r, C] of positions r0:r1, -inf outside their buckets' items and at their
    targets. inc_x [N, n_b], inc_y [C, n_b]: 0/1 bucket incidence (a shared bucket <=> product > 0;
    sums of 0/1 products are zero only when no bucket is shared, whatever the rounding)."""
    r1 = min(r1, hidden.shape[0])
    logits = bmm(hidden[r0:r1].unsqueeze(0), item_emb.unsqueeze(0), ac)[0]
    outside = (inc_x[r0:r1] @ inc_y.T) == 0
    outside[torch.arange(r1 - r0, device=hidden.device), targets[r0:r1]] = True
    return logits.masked_fill_(outside, float("-inf"))


class _UnionDenseFunction(torch.autograd.Function):
    """The ``union`` rule as a masked softmax over the catalog, in blocks of positions: loss [N].

    Used when the [N, C] logits are no more than the buckets' [n_b, k_x, k_y] cells (short-history
    batches under the padded-batch rule, where a position sits in dozens of buckets): same value
    and gradients as _SCEUnionFunction for less work. Only one [r, C] block is alive at a time;
    backward recomputes them.
    """

    @staticmethod
    def forward(ctx, hidden, item_emb, targets, inc_x, inc_y):
        n, c = hidden.shape[0], item_emb.shape[0]
        ac = autocast_state(hidden.device.type)
        pos = positive_logits(hidden, item_emb, targets)
        neg = torch.empty(n, device=hidden.device)
        r = max(1, block_elems(hidden.device) // c)
        for r0 in range(0, n, r):
            neg[r0:r0 + r] = logsumexp_(_masked_rows(hidden, item_emb, targets, inc_x, inc_y, r0, r0 + r, ac))
        total = torch.logaddexp(neg, pos)  # the position's log-partition
        ctx.save_for_backward(hidden, item_emb, targets, inc_x, inc_y, total, pos)
        ctx.ac = ac
        return total - pos

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, item_emb, targets, inc_x, inc_y, total, pos = ctx.saved_tensors
        n, c = hidden.shape[0], item_emb.shape[0]
        coef = grad_loss.float()
        x, w = hidden.float(), item_emb.float()
        dx, dw = torch.empty_like(x), torch.zeros_like(w)
        r = max(1, block_elems(hidden.device) // c)
        for r0 in range(0, n, r):
            prob = _masked_rows(hidden, item_emb, targets, inc_x, inc_y, r0, r0 + r, ctx.ac)
            prob.sub_(total[r0:r0 + r].unsqueeze(1)).exp_().mul_(coef[r0:r0 + r].unsqueeze(1))
            torch.mm(prob, w, out=dx[r0:r0 + r])
            dw.addmm_(prob.T, x[r0:r0 + r])
            del prob
        add_positive_grad(dx, dw, coef * (torch.exp(pos - total) - 1.0), hidden, item_emb, targets)
        return dx.to(hidden.dtype), dw.to(item_emb.dtype), None, None, None


def _union_dense(hidden, item_emb, targets, idx_x, idx_y):
    """(per_pos [N], 0 where uncovered; covered [N]) of the ``union`` rule via _UnionDenseFunction."""
    n, c, n_b = hidden.shape[0], item_emb.shape[0], idx_x.shape[0]
    with torch.no_grad():
        cols = torch.arange(n_b, device=hidden.device).unsqueeze(1)
        inc_x = torch.zeros(n, n_b, dtype=torch.bfloat16, device=hidden.device)
        inc_y = torch.zeros(c, n_b, dtype=torch.bfloat16, device=hidden.device)
        inc_x[idx_x, cols], inc_y[idx_y, cols] = 1, 1
        covered = inc_x.amax(1) > 0
    per_pos = _UnionDenseFunction.apply(hidden, item_emb, targets, inc_x, inc_y)
    return torch.where(covered, per_pos, torch.zeros_like(per_pos)), covered
