"""SparseGrad (Chekalina et al., EMNLP 2024, arXiv 2410.07383) and top-k without the rotation.

Each feed-forward linear W [d_out, d_in] is reparametrised as W~ = P^T W Q with orthogonal P, Q shared
by all linears of one kind ("up", "down"); the layer computes y = x W^T + b with W = P W~ Q^T, the
same function. Backward: the input gradient is a plain linear's (g W); the weight gradient in the
rotated space, G~ = P^T (g^T x) Q, is cut to its k largest entries by magnitude and returned as a
sparse COO tensor; the bias gradient is the plain sum of g (the bias stays in the original space).
P and Q come from an HOSVD of the gradients of the first steps: stacked [steps*blocks, d_out, d_in],
P = the left singular vectors of the mode-1 unfolding [d_out, steps*blocks*d_in], Q of the mode-2
unfolding [d_in, ...] (no truncation: square and orthogonal). Top-k is the same with P = Q = I.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.models.base import Float, Int
from seqrec.peft.base import GradientSource, PeftMethod, plain_linear


def topk_coo(g: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest-magnitude entries of ``g`` [m, n] as a coalesced sparse COO tensor [m, n]."""
    flat = g.reshape(-1)
    idx = flat.abs().topk(min(k, flat.numel()), sorted=False).indices.sort().values
    rows = torch.div(idx, g.shape[1], rounding_mode="floor")
    return torch.sparse_coo_tensor(torch.stack([rows, idx - rows * g.shape[1]]), flat[idx], g.shape,
                                   is_coalesced=True, check_invariants=False)


