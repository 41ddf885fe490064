"""Training: batches from the CSR store, the Trainer loop and its callbacks (see ``callbacks.py``)."""

from seqrec.training.callbacks import (
    Callback,
    Checkpointing,
    EarlyStopping,
    MetricsLog,
    ProgressBar,
    SignalStop,
    TimeBudget,
    TrainingInterrupted,
)
from seqrec.training.state import Stop, StopReason, TrainState
from seqrec.training.trainer import Trainer

__all__ = ["Callback", "Checkpointing", "EarlyStopping", "MetricsLog", "ProgressBar", "SignalStop", "Stop",
           "StopReason", "TimeBudget", "TrainState", "Trainer", "TrainingInterrupted"]
