"""Training objectives, chosen by name. Every loss follows the contract in ``base.py``."""

from seqrec.losses import (
    ce,  # noqa: F401
    ce_chunked,  # noqa: F401
    rece,  # noqa: F401
    sampled,  # noqa: F401
    sce,  # noqa: F401
)
from seqrec.losses.base import LOSSES, Loss, LossContext, build_loss, register_loss

__all__ = ["LOSSES", "Loss", "LossContext", "build_loss", "register_loss"]
