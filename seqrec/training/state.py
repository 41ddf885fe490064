"""The training state: what a checkpoint holds, why training stopped, capture and restore.

``last.pt`` = {"meta", "model", "optimizer", "loss", "rng", "state"}: enough to continue
bit-identically on CPU (the epoch order, the step inside the epoch, every RNG and what the loss
carries from step to step are part of it). Under torchrun each rank's random streams are reseeded at
every step from (seed, rank, global step) (``distributed.step_seed``), so the checkpoint's step and
world size fix every rank's RNG state; a checkpoint of another world size restarts its interrupted
epoch from the first step. ``best.pt`` = {"meta", "model", "epoch"}. Both load with
``torch.load(weights_only=True)``: only tensors, plain numbers and JSON strings.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seqrec import __version__
from seqrec.errors import SeqrecError
from seqrec.rundir import RunDir
from seqrec.training.checkpoint import check_compatible, load_checkpoint
from seqrec.training.system import global_rng_state, set_global_rng_state

if TYPE_CHECKING:
    from seqrec.training.trainer import Trainer


class Stop(enum.Enum):
    """Why training ended before ``train.epochs``."""

    TIME_BUDGET = "time_budget"  # train.max_time_s spent (TimeBudget)
    EARLY_STOP = "early_stop"    # train.patience epochs without a validation gain (EarlyStopping)
    CALLBACK = "callback"        # any other callback's decision


@dataclass(frozen=True)
class StopReason:
    """A callback's request to end training after the current step (the epoch is then closed as usual)."""

    kind: Stop
    message: str  # one line for the log and train_info.json, e.g. "time budget of 60s reached"


@dataclass
class TrainState:
    """Everything about the run's progress that a checkpoint carries (the model and RNGs aside)."""

    epoch: int = 0                  # completed epochs
    step: int = 0                   # batches done in the current epoch
    global_step: int = 0            # batches done in the whole run
    perm: np.ndarray | None = None  # order of the training windows in the current epoch (None between epochs)
    best: float = -1.0              # best validation NDCG@10 so far
    best_epoch: int = 0
    bad_epochs: int = 0             # epochs since the best one
    nan_skips: int = 0              # non-finite steps skipped (train.nan_policy=skip)
    elapsed: float = 0.0            # training seconds, over every process of the run
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics.jsonl record per epoch
    stop: StopReason | None = None  # set by a callback to end training; None while running


@dataclass
class EpochSums:
    """Running sums of one epoch's steps (in this process) for its metrics.jsonl record."""

    start: float
    loss: float = 0.0
    n: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float | None, stats: dict[str, float]) -> None:
        if loss is None:  # a skipped non-finite step
            return
        self.loss, self.n = self.loss + loss, self.n + 1
        for k, v in stats.items():
            self.stats[k] = self.stats.get(k, 0.0) + v


def checkpoint_meta(trainer: Trainer) -> dict[str, Any]:
    """What identifies the data and model of a checkpoint (checked before it is loaded)."""
    return {"version": __version__, "fingerprint": trainer.fingerprint, "n_items": trainer.data.n_items,
            "model": type(trainer.model).__name__}


def loss_state(loss: Any) -> dict[str, Any]:
    """``loss.state_dict()``; {} for a plain function used as the loss."""
    return loss.state_dict() if hasattr(loss, "state_dict") else {}


def capture(trainer: Trainer, st: TrainState) -> dict[str, Any]:
    """The full training state of ``trainer`` at ``st`` (the content of ``last.pt``)."""
    stop = {"kind": st.stop.kind.value, "message": st.stop.message} if st.stop else None
    return {
        "meta": checkpoint_meta(trainer),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict() if trainer.optimizer else None,
        "loss": loss_state(trainer.loss),
        "rng": {**global_rng_state(), "numpy": json.dumps(trainer.rng.bit_generator.state),
                "loss": trainer.gen.get_state()},
        "state": {"epoch": st.epoch, "step": st.step, "global_step": st.global_step,
                  "perm": torch.from_numpy(st.perm) if st.perm is not None else None,
                  "best": st.best, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
                  "nan_skips": st.nan_skips, "elapsed": st.elapsed, "stop": json.dumps(stop),
                  "history": json.dumps(st.history), "world_size": trainer.world},
    }


