"""SCE, Scalable Cross-Entropy (Mezentsev, Gusak, Oseledets, Frolov; RecSys 2024, arXiv 2409.18721).

CE is approximated where its logits are large. Random "bucket" directions Omega [n_b, d] pick, per
bucket, the k_x positions and the k_y items with the largest inner product with the bucket's direction
(a cheap maximum-inner-product search). Each bucket is scored densely, [k_x, k_y], the position's own
target is masked out of the bucket's items, and the positive logit is appended as the class. A
position's loss is the maximum over the buckets it falls in; positions in no bucket leave the mean.

Beyond the reference implementation (same value and gradients):
- Omega W^T is never held whole: catalog chunks with a running top-k, or on CPU with many items
  two passes over cache-sized blocks (``kernels.topk_two_pass``); the selection stays exact.
- The bucket logits go through a custom autograd function that works in groups of buckets, so only
  one group's [g, k_x, k_y] block is alive at any time and the item-embedding gradient is a single
  dense [C, d] buffer. Backward recomputes logits only for the rows that won the max (each
  bucket's winners first, padded to the bucket with most), not for all n_b * k_x bucket rows.

Option ``scan_items`` (ours; from 262,144 items on by default, "all" turns it off): a step's item
selection scores one random share of the catalog and the items its last RECENT_STEPS selections
picked, instead of every item (docs/losses.md, "scan_items").

Options ``cover`` and ``union`` (ours, off by default) live in ``sce_variants.py``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from seqrec.losses import sce_variants
from seqrec.losses.base import Loss, LossContext, check_bool, check_int, check_size
from seqrec.losses.kernels import (
    L2_ELEMS,
    add_positive_grad,
    autocast_state,
    block_elems,
    bucket_centres,
    bucket_logits,
    group_size,
    negative_lse,
    positive_logits,
    topk_rows_chunked,
    topk_share,
)

# With scan_items, a step also scores the items the last RECENT_STEPS steps selected: a bucket's hardest
# items change slowly, and at a million items (share 1/4) this finds 83% of the exact selection's
# items against 25% for the share alone (docs/losses.md, "scan_items").
RECENT_STEPS = 4


def scan_stride(n_items: int, scan_items: int | Literal["all"], k: int) -> int:
    """s of the share i = offset mod s that the selection scores: ceil(C / scan_items), at most
    C // k so the share holds k items; 1 (all items) for "all"."""
    if scan_items == "all" or n_items <= scan_items:
        return 1
    return max(1, min(-(-n_items // scan_items), n_items // max(k, 1)))


@torch.no_grad()
def sce_select(hidden: torch.Tensor, item_emb: torch.Tensor, n_buckets: int, bucket_size_x: int,
               bucket_size_y: int, mix_x: bool, generator: torch.Generator | None = None,
               cover: bool = False, stride: int = 1,
               recent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket membership: (idx_x [n_b, k_x] positions, idx_y [n_b, k_y] items), both int64.

    Omega is Gaussian [n_b, d], or with ``mix_x`` random Gaussian mixtures of the batch's hidden
    states (G^T X, G ~ N(0, 1) [N, n_b]), which follows the hidden states' distribution and so
    avoids "bucket collapse" (all buckets picking the same few items). Selection runs in float32
    with autocast off: it is cheap next to the scoring and exact ranking matters more.
    ``cover``: extra buckets for the positions no bucket picked (``sce_variants.cover_buckets``).
    ``stride`` s > 1: items are picked from the share i = offset mod s only (a random offset drawn
    from ``generator``), a strided view of the table: no copy; ``cover``'s buckets use the same share.
    ``recent`` (int64 item ids, with ``stride`` > 1): items recent steps selected, scored as well.
    """
    with torch.autocast(hidden.device.type, enabled=False):
        x, w = hidden.detach().float(), item_emb.detach()
        omega = bucket_centres(x, n_buckets, mix_x, generator)
        idx_x = topk_rows_chunked(omega, x, bucket_size_x)
        # no draw for the whole catalog: the default's random stream stays as before scan_items
        off = int(torch.randint(stride, (1,), generator=generator, device=x.device)) if stride > 1 else 0
        extra = None if recent is None or stride == 1 else recent[(recent - off) % stride != 0]
        idx_y = topk_share(omega, w, bucket_size_y, stride, off, extra)
        if cover:
            return sce_variants.cover_buckets(x, w, idx_x, idx_y, n_buckets, mix_x, generator, stride, off, extra)
    return idx_x, idx_y


class _SCEFunction(torch.autograd.Function):
    """Per-position SCE loss [N] (0 where uncovered) and coverage mask [N] from (X, W, y, buckets)."""

    @staticmethod
    def forward(ctx, hidden, item_emb, targets, idx_x, idx_y):
        n = hidden.shape[0]
        ac = autocast_state(hidden.device.type)
        pos = positive_logits(hidden, item_emb, targets)
        row_lse = torch.logaddexp(negative_lse(hidden, item_emb, targets, idx_x, idx_y, ac), pos[idx_x])
        row_loss = row_lse - pos[idx_x]
        flat = idx_x.reshape(-1)
        per_pos = torch.full((n,), float("-inf"), device=hidden.device)
        per_pos.scatter_reduce_(0, flat, row_loss.reshape(-1), "amax", include_self=True)
        covered = torch.isfinite(per_pos)
        # gradient flows through the winning bucket(s); exact ties share it evenly (as amax does)
        wins = (row_loss == per_pos[idx_x]).float()
        n_wins = torch.zeros(n, device=hidden.device).index_add_(0, flat, wins.reshape(-1))
        weight = wins / n_wins[idx_x]
        per_pos = torch.where(covered, per_pos, torch.zeros_like(per_pos))
        ctx.save_for_backward(hidden, item_emb, targets, idx_x, idx_y, row_lse, weight, pos)
        ctx.ac = ac
        ctx.mark_non_differentiable(covered)
        return per_pos, covered

    @staticmethod
    def backward(ctx, grad_loss, _grad_covered):
        hidden, item_emb, targets, idx_x, idx_y, row_lse, weight, pos = ctx.saved_tensors
        n, d = hidden.shape
        coef = weight * grad_loss.float()[idx_x]  # d loss / d row loss, [n_b, k_x]
        dx = torch.zeros(n, d, device=hidden.device)
        dw = torch.zeros(item_emb.shape[0], d, device=hidden.device)
        # Only the (bucket, slot) rows a position wins carry gradient (amax). Each bucket's winning
        # slots are moved to the front and backward recomputes [n_b, m, k_y] logits, m = the most
        # winners in any bucket, instead of [n_b, k_x, k_y]: with the padded-batch rule on short
        # histories a position sits in dozens of buckets, so m is a small fraction of k_x.
        wins = coef != 0
        m = int(wins.sum(1).max()) if coef.numel() else 0
        order = torch.argsort((~wins).to(torch.int8), dim=1, stable=True)[:, :m]  # winners first
        c_w, idx_w, lse = coef.gather(1, order), idx_x.gather(1, order), row_lse.gather(1, order)
        n_b, k_y = idx_x.shape[0], idx_y.shape[1]
        g = group_size(n_b, max(m, 1), k_y, d)
        for b0 in range(0, n_b if m else 0, g):
            ix, iy = idx_w[b0:b0 + g], idx_y[b0:b0 + g]
            logits, xb, wb = bucket_logits(hidden, item_emb, targets, ix, iy, ctx.ac)
            # padded slots are real non-winning rows: exp(logit - their own lse) <= 1, times 0
            prob = torch.exp(logits.sub_(lse[b0:b0 + g].unsqueeze(2))).mul_(c_w[b0:b0 + g].unsqueeze(2))
            del logits
            dx.index_add_(0, ix.reshape(-1), torch.bmm(prob, wb.float()).reshape(-1, d))
            dw.index_add_(0, iy.reshape(-1), torch.bmm(prob.transpose(1, 2), xb.float()).reshape(-1, d))
            del prob
        # the appended positive column: softmax - 1 on the true class
        dpos_rows = coef * (torch.exp(pos[idx_x] - row_lse) - 1.0)
        dpos = torch.zeros(n, device=hidden.device).index_add_(0, idx_x.reshape(-1), dpos_rows.reshape(-1))
        add_positive_grad(dx, dw, dpos, hidden, item_emb, targets)
        return dx.to(hidden.dtype), dw.to(item_emb.dtype), None, None, None


class SCE(Loss):
    """Scalable Cross-Entropy.

    Parameters
    ----------
    n_buckets : int or "auto"
        Number of buckets n_b. "auto": int(2 * sqrt(M)), M = ``ctx.capacity`` (batch_size x max_len,
        padding included, as in the authors' code) or, without it, the batch's N positions.
    bucket_size_x : int or "auto"
        Positions per bucket k_x (clipped to N). "auto": int(2 * sqrt(M)), so n_b * k_x ~ 4M.
    bucket_size_y : int or "auto"
        Items per bucket k_y (clipped to C). "auto": 256, the authors' most frequent best value.
    mix_x : bool
        Bucket centres are random mixtures of the batch's hidden states instead of pure Gaussian.
    cover : bool
        Ours, beyond the paper; False is the authors' method. Positions that no bucket picked (the
        paper drops them from the step) get extra buckets drawn from them alone, so (nearly) every
        position gets a loss. Cost: the extra buckets, in proportion to the share left out.
    union : bool
        Ours, beyond the paper; False is the authors' max rule. A position's softmax runs over the
        union of its buckets' items (each item once, via RECE's log-count correction) instead of
        the single bucket with the largest loss. Cost: backward scores every bucket row, not only
        the winners, and the copy counts are a [k_x, n_b] @ [n_b, k_y] matmul per bucket.
    scan_items : int or "all"
        Ours, beyond the paper; "all" is the authors' method (as is any catalog of at most
        ``scan_items`` items). A step's item selection scores the rows i = offset mod s,
        s = ceil(C / scan_items) with a random offset each step, plus the items the last
        RECENT_STEPS steps selected, instead of the whole catalog: the selection's cost stops
        growing with the catalog. At a million items (262,144, the default) an epoch's test
        NDCG@10 was 1.10x the exact selection's, same seed (docs/losses.md).
    """

    def __init__(self, n_buckets: int | Literal["auto"] = "auto", bucket_size_x: int | Literal["auto"] = "auto",
                 bucket_size_y: int | Literal["auto"] = 256, mix_x: bool = True, cover: bool = False,
                 union: bool = False, scan_items: int | Literal["all"] = 262_144) -> None:
        self.n_buckets = check_size("n_buckets", n_buckets)
        self.bucket_size_x = check_size("bucket_size_x", bucket_size_x)
        self.bucket_size_y = check_size("bucket_size_y", bucket_size_y)
        self.mix_x = check_bool("mix_x", mix_x)
        self.cover = check_bool("cover", cover)
        self.union = check_bool("union", union)
        self.scan_items = "all" if scan_items == "all" else check_int("scan_items", scan_items, 1)
        self._recent: list[torch.Tensor] = []  # with scan_items: the last RECENT_STEPS selections' items

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._recent = list(state.get("recent", []))

    def resolve(self, n: int, c: int, capacity: int | None = None) -> tuple[int, int, int]:
        """(n_b, k_x, k_y) for a batch of n positions (of ``capacity`` padded slots) and c items.

        The authors size the auto buckets from the padded batch B x L, not from the real positions:
        on short-history data (Amazon: 9 items a user, 10x padding) a position then falls into
        dozens of buckets and its loss is the max over them, which matters for quality (measured
        in docs/benchmarks.md); on long histories (ML-1M) the two are close.
        """
        root = max(1, int(2 * math.sqrt(capacity or n)))
        n_b = root if self.n_buckets == "auto" else self.n_buckets
        k_x = root if self.bucket_size_x == "auto" else self.bucket_size_x
        k_y = 256 if self.bucket_size_y == "auto" else self.bucket_size_y
        return n_b, min(k_x, n), min(k_y, c)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        n = hidden.shape[0]
        if n == 0:
            return hidden.sum() * 0.0
        targets = targets.long()
        n_b, k_x, k_y = self.resolve(n, item_emb.shape[0], ctx.capacity)
        c = item_emb.shape[0]
        stride = scan_stride(c, self.scan_items, k_y)
        recent = self._recent_items(c, item_emb.device) if stride > 1 else None
        idx_x, idx_y = sce_select(hidden, item_emb, n_b, k_x, k_y, self.mix_x, ctx.generator, self.cover, stride,
                                  recent)
        if stride > 1:
            self._recent = [*self._recent, torch.unique(idx_y)][-RECENT_STEPS:]
        if self.cover:  # the scratch row N that pads the last extra bucket
            hidden = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])
            targets = torch.cat([targets, targets.new_zeros(1)])
        if self.union:
            per_pos, covered = sce_variants.union_loss(hidden, item_emb, targets, idx_x, idx_y)
        else:
            per_pos, covered = _SCEFunction.apply(hidden, item_emb, targets, idx_x, idx_y)
        per_pos, covered = per_pos[:n], covered[:n]
        ctx.stats["sce_coverage"] = float(covered.float().mean())
        # positions in no bucket leave this step's mean
        return per_pos.sum() / covered.sum().clamp(min=1)

    def _recent_items(self, c: int, device: torch.device) -> torch.Tensor | None:
        """The distinct items of the remembered selections, None when there are none (or they were
        made on another table: a different size or device)."""
        if not self._recent or any(r.device != device or (r.numel() and int(r[-1]) >= c) for r in self._recent):
            self._recent = []
            return None
        return torch.unique(torch.cat(self._recent))

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        n_b, k_x, k_y = self.resolve(n, c, capacity)
        stride = scan_stride(c, self.scan_items, k_y)
        remembered = 0 if stride == 1 else min(c, RECENT_STEPS * n_b * k_y)
        scanned = -(-c // stride) + remembered  # the items a selection scores
        grads = 4 * (c + n) * d + dtype_bytes * (c + n) * d * (dtype_bytes != 4)
        # selection: one chunk of scores, its top-k, the candidate buffer (9 k) and a merge; or on
        # many items (topk_two_pass) pass 1's block maxima (at most [C / 32, n_b]), one score
        # block and ~4 k candidates a bucket
        chunk = max(k_y, block_elems() // n_b)
        select = max(n_b * chunk * 4 + n_b * k_y * 12 * (1 + 9 + 2),
                     n_b * -(-scanned // 32) * 4 + L2_ELEMS * 4 + n_b * k_y * 20 * 4) + n_b * d * 4 + n * n_b * 4
        if remembered:  # their rows gathered; the two parts' 2 k_y candidates a bucket, rescored by blocks
            select += remembered * (d * 4 + 8 * 3) + n_b * 2 * k_y * 20 + block_elems() * 4
        saved = n_b * k_x * (4 + 4 + 4 + 8) + n_b * k_y * 8 + n * 16
        g = group_size(n_b, k_x, k_y, d)
        # logits + mask + prob, gathered rows (and their float copies) and the bmm outputs
        block = g * (k_x * k_y * (4 + 1 + 4) + (k_x + k_y) * d * 4 * 3)
        if self.union:
            saved_extra, block = sce_variants.union_bytes(n, c, n_b, k_x, k_y, block)
            saved += saved_extra
        return int(grads + saved + max(select, block))
