"""The encoder interface every model implements, and the registry that builds models by name.

Id conventions: model item ids are 1..C (``n_items`` = C), 0 is padding, sequences are LEFT-padded.
``forward(items[B, L]) -> hidden[B, L, d]``; ``item_embeddings() -> [C, d]`` is the scoring matrix in
catalog space (row i scores model item i + 1; no padding / mask rows), so ``hidden @ W.T`` are logits.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from seqrec.errors import ConfigError


class Encoder(nn.Module):
    """Base class of all models: item ids [B, L] -> hidden states [B, L, d].

    Subclasses call ``super().__init__(n_items, d)``, store every other constructor argument under its
    own name (scikit-learn discipline, so ``get_params`` can read it back) and implement ``forward``
    and ``item_embeddings``.

    Class attributes:
        name: registry name (set by ``register_model``).
        causal: True if position t predicts item t+1 (SASRec, GRU); False for a masked-item model
            (BERT4Rec), which predicts the item hidden behind its mask token.
        trainable: False for models the trainer must not optimise with gradients (``pop``).
    """

    name: ClassVar[str] = ""
    causal: ClassVar[bool] = True
    trainable: ClassVar[bool] = True

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
        """Constructor hyper-parameters, so ``build_model(m.name, m.n_items, **m.get_params())``
        rebuilds the same architecture. ``n_items`` is left out: it belongs to the data."""
        return {k: getattr(self, k) for k in self.param_names()}


MODELS: dict[str, type[Encoder]] = {}


def register_model(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: ``@register_model("mymodel")`` makes ``build_model("mymodel", ...)`` work."""

    def deco(cls: type[Encoder]) -> type[Encoder]:
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise TypeError(f"@register_model({name!r}) must decorate an Encoder subclass, got {cls!r}")
        cls.name = name
        MODELS[name] = cls
        return cls

    return deco


def _hint(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_model(name: str, n_items: int, **params: Any) -> Encoder:
    """Instantiate the registered model ``name`` for a catalog of ``n_items`` items.

    Raises ConfigError for an unknown model, an unknown parameter or an invalid value.
    """
    from seqrec import models as _  # noqa: F401  (registers the built-in models)

    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}{_hint(str(name), sorted(MODELS))}; "
                          f"known: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    valid = cls.param_names()
    for key in params:
        if key not in valid:
            raise ConfigError(f"model.{key}: unknown parameter for model {name!r}{_hint(key, valid)}; "
                              f"valid: {', '.join(valid)}")
    return cls(n_items, **params)


# -- validation helpers (messages name the config key, e.g. "model.d") -------------------------------

def check_int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"model.{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_prob(key: str, value: Any, high_inclusive: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and 0.0 <= value and (value <= 1.0 if high_inclusive else value < 1.0)
    if not ok:
        bound = "[0, 1]" if high_inclusive else "[0, 1)"
        raise ConfigError(f"model.{key} must be a number in {bound}, got {value!r}")
    return float(value)
