"""The backward half of a training step: the loss's and the encoder's gradients, and the norm check.

Kept apart from the trainer's loop so that the loop reads in one screen; ``Trainer._step`` calls
``backward`` then ``clip_gradients``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def backward(value: torch.Tensor, x: torch.Tensor, w: torch.Tensor, table: torch.Tensor | None,
              lap: Callable[[str], None], split: bool) -> None:
    """``value.backward()``. With ``split``, or with ``table`` (the leaf item table, ``w`` an alias of
    it), in two parts: the loss's gradients wrt x [N, d] and w [C, d] (``autograd.grad``), then the
    encoder's backward from x. The table's gradient is then the loss's dense one with the lookup's
    sparse rows added in place: no second [C, d] buffer (at a million items a 256 MB copy per step)."""
    if not split and table is None:
        value.backward()
        lap("backward")
        return
    leaves = [v for v in (x, w) if v.requires_grad]
    grads = dict(zip(map(id, leaves), torch.autograd.grad(value, leaves, allow_unused=True), strict=True))
    lap("loss_bwd")
    gx, gw = grads.get(id(x)), grads.get(id(w))
    if table is not None:
        if gx is not None:
            x.backward(gx)  # the lookup's rows land in table.grad (sparse on CPU / CUDA)
        if gw is not None:
            table.grad = gw if table.grad is None else gw.add_(table.grad)
    else:
        used = [(v, g) for v, g in ((x, gx), (w, gw)) if g is not None]
        torch.autograd.backward([v for v, _ in used], [g for _, g in used])
    lap("encoder_bwd")


def clip_gradients(grads_of: list[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The gradients' total L2 norm (as ``clip_grad_norm_``), scaled down to ``max_norm`` only where
    it is exceeded: ``clip_grad_norm_`` multiplies every gradient by its clamped coefficient even when
    that is 1, a pass over the [C, d] table gradient per step for nothing."""
    grads = [p.grad for p in grads_of]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float32)
                                                 for g in grads]))
    if max_norm and bool(norm > max_norm):
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