class SparseGradFunction(torch.autograd.Function):
    """y = x (P W~ Q^T)^T + b; backward: exact dx, top-k sparse COO dW~ (rotated space), plain db."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_rot: torch.Tensor, bias: torch.Tensor | None, p: torch.Tensor,
                q: torch.Tensor, k: int) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # W in the weights' dtype even under autocast
            w = p @ w_rot @ q.T  # [d_out, d_in]: one small product instead of rotating every activation
        ctx.save_for_backward(x, w, p, q)
        ctx.k, ctx.has_bias = k, bias is not None
        return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, p, q = ctx.saved_tensors
        dx = g @ w.to(g.dtype) if ctx.needs_input_grad[0] else None
        g2, x2 = g.reshape(-1, g.shape[-1]).to(w.dtype), x.reshape(-1, x.shape[-1]).to(w.dtype)
        dw = topk_coo(p.T @ (g2.T @ x2) @ q, ctx.k) if ctx.needs_input_grad[1] else None
        db = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def _stash_sparse(p: torch.Tensor) -> None:
    """After accumulation: move the sparse gradient out of ``.grad`` into ``p.sparse_grad`` (the
    trainer's gradient clipping cannot take sparse tensors; ``CombinedOptimizer`` hands it back)."""
    prev = getattr(p, "sparse_grad", None)
    p.sparse_grad = p.grad if prev is None else (prev + p.grad).coalesce()
    p.grad = None


class SparseGradLinear(nn.Module):
    """A linear with weight W = P W~ Q^T: ``weight_rot`` (W~, trained by SparseAdam from top-k sparse
    gradients), ``bias`` (original space, dense), buffers ``p`` [d_out, d_out] and ``q`` [d_in, d_in]."""

    sparse_weight = True

    def __init__(self, linear: nn.Linear, p: torch.Tensor, q: torch.Tensor, k: int) -> None:
        super().__init__()
        w = linear.weight.detach()
        self.k = int(k)
        self.register_buffer("p", p.to(w))
        self.register_buffer("q", q.to(w))
        self.weight_rot = nn.Parameter(self.p.T @ w @ self.q)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        self.weight_rot.register_post_accumulate_grad_hook(_stash_sparse)

    @property
    def weight(self) -> torch.Tensor:
        """W [d_out, d_in] in the original space."""
        return self.p @ self.weight_rot @ self.q.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SparseGradFunction.apply(x, self.weight_rot, self.bias, self.p, self.q, self.k)

    def to_linear(self) -> nn.Linear:
        with torch.no_grad():
            return plain_linear(self.weight, self.bias)


def mode_factors(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HOSVD factors of ``grads`` [n, d_out, d_in] -> (P [d_out, d_out], Q [d_in, d_in]) orthogonal,
    columns by decreasing singular value (eigenvectors of the unfoldings' Gram matrices, float64)."""
    g = grads.double()
    p = torch.linalg.eigh(torch.einsum("nij,nkj->ik", g, g)).eigenvectors.flip(1)
    q = torch.linalg.eigh(torch.einsum("nji,njk->ik", g, g)).eigenvectors.flip(1)
    return p, q


def energy_share(g: torch.Tensor, frac: float = 0.01) -> float:
    """Share of ``g``'s squared norm in its top ``frac`` of entries by magnitude (1.0 = all of it)."""
    sq = g.double().reshape(-1).square()
    k = max(1, round(frac * sq.numel()))
    return float(sq.topk(k).values.sum() / sq.sum().clamp_min(1e-300))


class TopK(PeftMethod):
    """Top-k sparse weight gradient (k = budget * d_out * d_in) without the rotation; SparseAdam."""

    def wrap(self, linear: nn.Linear, kind: str) -> nn.Module:
        d_out, d_in = linear.weight.shape
        return SparseGradLinear(linear, torch.eye(d_out), torch.eye(d_in), self.k_of(d_out, d_in))


class SparseGrad(TopK):
    """SparseGrad: top-k in the HOSVD basis of the first ``collect_steps`` batches' gradients, one
    (P, Q) per kind of linear. ``transpose_q``: use Q^T instead of Q (the other orientation)."""

    needs_gradients = True

    def __init__(self, budget: Float = 0.01, collect_steps: Int = 20, transpose_q: bool = False) -> None:
        super().__init__(budget)
        self.collect_steps = max(1, int(collect_steps))
        self.transpose_q = bool(transpose_q)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, model: nn.Module, gradients: GradientSource | None) -> None:
        if gradients is None:
            raise ValueError("SparseGrad needs a gradient source (batches of the fine-tuning data)")
        self.factors = rotations(model, self.paths, gradients, self.collect_steps)
        if self.transpose_q:
            self.factors = {k: (p, q.T) for k, (p, q) in self.factors.items()}

    def wrap(self, linear: nn.Linear, kind: str) -> nn.Module:
        d_out, d_in = linear.weight.shape
        p, q = self.factors[kind]
        return SparseGradLinear(linear, p, q, self.k_of(d_out, d_in))


def collect_gradients(model: nn.Module, paths: dict[str, list[str]], gradients: GradientSource,
                      steps: int) -> dict[str, torch.Tensor]:
    """{kind: [steps*blocks, d_out, d_in]} weight gradients of the linears ``paths`` over ``steps``
    batches of ``gradients`` (the weights do not move: every batch sees the trained model)."""
    weights = {kind: [model.get_submodule(p).weight for p in ps] for kind, ps in paths.items()}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for ws in weights.values():
        for w in ws:
            w.requires_grad_(True)
    out: dict[str, list[torch.Tensor]] = {kind: [] for kind in paths}
    for _ in gradients(steps):
        for kind, ws in weights.items():
            out[kind].extend(w.grad.detach().clone() for w in ws if w.grad is not None)
        model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(saved[id(p)])
    return {kind: torch.stack(gs) for kind, gs in out.items() if gs}


def rotations(model: nn.Module, paths: dict[str, list[str]], gradients: GradientSource,
              steps: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{kind: (P, Q)} from the HOSVD of the collected gradients (identity where none arrived)."""
    grads = collect_gradients(model, paths, gradients, steps)
    out = {}
    for kind, ps in paths.items():
        w = model.get_submodule(ps[0]).weight
        out[kind] = mode_factors(grads[kind]) if kind in grads else (torch.eye(w.shape[0]), torch.eye(w.shape[1]))
    return out
