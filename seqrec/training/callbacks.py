"""Training callbacks: everything around the optimisation loop (checkpoints, stopping, logging).

Interface. A callback subclasses ``Callback`` and overrides any of these hooks; the trainer calls
them in this order:

    on_fit_start(trainer, state)           once, after setup and after a resumed checkpoint is loaded
      on_epoch_start(trainer, state)       before the first step of an epoch (also a resumed one mid-epoch)
        on_step_end(trainer, state, loss)  after every step; loss: float, or None for a skipped non-finite step
      on_epoch_end(trainer, state, record) after validation; ``record`` (already in state.history) is the
                                           metrics.jsonl row: epoch, loss, epoch_s, elapsed_s, valid_<metric>@k
    on_fit_end(trainer, state)             when the loop ended normally (epochs done or ``state.stop`` set)
    teardown(trainer, state)               always, also when an exception ends training (release resources)

``state`` is the ``TrainState`` (``seqrec.training.state``): epoch (completed), step (in the epoch),
global_step, elapsed (training seconds over every process of the run), best / best_epoch /
bad_epochs (validation NDCG@10), nan_skips, history, stop. ``trainer`` gives model, optimizer,
cfg, run (``RunDir`` or None), n_batches, log and ``save_last(state)``.

Stopping: a callback ends training by setting ``state.stop = StopReason(Stop.X, "one line why")``;
the current epoch is then closed as usual (validation, record, checkpoint) and the loop ends. The
reason is saved in the checkpoint; when the run is resumed, the callback that set it decides in
``on_fit_start`` whether it still holds (TimeBudget with a larger budget, EarlyStopping with more
patience clear their own). To abort at once instead, raise (SignalStop raises TrainingInterrupted).

Order: the trainer calls the user's callbacks first, in the order given, then the built-ins
``ProgressBar, TimeBudget, EarlyStopping, MetricsLog``, with a run directory
``Checkpointing, SignalStop, Curves`` (``curves.py``: RUN/curves.png) and, with ``train.loggers``,
``Trackers`` (``loggers.py``: csv, TensorBoard, MLflow, W&B).
"""

from __future__ import annotations

import copy
import json
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.errors import SeqrecError
from seqrec.io import write_text
from seqrec.rundir import RunDir
from seqrec.training.checkpoint import load_checkpoint, save_checkpoint
from seqrec.training.state import Stop, StopReason, TrainState, checkpoint_meta, resume_changes

if TYPE_CHECKING:
    from seqrec.training.trainer import Trainer


class Callback:
    """Base class: every hook is a no-op. See the module docstring for the order and the state."""

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer, state: TrainState) -> None:
        pass

    def on_step_end(self, trainer: Trainer, state: TrainState, loss: float | None) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        pass

    def teardown(self, trainer: Trainer, state: TrainState) -> None:
        pass


class TrainingInterrupted(SeqrecError):
    """Raised after a SIGINT/SIGTERM once the current step is done and a checkpoint is saved."""

    def __init__(self, signum: int, run_dir: Path | None) -> None:
        self.signum = signum
        where = f"; resume with: seqrec fit --resume {run_dir}" if run_dir else ""
        super().__init__(f"training interrupted by signal {signum}, checkpoint saved{where}")


class ProgressBar(Callback):
    """A tqdm bar per epoch (disabled when stderr is not a terminal)."""

    def on_epoch_start(self, trainer: Trainer, state: TrainState) -> None:
        from seqrec.progress import progress

        self.bar = progress(total=trainer.n_batches, initial=state.step, desc=f"epoch {state.epoch + 1}",
                            unit="step")

    def on_step_end(self, trainer: Trainer, state: TrainState, loss: float | None) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "skip")

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        self.bar.close()

    def teardown(self, trainer: Trainer, state: TrainState) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.close()


class TimeBudget(Callback):
    """Stop once training has run ``max_s`` seconds (``train.max_time_s``; None: no budget)."""

    def __init__(self, max_s: float | None) -> None:
        self.max_s = float(max_s) if max_s else None

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        if state.stop and state.stop.kind is Stop.TIME_BUDGET and (self.max_s is None or state.elapsed < self.max_s):
            state.stop = None  # resumed with a larger budget

    def on_step_end(self, trainer: Trainer, state: TrainState, loss: float | None) -> None:
        if self.max_s is not None and state.stop is None and state.elapsed > self.max_s:
            state.stop = StopReason(Stop.TIME_BUDGET, f"time budget of {self.max_s:g}s reached")


