"""Sampled objectives: ``bce`` (SASRec), ``gbce`` (gSASRec) and ``sampled_softmax`` (CE⁻).

Each scores the positive and n sampled negatives per position, never the whole catalog:
- per-position negatives: logits via a chunked gather-dot (``_GatherDot``) that never holds the
  [N, n, d] gathered embeddings at once;
- shared negatives (one set per sequence): positions are packed into [R, L, d] by sequence and
  scored with one batched matmul against that sequence's [n, d] negatives.
A negative equal to the position's target is always masked (excluded from BCE, -inf in softmax).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seqrec.losses.base import Loss, LossContext, check_bool, check_number
from seqrec.losses.sampling import Negatives, NegativeSampler, Sampler

# allocator and autograd bookkeeping of a step, measured with seqrec bench losses
_OVERHEAD = 4 * 2**20


class _GatherDot(torch.autograd.Function):
    """logits[p, j] = <x[p], w[ids[p, j]]>, in chunks of positions (memory O(chunk*n*d))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, chunk: int) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            wd = w.to(x.dtype)
            out = torch.empty(ids.shape, device=x.device, dtype=torch.float32)
            for p0 in range(0, ids.shape[0], chunk):
                idc = ids[p0:p0 + chunk]
                # index_select: several times faster than advanced indexing on CPU
                e = wd.index_select(0, idc.reshape(-1)).view(*idc.shape, -1)  # [pc, n, d]
                out[p0:p0 + chunk] = torch.bmm(e, x[p0:p0 + chunk, :, None]).squeeze(2)
        ctx.save_for_backward(x, w, ids)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w, ids = ctx.saved_tensors
        chunk = ctx.chunk
        with torch.autocast(x.device.type, enabled=False):
            wd = w.to(x.dtype)
            g = g.to(x.dtype)
            dx = torch.empty_like(x)
            dw = torch.zeros(w.shape, device=w.device, dtype=x.dtype)
            for p0 in range(0, ids.shape[0], chunk):
                gc, idc, xc = g[p0:p0 + chunk], ids[p0:p0 + chunk], x[p0:p0 + chunk]
                e = wd.index_select(0, idc.reshape(-1)).view(*idc.shape, -1)
                dx[p0:p0 + chunk] = torch.bmm(gc[:, None, :], e).squeeze(1)
                del e
                dw.index_add_(0, idc.reshape(-1), (gc[:, :, None] * xc[:, None, :]).reshape(-1, x.shape[1]))
        return dx, dw.to(w.dtype), None, None


