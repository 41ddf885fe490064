"""Training objectives, built by name through ``seqrec.registry.LOSSES``:

    from seqrec.registry import LOSSES
    loss = LOSSES.build("sce", n_buckets=256)

Every loss follows the contract in ``base.py``.
"""

from seqrec.losses.base import Loss, LossContext

__all__ = ["Loss", "LossContext"]
