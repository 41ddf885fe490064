"""The encoder interface every model implements.

Id conventions: model item ids are 1..C (``n_items`` = C), 0 is padding, sequences are LEFT-padded.
``forward(items[B, L]) -> hidden[B, L, d]``; ``item_embeddings() -> [C, d]`` is the scoring matrix in
catalog space (row i scores model item i + 1; no padding / mask rows), so ``hidden @ W.T`` are logits.

Models are registered by name in ``seqrec.registry.MODELS`` and built with
``MODELS.build(name, n_items, **params)`` (parameters checked against the constructor's type hints).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Annotated, Any, ClassVar

import pydantic
import torch
from torch import nn

from seqrec.errors import ConfigError

# Constructor hints: pydantic (``MODELS.check_params``) validates config values from them; strict,
# so True or 2.0 is not silently read as an integer.
Int = Annotated[int, pydantic.Strict()]
Float = Annotated[float, pydantic.Strict()]


class _EncoderType(type):
    """Runs ``Encoder._check_contract`` once the outermost constructor has finished."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        obj._check_contract()
        return obj


class Encoder(nn.Module, metaclass=_EncoderType):
    """Base class of all models: item ids [B, L] -> hidden states [B, L, d].

    Subclasses call ``super().__init__(n_items, d)``, store every other constructor argument under its
    own name (scikit-learn discipline, so ``get_params`` can read it back) and implement ``forward``
    and ``item_embeddings``.

    The contract the trainer and the evaluator read (checked when construction ends, ConfigError
    otherwise):
        max_len: int >= 1, the longest input the model reads (training windows and evaluation
            histories are cut to it). A constructor parameter or a class attribute.
        causal (class): True if position t predicts item t+1 (SASRec, GRU); False for a masked-item
            model (BERT4Rec), which predicts the item hidden behind its mask token and must then set
        mask_token: int > n_items, the input id of the mask (a row of its own item table), and
        mask_prob: float in (0, 1], the share of items the trainer masks.
        trainable (class): False for models the trainer must not optimise with gradients (``pop``).
        name (class): registry name (set by ``MODELS.register`` / ``MODELS.get``).
        renamed (class): old parameter name -> new one (refused with a one-line ConfigError).
    """

    name: ClassVar[str] = ""
    causal: ClassVar[bool] = True
    trainable: ClassVar[bool] = True
    renamed: ClassVar[dict[str, str]] = {}
    max_len: int
    mask_token: int | None = None
    mask_prob: float | None = None

    def __init__(self, n_items: int, d: int):
        super().__init__()
        self.n_items = check_int("n_items", n_items, 1)
        self.d = check_int("d", d, 1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """items: int64 [B, L] model ids (0 = padding, left-padded) -> float [B, L, d]."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:  # pragma: no cover - interface
        """float [C, d]: the output (scoring) matrix of the real items 1..C, in catalog order."""
        raise NotImplementedError

    @classmethod
    def param_names(cls) -> list[str]:
        """Constructor hyper-parameters (everything but ``n_items``, which comes from the data)."""
        sig = inspect.signature(cls.__init__)
        return [p for p in list(sig.parameters)[1:] if p != "n_items"]

    def get_params(self) -> dict[str, Any]:
        """Constructor hyper-parameters, so ``MODELS.build(m.name, m.n_items, **m.get_params())``
        rebuilds the same architecture. ``n_items`` is left out: it belongs to the data."""
        return {k: getattr(self, k) for k in self.param_names()}

    def _check_contract(self) -> None:
        who = f"model {self.name or type(self).__name__!r}"
        if not _is_int(getattr(self, "max_len", None), 1):
            raise ConfigError(f"{who} must set max_len (an integer >= 1: the longest input it reads), "
                              f"got {getattr(self, 'max_len', None)!r}")
        if self.causal:
            return
        if not _is_int(self.mask_token, self.n_items + 1):
            raise ConfigError(f"{who} is not causal, so it must set mask_token (an integer > n_items = "
                              f"{self.n_items}), got {self.mask_token!r}")
        p = self.mask_prob
        if not (isinstance(p, numbers.Real) and not isinstance(p, bool) and 0.0 < p <= 1.0):
            raise ConfigError(f"{who} is not causal, so it must set mask_prob (a number in (0, 1]), got {p!r}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


# -- validation helpers (messages name the config key, e.g. "model.d") -------------------------------

def check_int(key: str, value: Any, low: int) -> int:
    if not _is_int(value, low):
        raise ConfigError(f"model.{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_prob(key: str, value: Any, high_inclusive: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and 0.0 <= value and (value <= 1.0 if high_inclusive else value < 1.0)
    if not ok:
        bound = "[0, 1]" if high_inclusive else "[0, 1)"
        raise ConfigError(f"model.{key} must be a number in {bound}, got {value!r}")
    return float(value)
