"""Training: batches from the CSR store, the Trainer loop and its callbacks (see ``callbacks.py``)."""

from seqrec.training.callbacks import (
    Callback,
    Checkpointing,
    EarlyStopping,
    MetricsLog,
    ProgressBar,
    ResumeNote,
    SignalStop,
    TimeBudget,
    TrainingInterrupted,
)
from seqrec.training.model_file import load_model, save_model
from seqrec.training.state import Stop, StopReason, TrainState
from seqrec.training.system import resolve_device, seed_everything
from seqrec.training.trainer import Trainer

__all__ = ["Callback", "Checkpointing", "EarlyStopping", "MetricsLog", "ProgressBar", "ResumeNote", "SignalStop",
           "Stop", "StopReason", "TimeBudget", "TrainState", "Trainer", "TrainingInterrupted", "load_model",
           "resolve_device", "save_model", "seed_everything"]
