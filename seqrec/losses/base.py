"""The loss contract: ``loss(hidden[N,d], targets[N], item_emb[C,d], ctx) -> scalar``.

A loss never receives a logits matrix: it gets the hidden states of the N positions that have a
target, the targets in [0, C), and the real-item embedding table (no padding / mask rows), so a
memory-efficient objective stays memory-efficient. See ../shared/design/losses.md.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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

    Subclasses implement ``forward`` and are registered by name in ``seqrec.registry.LOSSES``
    (which sets ``name``); the constructor's type hints are what the registry validates a config
    against, so they must admit every valid value. ``predict_bytes`` gives the analytic peak
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

    def state_dict(self) -> dict[str, Any]:
        """What a loss carries from step to step (none for most): saved in checkpoints so that a
        resumed run continues bit-identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s output."""

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        """Peak extra bytes of one forward+backward on n positions, c items, width d; ``capacity``
        is ``ctx.capacity`` of training (batch_size x max_len), for losses sized from it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# -- validation helpers: one-line ConfigErrors that name the config key ("loss.n_buckets") --------
# The registry has already coerced config strings to the constructor's type hints; these check ranges
# (and types, for a loss built directly).

def check_int(key: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"loss.{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_size(key: str, value: Any) -> int | Literal["auto"]:
    """A positive integer or "auto"."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"loss.{key} must be a positive integer or 'auto', got {value!r}")
    return int(value)


def check_number(key: str, value: Any, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False) -> float:
    """A real number (not NaN) in [low, high], or (low, high] with ``low_open``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        if high < math.inf:
            bound = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
        else:
            bound = f" {'>' if low_open else '>='} {low:g}" if low > -math.inf else ""
        raise ConfigError(f"loss.{key} must be a number{bound}, got {value!r}")
    return float(value)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"loss.{key} must be true or false, got {value!r}")
    return value


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"loss.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def compute_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype when autocast is on for this device, else the inputs'."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(x.dtype, w.dtype)
