"""Full softmax cross-entropy over the catalog: the reference objective (memory O(N*C)).

One [N, C] float32 buffer: forward keeps the logits and each row's log-sum-exp; backward turns
the logits into ``(softmax - onehot) / N`` in place and multiplies it out. Autograd's
``log_softmax`` + ``nll_loss`` held four to five such buffers at the peak (the logits, the
log-probabilities, the incoming gradient, ``exp`` of the log-probabilities and the result:
15.8 GB at N = 23k, C = 26.7k on CPU, docs/benchmarks.md session 18).
"""

from __future__ import annotations

import torch

from seqrec.losses.base import Loss, LossContext, compute_dtype

ROWS = 256  # rows per block of the log-sum-exp: its temporaries are [ROWS, C], not [N, C]


class _FullCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(cdtype), w.to(cdtype)
            logits = (xc @ wc.T).float()  # [N, C] float32: the one big buffer
            lse = torch.cat([torch.logsumexp(logits[r:r + ROWS], dim=1) for r in range(0, len(logits), ROWS)])
            loss = (lse - logits.gather(1, y[:, None]).squeeze(1)).mean()
        ctx.save_for_backward(xc, wc, y)
        ctx.logits, ctx.lse, ctx.dtypes = logits, lse, (x.dtype, w.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xc, wc, y = ctx.saved_tensors
        g, lse = ctx.logits, ctx.lse
        ctx.logits = ctx.lse = None  # the buffer becomes the gradient; nothing may read it again
        with torch.autocast(xc.device.type, enabled=False):
            g.sub_(lse[:, None]).exp_()                      # softmax, in place
            g[torch.arange(len(y), device=g.device), y] -= 1.0  # - onehot
            g.mul_(grad / len(y))                            # [N, C] = dL/dlogits
            gc = g.to(xc.dtype)
            dx, dw = gc @ wc, gc.T @ xc                      # [N, d], [C, d]
        return dx.to(ctx.dtypes[0]), dw.to(ctx.dtypes[1]), None, None


class FullCE(Loss):
    """Softmax cross-entropy over every item: logits [N, C] in memory (one float32 buffer)."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        return _FullCE.apply(hidden, item_emb, targets, compute_dtype(hidden, item_emb))

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        # the float32 logits, turned into the gradient in place; below float32 also the matmul's own
        # output and the gradient's copy in that dtype
        return n * c * 4 + (n * c * dtype_bytes if dtype_bytes < 4 else 0) + 2 * c * d * 4