class _SampledCE(torch.autograd.Function):
    """mean_p [lse(pos_p, neg_p) - pos_p] with a one-buffer backward: the saved [N, n] negative
    logits are turned into their own gradient in place (softmax * grad / N)."""

    @staticmethod
    def forward(ctx, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        m = torch.maximum(pos, neg.amax(1)).detach()
        tot = torch.exp(pos - m)
        for r0 in range(0, neg.shape[0], 1024):  # row blocks: no [N, n] temporary
            tot[r0:r0 + 1024] += torch.exp(neg[r0:r0 + 1024] - m[r0:r0 + 1024, None]).sum(1)
        lse = m + torch.log(tot)
        ctx.save_for_backward(pos, neg, lse)
        return (lse - pos).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        pos, neg, lse = ctx.saved_tensors
        scale = g / pos.numel()
        # nothing else reads ``neg`` after this node (masked_fill_/index keep masks and indices only)
        gneg = neg.sub_(lse[:, None]).exp_().mul_(scale)
        gpos = (torch.exp(pos - lse) - 1.0) * scale
        return gpos, gneg


class _Unpack(torch.autograd.Function):
    """packed [R, L, n] -> per position [N, n]; slots are unique, so the backward is a plain
    scatter into one zero buffer (no accumulate)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, seq: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(seq, slot)
        ctx.shape = s.shape
        return s[seq, slot]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        seq, slot = ctx.saved_tensors
        return g.new_zeros(ctx.shape).index_put_((seq, slot), g), None, None


def _pack(seq: torch.Tensor, r: int) -> tuple[torch.Tensor, int]:
    """Slot of each position inside its sequence (0..len-1, in position order) and the longest length."""
    order = torch.argsort(seq, stable=True)
    counts = torch.bincount(seq, minlength=r)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(seq)
    slot[order] = torch.arange(seq.numel(), device=seq.device) - starts[seq[order]]
    return slot, int(counts.max()) if counts.numel() else 0


class SampledLoss(Loss):
    """Shared machinery: sampler, validated knobs, positive/negative logits with masks."""

    def __init__(self, n_negatives: int = 1, sampler: Sampler = "uniform", shared: bool = False,
                 pop_alpha: float = 1.0, memory_budget_mb: float = 16.0) -> None:
        self._sampler = NegativeSampler(n_negatives, sampler, shared, pop_alpha)  # validates them
        self.n_negatives = self._sampler.n_negatives
        self.sampler = self._sampler.sampler
        self.shared = self._sampler.shared
        self.pop_alpha = self._sampler.pop_alpha
        self.memory_budget_mb = check_number("memory_budget_mb", memory_budget_mb, 0, low_open=True)

    def _chunk(self, d: int) -> int:
        return max(1, int(self.memory_budget_mb * 2**20 // (4 * d * self.n_negatives)))

    def scores(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
               ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Negatives]:
        """pos [N] and neg [N, n] float32 logits, mask [N, n] (True = a real negative), the draw."""
        neg = self._sampler.sample(y, w.shape[0], ctx)
        if self.shared and ctx.seq_idx is not None:
            # negatives' and targets' rows in one gather: one dense [C, d] gradient, not two
            r, k = neg.ids.shape
            rows = w[torch.cat([neg.ids.reshape(-1), y])].to(x.dtype)
            pos = (x.float() * rows[r * k:].float()).sum(1)
            seq = neg.row
            slot, lmax = _pack(seq, r)
            xp = x.new_zeros((r, lmax, x.shape[1])).index_put((seq, slot), x)
            s = torch.bmm(xp, rows[:r * k].view(r, k, -1).transpose(1, 2))  # [R, L, n]
            logits = _Unpack.apply(s, seq, slot).float()
            del s
            # target vs the row's negatives, compared packed: bool [R, L, n], never int64 [N, n]
            yp = y.new_full((neg.ids.shape[0], lmax), -1).index_put_((seq, slot), y)
            mask = (neg.ids[:, None, :] != yp[:, :, None])[seq, slot]
        else:
            mask = neg.ids != y[:, None]
            # the positive as column 0 of the same gather-dot: one dense [C, d] gradient, not two
            both = _GatherDot.apply(x, w, torch.cat([y[:, None], neg.ids], 1), self._chunk(x.shape[1]))
            pos, logits = both[:, 0], both[:, 1:]
        return pos, logits, mask, neg

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        """Peak extra bytes of one forward+backward (checked against ``seqrec bench losses``)."""
        k = self.n_negatives
        grads = 2 * n * d * 4 + _OVERHEAD  # dX and the positive path's [N, d] gather, bookkeeping
        if self.shared:
            # forward: packed [R, L, n] bmm output and its per-position copy (R*L ≈ N), a bool
            # mask; backward: the logits buffer reused for their gradient, then the dense dW
            return grads + max(2 * n * k * 4 + n * k, n * k * 4 + c * d * dtype_bytes)
        # ids (int64, with the target column) + logits + mask live from the forward on; then the
        # larger of two phases: the loss arithmetic on [N, k] (about 4 float buffers with their
        # gradients) or the gather backward (the logits' gradient, one [chunk, k, d] block, dW)
        # (the target-column copy of the ids counts as 4 B per element, calibrated on the benchmark)
        base = grads + n * k * (8 + 4 + 4 + 1)
        math_ = 4 * n * k * 4
        gather = n * k * 4 + min(n, self._chunk(d)) * k * d * 4 + c * d * dtype_bytes
        return base + max(math_, gather)


class BCE(SampledLoss):
    """SASRec's binary CE: -log σ(s+) - Σ_neg log(1 - σ(s-)), mean over positions.

    Defaults: 1 uniform negative per position (SASRec drew it among unseen items: set
    ``sampler="uniform_exclude_seen"`` for that).
    """

    def beta(self, c: int) -> float:
        return 1.0

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        pos, neg, mask, _ = self.scores(hidden, targets, item_emb, ctx)
        beta = self.beta(item_emb.shape[0])
        # -log σ(s)^β = β·softplus(-s): stable for any s (the gSASRec "transformed logit" form
        # log(1/(σ(s)^-β - 1)) gives the same value but overflows for large s)
        loss = beta * F.softplus(-pos) + (F.softplus(neg) * mask).sum(1)
        return loss.mean()


class GBCE(BCE):
    """gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023).

    The positive's probability is raised to β = α·(t·(1 - 1/α) + 1/α), α = n/(C - 1): t=0 is plain
    BCE, t=1 calibrates the sampled model to the full softmax. Default 256 negatives, t=0.75.
    """

    def __init__(self, n_negatives: int = 256, t: float = 0.75, sampler: Sampler = "uniform",
                 shared: bool = False, pop_alpha: float = 1.0, memory_budget_mb: float = 16.0) -> None:
        super().__init__(n_negatives, sampler, shared, pop_alpha, memory_budget_mb)
        self.t = check_number("t", t, 0, 1)

    def beta(self, c: int) -> float:
        alpha = self.n_negatives / max(c - 1, 1)
        return alpha * (self.t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


class SampledSoftmax(SampledLoss):
    """Softmax CE over [positive, n negatives] (CE⁻). Default: 3,000 uniform negatives shared per
    sequence. ``logq``: subtract log(expected draws) = log(n·q_i) from each negative's logit, which
    makes the sampled partition sum an estimate of the full one. ``in_batch``: also use the batch's
    other targets as negatives (corrected by their inclusion probability when ``logq``)."""

    def __init__(self, n_negatives: int = 3000, sampler: Sampler = "uniform", shared: bool = True,
                 pop_alpha: float = 1.0, logq: bool = False, in_batch: bool = False,
                 memory_budget_mb: float = 16.0) -> None:
        super().__init__(n_negatives, sampler, shared, pop_alpha, memory_budget_mb)
        self.logq = check_bool("logq", logq)
        self.in_batch = check_bool("in_batch", in_batch)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        pos, neg, mask, draw = self.scores(hidden, targets, item_emb, ctx)
        # in place where autograd allows it (the gather producing ``neg`` does not keep its output)
        # in place and outside autograd: both edits have derivative 1 (or 0 where masked, which
        # _SampledCE's backward yields anyway since exp(-inf) = 0), so no extra [N, n] buffers
        with torch.no_grad():
            if self.logq:
                neg.sub_(draw.log_q[draw.row] + math.log(self.n_negatives))
            neg.masked_fill_(~mask, float("-inf"))
        if self.in_batch:
            items, counts = torch.unique(targets, return_counts=True)
            s = hidden.float() @ item_emb[items].float().T  # [N, U]
            if self.logq:
                n = targets.numel()
                if ctx.item_pop is not None:
                    pop = ctx.item_pop.to(s.device).double()
                    q = pop[items] / pop.sum()
                else:
                    q = counts.double() / n
                # P(item among the batch's N targets) = 1 - (1 - q)^N
                incl = -torch.expm1(n * torch.log1p(-q.clamp(max=1 - 1e-12)))
                s = s - incl.clamp_min(1e-30).log().float()
            s = s.masked_fill(items[None, :] == targets[:, None], float("-inf"))
            neg = torch.cat([neg, s], 1)
        return _SampledCE.apply(pos, neg)

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        extra = 0
        if self.in_batch:  # [N, U<=N] in-batch logits, their masked copy and the concatenation
            extra = 2 * n * n * 4 + n * (self.n_negatives + n) * 4
        return super().predict_bytes(n, c, d, dtype_bytes) + extra
