"""Full softmax cross-entropy over the catalog: the reference objective, exact.

The positions are taken in blocks of ``rows``. Each block's logits [rows, C] are formed, turned in
place into exp(logit - max) (their row sums give the loss), and multiplied out into the block's
rows of dX and into dW (the softmax's 1/sum applied on the [rows, d] sides) — all in the forward,
while the block is still in cache; the backward only scales the two stored gradients. No [N, C]
buffer exists: the extra memory is one [rows, C] block, dX [N, d] and dW [C, d].

Why in the forward: the [N, C] logits written to memory and read back by the backward cost about as
much as the three products themselves on CPU (ML-1M, N = 17k, C = 3.4k, one core: the loss took
0.83 s of a 1.46 s step with the [N, C] buffer; docs/benchmarks.md, session 20). Without gradients
(evaluation, ``torch.no_grad``) only the loss is formed.
"""

from __future__ import annotations

import torch

from seqrec.losses.base import Loss, LossContext, compute_dtype

# bytes of one [rows, C] float32 block, by device type: ~L2-sized on CPU; on CUDA one large block
# (few kernel launches), as ce_chunked's "auto" work buffer
BLOCK_BYTES = {"cpu": 2**20, "cuda": 512 * 2**20}
MIN_ROWS = 64  # dW [C, d] is read and written once per block: fewer rows would make that dominate


def block_rows(n: int, c: int, device_type: str = "cpu") -> int:
    """Positions per block for ``n`` positions and ``c`` items on ``device_type``."""
    budget = BLOCK_BYTES.get(device_type, BLOCK_BYTES["cpu"])
    return max(1, min(n, max(MIN_ROWS, budget // (4 * max(c, 1)))))


class _FullCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, cdtype: torch.dtype,
                grads: bool) -> torch.Tensor:
        n, c = x.shape[0], w.shape[0]
        rows = block_rows(n, c, x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(cdtype), w.to(cdtype)
            logits = torch.empty((rows, c), device=x.device, dtype=cdtype)
            nll = torch.empty(n, device=x.device, dtype=torch.float32)
            if grads:
                dx = torch.empty_like(xc)                                  # [N, d]
                dw = torch.zeros(w.shape, device=w.device, dtype=torch.float32)  # [C, d]
            for r in range(0, n, rows):
                xb, yb = xc[r:r + rows], y[r:r + rows]
                s = logits[:len(xb)]
                torch.mm(xb, wc.T, out=s)                                  # [rows, C]
                e = s if cdtype == torch.float32 else s.float()
                pos = e.gather(1, yb[:, None]).squeeze(1)
                m = e.amax(1, keepdim=True)
                e.sub_(m).exp_()                                           # exp(logit - max)
                z = e.sum(1)
                torch.sub(m.squeeze(1) + z.log(), pos, out=nll[r:r + len(xb)])  # lse - target logit
                if grads:
                    # softmax = e / z: the 1/z goes onto the [rows, d] sides, not the [rows, C] block
                    inv = z.reciprocal_()[:, None]
                    ec = e if e is s else s.copy_(e)
                    torch.mm(ec, wc, out=dx[r:r + len(xb)]).mul_(inv)
                    if cdtype == torch.float32:
                        dw.addmm_(ec.T, xb * inv)
                    else:
                        dw.add_(ec.T @ (xb * inv).to(cdtype))
            loss = nll.mean()
            if grads:
                # - onehot: dX -= W[y], dW[y] -= X; then the mean's 1/N
                dx.sub_(wc[y]).div_(n)
                dw.index_add_(0, y, xc.float(), alpha=-1.0).div_(n)
        ctx.grads = (dx, dw) if grads else None
        ctx.dtypes = (x.dtype, w.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dx, dw = ctx.grads  # set whenever a backward can happen (an input required grad, grad mode on)
        ctx.grads = None  # the stored gradients are scaled in place: nothing may read them again
        if grad.item() != 1.0:
            dx, dw = dx.mul_(grad.to(dx.dtype)), dw.mul_(grad)
        return dx.to(ctx.dtypes[0]), dw.to(ctx.dtypes[1]), None, None, None


class FullCE(Loss):
    """Softmax cross-entropy over every item, exact; logits formed one block of positions at a
    time (never [N, C]), gradients formed with them."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        grads = torch.is_grad_enabled() and (hidden.requires_grad or item_emb.requires_grad)
        return _FullCE.apply(hidden, item_emb, targets, compute_dtype(hidden, item_emb), grads)

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        rows = block_rows(n, c)  # CPU blocks (like `seqrec plan`); CUDA's are larger
        # the logits block (and its float32 copy below float32); dX [N, d] and dW [C, d] in float32
        # (dW becomes the table's gradient as it is); the [N] losses; below float32 the casts of X and
        # W to it and of the gradients back; allocator/autograd bookkeeping (4 MiB, as ce_chunked)
        blocks = rows * c * (dtype_bytes + (4 if dtype_bytes < 4 else 0))
        grads = (n + c) * d * 4 + 4 * n
        casts = 2 * (n + c) * d * dtype_bytes if dtype_bytes < 4 else 0
        return blocks + grads + casts + 4 * 2**20
