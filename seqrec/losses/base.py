"""The loss contract: ``loss(hidden[N,d], targets[N], item_emb[C,d], ctx) -> scalar``.

A loss never receives a logits matrix: it gets the hidden states of the N positions that have a
target, the targets in [0, C), and the real-item embedding table (no padding / mask rows), so a
memory-efficient objective stays memory-efficient. See ../shared/design/losses.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from seqrec.errors import ConfigError


@dataclass
class LossContext:
    """What a loss may need beyond (X, y, W).

    seq_idx: int64 [N], batch row (sequence) of each position.
    hist_offsets / hist_items: the batch rows' item sets in CSR form, item ids in [0, C)
        (row b is ``hist_items[hist_offsets[b]:hist_offsets[b+1]]``), for "exclude seen" sampling.
    item_pop: float/int [C] training popularity (popularity sampling, logQ correction).
    generator: seeded torch.Generator on the loss's device (all sampling must use it).
    capacity: positions a full batch of the run's shape holds (batch_size x max_len), padding
        included; SCE's "auto" rule sizes its buckets from it, as the authors' code does.
    stats: filled by the loss (e.g. {"sce_coverage": 0.93}); the trainer averages and logs it.
    """

    seq_idx: torch.Tensor | None = None
    hist_offsets: torch.Tensor | None = None
    hist_items: torch.Tensor | None = None
    item_pop: torch.Tensor | None = None
    generator: torch.Generator | None = None
    capacity: int | None = None
    stats: dict[str, float] = field(default_factory=dict)


class Loss:
    """Base class: the constructor stores hyper-parameters (validated), ``__call__`` computes.

    Subclasses set ``name`` and implement ``forward``. ``predict_bytes`` gives the analytic peak
    extra memory of one forward+backward (used by ``seqrec plan`` and ``seqrec bench losses``).
    """

    name: ClassVar[str] = ""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                 ctx: LossContext | None = None) -> torch.Tensor:
        return self.forward(hidden, targets, item_emb, ctx if ctx is not None else LossContext())

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


LOSSES: dict[str, type[Loss]] = {}


def register_loss(cls: type[Loss]) -> type[Loss]:
    LOSSES[cls.name] = cls
    return cls


def build_loss(name: str, **params: Any) -> Loss:
    """Instantiate a registered loss by name with keyword hyper-parameters."""
    from seqrec import losses as _  # noqa: F401  (registers the built-in losses)

    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[name](**params)
    except TypeError as e:
        raise ConfigError(f"bad parameters for loss {name!r}: {e}") from None
