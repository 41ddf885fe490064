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
from typing import Any

import torch
import torch.nn.functional as F

from seqrec.errors import ConfigError
from seqrec.losses.base import Loss, LossContext, register_loss
from seqrec.losses.sampling import Negatives, NegativeSampler


class _GatherDot(torch.autograd.Function):
    """logits[p, j] = <x[p], w[ids[p, j]]>, in chunks of positions (memory O(chunk*n*d))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, chunk: int) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            wd = w.to(x.dtype)
            out = torch.empty(ids.shape, device=x.device, dtype=torch.float32)
            for p0 in range(0, ids.shape[0], chunk):
                e = wd[ids[p0:p0 + chunk]]  # [pc, n, d]
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
                dx[p0:p0 + chunk] = torch.bmm(gc[:, None, :], wd[idc]).squeeze(1)
                dw.index_add_(0, idc.reshape(-1), (gc[:, :, None] * xc[:, None, :]).reshape(-1, x.shape[1]))
        return dx, dw.to(w.dtype), None, None


class _SampledCE(torch.autograd.Function):
    """mean_p [lse(pos_p, neg_p) - pos_p] with a one-buffer backward: the saved [N, n] negative
    logits are turned into their own gradient in place (softmax * grad / N)."""

    @staticmethod
    def forward(ctx, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        m = torch.maximum(pos, neg.amax(1)).detach()
        lse = m + torch.log(torch.exp(pos - m) + torch.exp(neg - m[:, None]).sum(1))
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

    def __init__(self, n_negatives: int = 1, sampler: str = "uniform", shared: bool = False,
                 pop_alpha: float = 1.0, memory_budget_mb: float = 16.0) -> None:
        self._sampler = NegativeSampler(n_negatives, sampler, shared, pop_alpha)  # validates
        if not memory_budget_mb > 0:
            raise ConfigError(f"{self.name}: memory_budget_mb must be > 0, got {memory_budget_mb!r}")
        self.n_negatives = n_negatives
        self.sampler = sampler
        self.shared = bool(shared)
        self.pop_alpha = float(pop_alpha)
        self.memory_budget_mb = float(memory_budget_mb)

    def _chunk(self, d: int) -> int:
        return max(1, int(self.memory_budget_mb * 2**20 // (4 * d * self.n_negatives)))

    def scores(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
               ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Negatives]:
        """pos [N] and neg [N, n] float32 logits, mask [N, n] (True = a real negative), the draw."""
        neg = self._sampler.sample(y, w.shape[0], ctx)
        pos = (x.float() * w[y].float()).sum(1)
        if self.shared and ctx.seq_idx is not None:
            seq = neg.row
            slot, lmax = _pack(seq, neg.ids.shape[0])
            xp = x.new_zeros((neg.ids.shape[0], lmax, x.shape[1])).index_put((seq, slot), x)
            s = torch.bmm(xp, w[neg.ids].to(x.dtype).transpose(1, 2))  # [R, L, n]
            logits = s[seq, slot].float()
            del s
            # target vs the row's negatives, compared packed: bool [R, L, n], never int64 [N, n]
            yp = y.new_full((neg.ids.shape[0], lmax), -1).index_put_((seq, slot), y)
            mask = (neg.ids[:, None, :] != yp[:, :, None])[seq, slot]
        else:
            logits = _GatherDot.apply(x, w, neg.ids, self._chunk(x.shape[1]))
            mask = neg.ids != y[:, None]
        return pos, logits, mask, neg

    def _sampled_bytes(self, n: int, c: int, d: int, dtype_bytes: int) -> int:
        k = self.n_negatives
        if self.shared:
            # R*L ≈ N (packed, equal lengths): [N, k] bmm output, its gather, grads of both;
            # gathered [R, k, d] embeddings are small at sequence granularity
            per_pos = 4 * n * k * 4 + n * k
        else:
            # ids (int64), logits, mask, grad of logits; chunked gather [chunk, k, d] x2 in backward
            per_pos = n * k * (8 + 4 + 1 + 4) + 2 * min(n, self._chunk(d)) * k * d * 4
        # dW dense [C, d] (+ the gather's own [C, d] grad that autograd accumulates into it)
        return per_pos + 2 * c * d * dtype_bytes + 4 * n * d * 4

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@register_loss
class BCE(SampledLoss):
    """SASRec's binary CE: -log σ(s+) - Σ_neg log(1 - σ(s-)), mean over positions.

    Defaults: 1 uniform negative per position (SASRec drew it among unseen items: set
    ``sampler="uniform_exclude_seen"`` for that).
    """

    name = "bce"

    def __init__(self, n_negatives: int = 1, sampler: str = "uniform", shared: bool = False,
                 pop_alpha: float = 1.0, memory_budget_mb: float = 16.0) -> None:
        super().__init__(n_negatives, sampler, shared, pop_alpha, memory_budget_mb)

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

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4) -> int:
        # + softplus output and its grad, masked product: ~3 float [N, k]
        return self._sampled_bytes(n, c, d, dtype_bytes) + 3 * n * self.n_negatives * 4


@register_loss
class GBCE(BCE):
    """gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023).

    The positive's probability is raised to β = α·(t·(1 - 1/α) + 1/α), α = n/(C - 1): t=0 is plain
    BCE, t=1 calibrates the sampled model to the full softmax. Default 256 negatives, t=0.75.
    """

    name = "gbce"

    def __init__(self, n_negatives: int = 256, t: float = 0.75, sampler: str = "uniform",
                 shared: bool = False, pop_alpha: float = 1.0, memory_budget_mb: float = 16.0) -> None:
        super().__init__(n_negatives, sampler, shared, pop_alpha, memory_budget_mb)
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"gbce: t must be in [0, 1], got {t!r}")
        self.t = float(t)

    def beta(self, c: int) -> float:
        alpha = self.n_negatives / max(c - 1, 1)
        return alpha * (self.t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


@register_loss
class SampledSoftmax(SampledLoss):
    """Softmax CE over [positive, n negatives] (CE⁻). Default: 3,000 uniform negatives shared per
    sequence. ``logq``: subtract log(expected draws) = log(n·q_i) from each negative's logit, which
    makes the sampled partition sum an estimate of the full one. ``in_batch``: also use the batch's
    other targets as negatives (corrected by their inclusion probability when ``logq``)."""

    name = "sampled_softmax"

    def __init__(self, n_negatives: int = 3000, sampler: str = "uniform", shared: bool = True,
                 pop_alpha: float = 1.0, logq: bool = False, in_batch: bool = False,
                 memory_budget_mb: float = 16.0) -> None:
        super().__init__(n_negatives, sampler, shared, pop_alpha, memory_budget_mb)
        self.logq = bool(logq)
        self.in_batch = bool(in_batch)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        pos, neg, mask, draw = self.scores(hidden, targets, item_emb, ctx)
        # in place where autograd allows it (the gather producing ``neg`` does not keep its output)
        if self.logq:
            neg = neg.sub_(draw.log_q[draw.row] + math.log(self.n_negatives))
        neg = neg.masked_fill_(~mask, float("-inf"))
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

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4) -> int:
        k = self.n_negatives + 1
        # + cat, masked_fill, log_softmax output, its grad and the grad of cat: ~5 float [N, k]
        extra = 5 * n * k * 4 + 2 * n * k
        if self.in_batch:
            extra += 6 * n * n * 4
        return self._sampled_bytes(n, c, d, dtype_bytes) + extra
