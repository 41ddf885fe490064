"""The fine-tuning method interface, feed-forward discovery, freezing and the two-part optimiser.

A method adapts the "up" (d -> d_ff) and "down" (d_ff -> d) linears of an encoder's feed-forward
blocks. An encoder names them with ``ffn_linears() -> {"up": [paths], "down": [paths]}`` (SASRec and
BERT4Rec do); without that method, every ``nn.Linear`` whose attribute name is ``up`` or ``down`` is
taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from seqrec.errors import ConfigError, SeqrecError, warn
from seqrec.models.base import Float

KINDS = ("up", "down")
# yields once per batch after a backward pass has left the weight gradients in ``.grad``
GradientSource = Callable[[int], Iterable[Any]]


def ffn_modules(model: nn.Module) -> dict[str, list[str]]:
    """{"up": [module paths], "down": [...]} of ``model``'s feed-forward linears (see module doc)."""
    if hasattr(model, "ffn_linears"):
        found = {k: list(v) for k, v in model.ffn_linears().items() if k in KINDS}
    else:
        found = {k: [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == k and isinstance(m, nn.Linear)]
                 for k in KINDS}
    if not any(found.values()):
        raise SeqrecError(f"model {type(model).__name__} has no feed-forward linears to fine-tune: give it an "
                          "ffn_linears() method naming them (docs/finetune.md), or use --peft full")
    return found


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def embedding_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters holding the item table: an ``ItemTable``'s (the items and any special rows such
    as BERT4Rec's mask token), else those sharing ``item_embeddings()``'s storage (a plug-in's table)."""
    from seqrec.models.table import ItemTable

    w = model.item_embeddings()
    for m in model.modules():
        if isinstance(m, ItemTable) and m.weight is w:
            return list(m.parameters())
    ptr = w.untyped_storage().data_ptr()
    return [p for p in model.parameters() if p.untyped_storage().data_ptr() == ptr]


class PeftMethod:
    """Base of every method. ``budget``: share in (0, 1] of each feed-forward weight's entries that
    one step updates (k = budget * d_out * d_in; the other methods are matched to it)."""

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False  # attach() wants a GradientSource (SparseGrad's HOSVD)

    def __init__(self, budget: Float = 0.01) -> None:
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"--budget must be in (0, 1] (the share of each feed-forward weight's entries "
                              f"updated per step), got {budget!r}")
        self.budget = float(budget)
        self.paths: dict[str, list[str]] = {}

    def k_of(self, d_out: int, d_in: int) -> int:
        return max(1, round(self.budget * d_out * d_in))

    # ---------------------------------------------------------------- the interface
    def attach(self, model: nn.Module, gradients: GradientSource | None = None,
               train_embeddings: bool = False) -> nn.Module:
        """Freeze ``model`` but the feed-forward biases (and the item table with ``train_embeddings``),
        replace the feed-forward linears with this method's modules -> ``model``."""
        self.paths = ffn_modules(model)
        self.prepare(model, gradients)
        for p in model.parameters():
            p.requires_grad_(False)
        for kind, paths in self.paths.items():
            for path in paths:
                set_module(model, path, self.wrap(model.get_submodule(path), kind))
        if train_embeddings:
            for p in embedding_params(model):
                p.requires_grad_(True)
        return model

    def prepare(self, model: nn.Module, gradients: GradientSource | None) -> None:
        """Work before the linears are replaced (SparseGrad collects gradients here)."""

    def wrap(self, linear: nn.Linear, kind: str) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    def optimizer_factory(self, train: Any) -> Callable[[nn.Module], torch.optim.Optimizer | None]:
        """``factory(model)`` for ``Trainer(optimizer=...)``: AdamW on the dense trainable parameters,
        plus SparseAdam on the sparse-gradient weights where the method has them."""
        def build(model: nn.Module) -> torch.optim.Optimizer | None:
            sparse = [m.weight_rot for m in model.modules() if getattr(m, "sparse_weight", False)]
            ids = {id(p) for p in sparse}
            dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
            kw = {"lr": train.lr, "betas": tuple(train.betas)}
            parts = [torch.optim.AdamW(dense, weight_decay=train.weight_decay, **kw)] if dense else []
            if sparse:
                parts.append(torch.optim.SparseAdam(sparse, **kw))
            return CombinedOptimizer(parts, sparse) if parts else None
        return build

    def export(self, model: nn.Module) -> nn.Module:
        """Every adapted linear back to a plain ``nn.Linear`` with the same function -> ``model``."""
        for paths in self.paths.values():
            for path in paths:
                m = model.get_submodule(path)
                if hasattr(m, "to_linear"):
                    set_module(model, path, m.to_linear())
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class Full(PeftMethod):
    """Full fine-tuning: every parameter, the optimiser of ``train.optimizer`` (``budget`` unused)."""

    def attach(self, model: nn.Module, gradients: GradientSource | None = None,
               train_embeddings: bool = False) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def optimizer_factory(self, train: Any) -> Callable[[nn.Module], torch.optim.Optimizer | None]:
        from seqrec.training.optim import build_optimizer

        return lambda model: build_optimizer(model, train)


def plain_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` [d_out, d_in] and ``bias`` [d_out] (copies)."""
    d_out, d_in = weight.shape
    lin = nn.Linear(d_in, d_out, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped as one (AdamW on the dense parameters, SparseAdam on the rotated
    weights): ``step``, ``zero_grad``, ``state_dict`` / ``load_state_dict`` and ``param_groups`` cover
    all parts, so the trainer, its checkpoints and resume treat it as any optimiser.

    ``sparse``: parameters whose sparse gradient arrives in their module's ``sparse_grad`` (kept out
    of ``.grad`` so the trainer's dense gradient clipping, which cannot take sparse tensors, skips
    them); ``step`` hands it to SparseAdam. A non-finite sparse gradient skips that update, with a
    warning.
    """

    def __init__(self, parts: list[torch.optim.Optimizer], sparse: list[nn.Parameter]) -> None:
        self.parts, self.sparse = parts, sparse
        # not Optimizer.__init__: the parts own the groups and the state
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for o in self.parts for g in o.param_groups]

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        return {p: s for o in self.parts for p, s in o.state.items()}

    def _sparse_grads(self) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        for p in self.sparse:
            g = getattr(p, "sparse_grad", None)
            if g is not None:
                yield p, g

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)
        for p in self.sparse:
            p.sparse_grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for p, g in self._sparse_grads():
            if torch.isfinite(g._values()).all():
                p.grad = g
            else:
                warn("non-finite sparse gradient: that weight's update skipped this step")
        for o in self.parts:
            o.step()
        for p in self.sparse:
            p.grad, p.sparse_grad = None, None

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        parts = state_dict.get("parts", [])
        if len(parts) != len(self.parts):
            raise SeqrecError(f"optimizer state has {len(parts)} parts, this fine-tuning method {len(self.parts)}")
        for o, s in zip(self.parts, parts, strict=True):
            o.load_state_dict(s)


def state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of every tensor in ``optimizer``'s state (moments; sparse ones by their stored values)."""
    if optimizer is None:
        return 0
    total = 0
    for s in optimizer.state.values():
        for v in s.values():
            if isinstance(v, torch.Tensor):
                total += (v._values().numel() if v.is_sparse else v.numel()) * v.element_size()
    return total
