"""Exact softmax cross-entropy without the [N, C] logits (``ce_chunked``).

Forward walks the catalog in chunks of ``c`` items keeping an online log-sum-exp per position
(float32); backward recomputes each chunk's logits, turns them into ``softmax - onehot`` in place
and accumulates dX (addmm into one [N, d] buffer) and dW (mm straight into the chunk's rows of the
[C, d] gradient). Peak extra memory is one [N, c] buffer plus the gradients: O(N*c + C*d).
The price is one extra X Wᵀ product (the recomputation); in exchange no multi-GB buffer is
allocated. Speed against full CE depends on the case: one ML-1M epoch on CPU 34.9 vs 39.7 s (14b022b,
before the kept heap), one ML-20M-shaped epoch 2,646 vs 2,182 s at 2.3 vs 5.0 GiB
(docs/benchmarks.md, session 16).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch

from seqrec.losses.base import Loss, LossContext, check_choice, check_number, check_size, compute_dtype

# work-buffer budget of memory_budget_mb="auto", by device type (see ChunkedCE)
AUTO_BUDGET_MB = {"cpu": 32.0, "cuda": 512.0}


def auto_chunk(n: int, c: int, memory_budget_mb: float) -> int:
    """Largest chunk whose [n, chunk] float32 work buffer fits the budget (at least 256 items)."""
    chunk = int(memory_budget_mb * 2**20 // (4 * max(n, 1)))
    return max(256, min(c, chunk))


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int,
                cdtype: torch.dtype) -> torch.Tensor:
        n, c = x.shape[0], w.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(cdtype), w.to(cdtype)
            lse = torch.full((n,), float("-inf"), device=x.device, dtype=torch.float32)
            buf = torch.empty((n, min(chunk, c)), device=x.device, dtype=cdtype)
            for c0 in range(0, c, chunk):
                c1 = min(c0 + chunk, c)
                b = buf[:, : c1 - c0]
                torch.mm(xc, wc[c0:c1].T, out=b)
                # logsumexp of the chunk in float32 (in place: the buffer is scratch), merged
                # into the running value
                f = b if b.dtype == torch.float32 else b.float()
                m = f.amax(dim=1)
                m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                lse = torch.logaddexp(lse, f.sub_(m[:, None]).exp_().sum(dim=1).log_().add_(m))
            # positive logit <x_n, w_{y_n}>: a gather, no [N, C] needed
            pos = (xc.float() * wc[y].float()).sum(1)
        ctx.save_for_backward(x, w, y, lse)
        ctx.chunk, ctx.cdtype = chunk, cdtype
        return (lse - pos).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, w, y, lse = ctx.saved_tensors
        chunk, cdtype = ctx.chunk, ctx.cdtype
        n, c = x.shape[0], w.shape[0]
        scale = grad_out.float() / n
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(cdtype), w.to(cdtype)
            acc = torch.float32 if cdtype in (torch.float16, torch.bfloat16) else cdtype
            dx = torch.zeros((n, x.shape[1]), device=x.device, dtype=acc)
            dw = torch.empty((c, w.shape[1]), device=w.device, dtype=cdtype)
            buf = torch.empty((n, min(chunk, c)), device=x.device, dtype=cdtype)
            fbuf = buf if cdtype == torch.float32 else None
            neg_lse = (-lse)[:, None]
            rows = torch.arange(n, device=x.device)
            for c0 in range(0, c, chunk):
                c1 = min(c0 + chunk, c)
                b = buf[:, : c1 - c0]
                torch.mm(xc, wc[c0:c1].T, out=b)
                # softmax of the chunk = exp(logit - lse), computed in place (float32 if possible)
                p = b if fbuf is not None else b.float()
                p.add_(neg_lse).exp_()
                hit = (y >= c0) & (y < c1)
                p[rows[hit], y[hit] - c0] -= 1.0  # softmax - onehot
                if p is not b:
                    b.copy_(p)
                if acc == cdtype:
                    dx.addmm_(b, wc[c0:c1])
                else:
                    dx.add_(torch.mm(b, wc[c0:c1]).float())
                torch.mm(b.T, xc, out=dw[c0:c1])
            dx = (dx * scale).to(x.dtype)
            dw = (dw.float() * scale).to(w.dtype) if dw.dtype != torch.float32 else dw.mul_(scale)
            dw = dw.to(w.dtype)
        return dx, dw, None, None, None


class ChunkedCE(Loss):
    """Exact full-catalog CE in O(N*chunk + C*d) memory.

    chunk_size: items per chunk, or "auto" (from ``memory_budget_mb``, the [N, chunk] work buffer).
    memory_budget_mb: budget for the work buffer when ``chunk_size="auto"``; "auto" = 32 MiB on CPU
        (a buffer that stays in cache: faster than full CE there) and 512 MiB on CUDA, where each
        chunk's kernel launches dominate (measured on an H100: 2x faster than 32 MiB).
    impl: "chunked" (portable, the default and the oracle) or "auto" (on CUDA, cut-cross-entropy's
        or Liger's fused kernel when one is installed and takes the inputs' dtypes; else chunked).
    """

    def __init__(self, chunk_size: int | Literal["auto"] = "auto", memory_budget_mb: float | Literal["auto"] = "auto",
                 impl: Literal["chunked", "auto"] = "chunked") -> None:
        self.chunk_size = check_size("chunk_size", chunk_size)
        self.memory_budget_mb = (memory_budget_mb if memory_budget_mb == "auto"
                                 else check_number("memory_budget_mb", memory_budget_mb, 0, low_open=True))
        self.impl = check_choice("impl", impl, ("chunked", "auto"))

    def resolve_chunk(self, n: int, c: int, device_type: str = "cpu") -> int:
        """Items per chunk for ``n`` positions and ``c`` items on ``device_type`` ("cpu", "cuda")."""
        if self.chunk_size == "auto":
            budget = self.memory_budget_mb
            if budget == "auto":
                budget = AUTO_BUDGET_MB.get(device_type, AUTO_BUDGET_MB["cpu"])
            return auto_chunk(n, c, float(budget))
        return min(int(self.chunk_size), c)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        if self.impl == "auto" and hidden.is_cuda:
            fused = _fused_cuda(hidden, targets, item_emb)
            if fused is not None:
                return fused
        chunk = self.resolve_chunk(hidden.shape[0], item_emb.shape[0], hidden.device.type)
        cdtype = compute_dtype(hidden, item_emb)
        return _ChunkedCE.apply(hidden, item_emb, targets, chunk, cdtype)

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        chunk = self.resolve_chunk(n, c)  # CPU budget (like `seqrec plan`); CUDA's "auto" buffer is larger
        # one [N, chunk] work buffer (+ its float32 copy under autocast), dW [C, d], dX [N, d] and
        # its scaled copy, a few [N] vectors, allocator/autograd bookkeeping (4 MiB, measured)
        work = n * chunk * dtype_bytes + (n * chunk * 4 if dtype_bytes < 4 else 0)
        return work + c * d * dtype_bytes + 2 * n * d * 4 + 8 * n * 4 + 4 * 2**20


def _fused_cuda(hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor | None:
    """A fused linear CE kernel on CUDA when one is installed and takes these dtypes; None otherwise.

    cut-cross-entropy's backward takes only bf16/fp16 hidden states (its gradient filtering, on by
    default there, is turned off: the result stays exact CE); Liger takes float32 too (one dtype for both).
    """
    half = hidden.dtype in (torch.bfloat16, torch.float16)
    for name, fn in _fused_kernels():
        if name == "cce" and half:
            return fn(hidden, item_emb, targets, reduction="mean", filter_eps=None)
        if name == "liger" and hidden.dtype == item_emb.dtype:
            return fn(item_emb, hidden, targets)
    return None


@functools.cache
def _fused_kernels() -> tuple[tuple[str, Any], ...]:
    """The fused CE kernels that import, in order of preference (looked up once per process)."""
    found: list[tuple[str, Any]] = []
    try:
        from cut_cross_entropy import linear_cross_entropy  # type: ignore[import-not-found]

        found.append(("cce", linear_cross_entropy))
    except ImportError:
        pass
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # type: ignore

        found.append(("liger", LigerFusedLinearCrossEntropyLoss()))
    except ImportError:
        pass
    return tuple(found)
