"""Training: batches from the CSR store, the Trainer (optimiser, early stopping, checkpoints)."""

from seqrec.training.trainer import Trainer

__all__ = ["Trainer"]