class BestWeights:
    """The best weights so far: ``best.pt`` in a run directory (it survives a resume), else in memory.

    One save/load path for both; the content is {"meta", "model", "epoch"}.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory: dict[str, Any] | None = None

    def save(self, ckpt: dict[str, Any]) -> None:
        if self.path is None:
            self.memory = copy.deepcopy(ckpt)
        else:
            save_checkpoint(ckpt, self.path)

    def load(self) -> dict[str, Any] | None:
        if self.path is not None and self.path.exists():
            return load_checkpoint(self.path)
        return self.memory


class EarlyStopping(Callback):
    """Keep the best weights by validation NDCG@10; stop after ``patience`` epochs without a gain.

    The best weights are put back into the model when training ends.
    """

    def __init__(self, patience: int, best: BestWeights) -> None:
        self.patience = int(patience)
        self.best = best

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        if state.stop and state.stop.kind is Stop.EARLY_STOP and state.bad_epochs < self.patience:
            state.stop = None  # resumed with more patience

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        score = record["valid_ndcg@10"]
        if score > state.best:
            state.best, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            self.best.save({"meta": checkpoint_meta(trainer), "model": trainer.model.state_dict(),
                            "epoch": state.epoch})
            return
        state.bad_epochs += 1
        if state.bad_epochs >= self.patience:
            state.stop = StopReason(Stop.EARLY_STOP,
                                    f"early stop: no validation NDCG@10 gain for {self.patience} epochs")

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        best = self.best.load()
        if best is not None:
            trainer.model.load_state_dict(best["model"])


class MetricsLog(Callback):
    """One log line per epoch; with a run directory, the history rewritten to ``metrics.jsonl``."""

    def __init__(self, run: RunDir | None) -> None:
        self.run = run

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        trainer.log(f"epoch {state.epoch:3d}  loss {record['loss']:.4f}  valid ndcg@10 {record['valid_ndcg@10']:.4f}  "
                    f"hr@10 {record['valid_hr@10']:.4f}  ({record['epoch_s']:.1f}s)")
        if self.run is not None:
            write_text(self.run.metrics, "".join(json.dumps(h) + "\n" for h in state.history))


class Checkpointing(Callback):
    """``last.pt`` (the one before kept as ``prev.pt``) at every epoch end and, inside an epoch, every
    ``every_s`` seconds and/or ``every_steps`` steps (``train.checkpoint_every_s`` / ``_every_steps``)."""

    def __init__(self, every_s: float | None, every_steps: int | None) -> None:
        self.every_s = every_s
        self.every_steps = int(every_steps) if every_steps else None

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        self.saved = time.monotonic()

    def on_step_end(self, trainer: Trainer, state: TrainState, loss: float | None) -> None:
        if state.stop is not None or state.step >= trainer.n_batches:
            return  # the epoch end saves next
        due_s = self.every_s and time.monotonic() - self.saved >= self.every_s
        due_n = self.every_steps and state.global_step % self.every_steps == 0
        if due_s or due_n:
            self._save(trainer, state)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        self._save(trainer, state)

    def _save(self, trainer: Trainer, state: TrainState) -> None:
        trainer.save_last(state)
        self.saved = time.monotonic()


class SignalStop(Callback):
    """SIGINT/SIGTERM end training cleanly: the step in flight finishes, ``last.pt`` is saved and
    ``TrainingInterrupted`` raised. The handlers are installed for the duration of ``fit`` only (and
    only in the main thread, where Python delivers signals); the caller's are restored afterwards."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved: dict[int, Any] = {}  # empty until on_fit_start: teardown then restores nothing

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        self.signum = None
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.getsignal(s) for s in self.SIGNALS}
            for s in self.SIGNALS:
                signal.signal(s, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signum = signum  # acted on after the current step: a half-done step is never saved

    def on_step_end(self, trainer: Trainer, state: TrainState, loss: float | None) -> None:
        self._interrupt(trainer, state)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        self._interrupt(trainer, state)

    def _interrupt(self, trainer: Trainer, state: TrainState) -> None:
        if self.signum is not None:
            trainer.save_last(state)
            raise TrainingInterrupted(self.signum, trainer.run.path if trainer.run else None)

    def teardown(self, trainer: Trainer, state: TrainState) -> None:
        for s, h in self.saved.items():
            signal.signal(s, h)


def default_callbacks(t: Any, run: RunDir | None) -> list[Callback]:
    """The built-ins for the ``train`` config section ``t``, in calling order."""
    callbacks: list[Callback] = [ProgressBar(), TimeBudget(t.max_time_s),
                                 EarlyStopping(t.patience, BestWeights(run.best if run else None)), MetricsLog(run)]
    if run is not None:
        from seqrec.training.curves import Curves

        callbacks += [Checkpointing(t.checkpoint_every_s, t.checkpoint_every_steps), SignalStop(), Curves(run)]
    if getattr(t, "loggers", None):
        from seqrec.training.loggers import Trackers

        callbacks.append(Trackers(t, run))
    return callbacks


class ResumeNote(Callback):
    """Says what a resume changed (``"train.lr 0.001 -> 0.0005"``): in the log when training starts
    and as ``resumed_with`` in the next epoch's metrics.jsonl record."""

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def between(cls, saved: dict[str, Any], now: dict[str, Any]) -> list[ResumeNote]:
        """[ResumeNote] naming the settings that differ between a run's saved config tree and the one it
        resumes with, or []; a ConfigError for a change a resume may not make (``state.resume_changes``)."""
        diff = [f"{k} {old!r} -> {new!r}" for k, (old, new) in resume_changes(saved, now).items()]
        return [cls(", ".join(diff))] if diff else []

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        trainer.log(f"resumed with {self.text}")

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, Any]) -> None:
        if self.text:
            record["resumed_with"], self.text = self.text, ""
