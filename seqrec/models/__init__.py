"""Model zoo: the ``Encoder`` interface and the built-in models.

Models are built by name through the one registry, ``seqrec.registry.MODELS``:
``MODELS.build(name, n_items, **params)`` with name in ``sasrec``, ``bert4rec``, ``gru4rec``, ``pop``
or any name a user registered with ``MODELS.register("mymodel", MyEncoder)``. See docs/custom_models.md.
"""

from seqrec.models.base import Encoder
from seqrec.models.gru import GRU4Rec
from seqrec.models.pop import Pop
from seqrec.models.transformer import BERT4Rec, SASRec

__all__ = ["BERT4Rec", "Encoder", "GRU4Rec", "Pop", "SASRec"]