def restore(trainer: Trainer, ck: dict[str, Any]) -> TrainState:
    """Load ``ck`` (from ``capture``) into the trainer's model, optimiser and RNGs -> its TrainState."""
    trainer.model.load_state_dict(ck["model"])
    if trainer.optimizer and ck["optimizer"]:
        trainer.optimizer.load_state_dict(ck["optimizer"])
        for group in trainer.optimizer.param_groups:  # a resume may lower the learning rate (after a NaN stop)
            group["lr"] = trainer.cfg.train.lr
    if ck.get("loss"):  # only a loss with a state saved one (older checkpoints: no key)
        trainer.loss.load_state_dict(ck["loss"])
    r = ck["rng"]
    set_global_rng_state(r)
    trainer.rng.bit_generator.state = json.loads(r["numpy"])
    trainer.gen.set_state(r["loss"])
    s = ck["state"]
    stop = json.loads(s["stop"])
    perm, step = s["perm"].numpy() if s["perm"] is not None else None, s["step"]
    saved_world = int(s.get("world_size", 1))
    if saved_world != trainer.world and perm is not None:  # the ranks' shares of the epoch moved: restart it
        trainer.log(f"note: the checkpoint was written by {saved_world} process(es), this run has {trainer.world}: "
                    f"epoch {s['epoch'] + 1} restarts from its first step (with the checkpoint's weights)")
        perm, step = None, 0
    return TrainState(epoch=s["epoch"], step=step, global_step=s["global_step"], perm=perm, best=s["best"],
                      best_epoch=s["best_epoch"], bad_epochs=s["bad_epochs"], nan_skips=s["nan_skips"],
                      elapsed=s["elapsed"], history=json.loads(s["history"]),
                      stop=StopReason(Stop(stop["kind"]), stop["message"]) if stop else None)


def load_resume(run: RunDir | None, fingerprint: str, n_items: int, log: Any) -> dict[str, Any] | None:
    """The newest loadable ``last.pt`` of ``run``, else ``prev.pt`` (last.pt damaged, or missing after a
    crash between the two renames of a checkpoint save); None if the run has no checkpoint yet. A
    damaged last.pt is renamed ``last.pt.damaged`` so the next save cannot rotate it over prev.pt.
    A checkpoint of other data, or of a fine-tuned run, is refused."""
    if run is None or not (run.last.exists() or run.prev.exists()):
        return None
    if run.train_info.exists() and "finetune" in json.loads(run.train_info.read_text() or "{}"):
        raise SeqrecError(f"{run.path} is a fine-tuned run (seqrec finetune): its checkpoint holds the "
                          "fine-tuning method's layers and cannot be resumed; fine-tune the base run again")
    path = run.last if run.last.exists() else run.prev
    try:
        ck = load_checkpoint(path)
    except SeqrecError as e:
        if path == run.prev or not run.prev.exists():
            raise
        log(f"warning: {e}; falling back to {run.prev}")
        os.replace(run.last, run.last.with_name("last.pt.damaged"))
        path = run.prev
        ck = load_checkpoint(path)
    check_compatible(ck, fingerprint, n_items, path)
    from seqrec.models.table import is_old_layout

    if ck.get("optimizer") and is_old_layout(ck["model"], n_items):
        raise SeqrecError(f"{path} was written before the item table lost its padding row (seqrec models "
                          "now keep the catalog's rows alone): its weights still load for evaluate, recommend, "
                          "export and finetune, but its optimiser state does not fit; train a new run")
    return _upgrade(ck)


def _upgrade(ck: dict[str, Any]) -> dict[str, Any]:
    """A ``last.pt`` written before the callback trainer (the stop reason as a string, Python's RNG
    state at the top level) in today's layout, so runs started then still resume bit-exactly."""
    s = ck["state"]
    if "stop" in s:
        return ck
    old = s.pop("stopped", "")
    kind = Stop.TIME_BUDGET if old.startswith("time budget") else Stop.EARLY_STOP if old.startswith("early") \
        else Stop.CALLBACK
    s["stop"] = json.dumps({"kind": kind.value, "message": old} if old else None)
    ck["rng"]["python"] = ck.pop("python_rng")
    return ck


# what may change when a run is resumed: what it has computed so far stays valid (budgets, where it
# runs, and the step's rate and guards: after a NaN stop a lower lr, clipping or the skip policy)
RESUME_KEYS = ("train.epochs", "train.max_time_s", "train.patience", "train.num_threads",
               "train.checkpoint_every_s", "train.checkpoint_every_steps", "train.device", "train.lr",
               "train.grad_clip", "train.nan_policy", "train.max_nan_skips", "train.loggers", "train.tracking_uri")


def resume_changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{"section.key": (saved, now)} for every setting a resume changes; a ConfigError naming the
    first one outside ``RESUME_KEYS`` (the checkpoint was computed with it)."""
    from seqrec.errors import ConfigError

    changes = {f"{sec}.{k}": ((saved.get(sec) or {}).get(k), v) for sec, values in now.items()
               for k, v in values.items() if (saved.get(sec) or {}).get(k) != v}
    bad = [k for k in changes if k not in RESUME_KEYS]
    if bad:
        raise ConfigError(f"--resume: {bad[0]} cannot change when a run is resumed (the checkpoint was computed "
                          f"with it; start a new run instead); only --device and --set "
                          f"{'/'.join(k for k in RESUME_KEYS if k != 'train.device')} may change")
    return changes

