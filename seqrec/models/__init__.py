"""Model zoo: the ``Encoder`` interface, the registry, and the built-in models.

``build_model(name, n_items, **params)`` with name in ``sasrec``, ``bert4rec``, ``gru4rec``, ``pop``
(or any name a user registered with ``@register_model``). See docs/custom_models.md.
"""

from seqrec.models.base import MODELS, Encoder, build_model, register_model
from seqrec.models.gru import GRU4Rec
from seqrec.models.pop import Pop
from seqrec.models.transformer import BERT4Rec, SASRec

__all__ = ["MODELS", "BERT4Rec", "Encoder", "GRU4Rec", "Pop", "SASRec", "build_model", "register_model"]
