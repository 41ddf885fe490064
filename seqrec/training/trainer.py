"""The training loop: one job — turn (config, model, loss, data) into a trained model on disk.

Design notes
- Every position with a target contributes: the trainer gathers those hidden states [N, d] and
  calls ``loss(X, y, W, ctx)`` with W = ``model.item_embeddings()`` (catalog space, no padding).
- Resumable and bit-identical on CPU: the epoch order, the step inside the epoch and every RNG
  (python, numpy, torch, the loss generator) are part of the checkpoint.
- Early stopping on validation NDCG@10; the best weights are restored at the end.
"""

from __future__ import annotations

import ctypes
import json
import math
import random
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec import __version__
from seqrec.data.store import EvalSet, PreparedData
from seqrec.errors import SeqrecError
from seqrec.evaluation import evaluate
from seqrec.io import write_text
from seqrec.losses.base import Loss, LossContext
from seqrec.training.batches import causal_batch, epoch_order, history_csr, make_windows, masked_batch
from seqrec.training.checkpoint import check_compatible, load_checkpoint, save_checkpoint


class TrainingInterrupted(SeqrecError):
    """Raised after a SIGINT/SIGTERM once the current step is done and a checkpoint is saved."""

    def __init__(self, signum: int, run_dir: Path | None) -> None:
        self.signum = signum
        where = f"; resume with: seqrec fit --resume {run_dir}" if run_dir else ""
        super().__init__(f"training interrupted by signal {signum}, checkpoint saved{where}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqrecError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _State:
    epoch: int = 0                  # completed epochs
    step: int = 0                   # batches done in the current epoch
    global_step: int = 0
    perm: np.ndarray | None = None  # order of training windows in the current epoch
    best: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    nan_skips: int = 0
    elapsed: float = 0.0            # training seconds spent before this process
    history: list | None = None
    stopped: str = ""               # why training ended early ("" while running)


class Trainer:
    """Trains ``model`` with ``loss`` on ``data`` as ``cfg.train`` says; writes into ``run_dir``.

    run_dir layout: config.yaml (written by the caller), metrics.jsonl (one record per epoch),
    checkpoints/{last,prev,best}.pt.
    """

    def __init__(self, cfg: Any, model: torch.nn.Module, loss: Loss, data: PreparedData,
                 run_dir: str | Path | None = None, log: Callable[[str], None] = print) -> None:
        self.cfg, self.model, self.loss, self.data = cfg, model, loss, data
        self.run_dir = Path(run_dir) if run_dir else None
        self.log = log
        self.t = cfg.train
        self.device = resolve_device(self.t.device)
        self.max_len = int(getattr(model, "max_len", 200))
        self.stop_signal: int | None = None  # set by a signal handler; checked after every step
        self.fingerprint = data.meta.get("fingerprint", "")

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        t = self.t
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        seed_everything(int(t.seed))
        self.model.to(self.device)
        self.rng = np.random.default_rng(int(t.seed))
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(t.seed) + 1)
        causal = getattr(self.model, "causal", True)
        span = self.max_len + 1 if causal else self.max_len
        self.windows = make_windows(self.data.train, span, t.window_stride, min_len=2 if causal else 1)
        if len(self.windows) == 0 and getattr(self.model, "trainable", True):
            raise SeqrecError("no training sequence has enough items (need at least 2 per user)")
        # With length grouping a batch's token count varies a lot; scaling each batch's mean loss by
        # tokens / mean tokens keeps every target's weight in the epoch's gradient as in random batches.
        targets = (self.windows.ends - self.windows.starts - (1 if causal else 0)).astype(np.float64)
        if not causal:
            targets *= getattr(self.model, "mask_prob", 1.0)
        self.mean_targets = max(float(targets.sum()) / max(math.ceil(len(self.windows) / int(t.batch_size)), 1), 1.0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay) if params else None
        self.item_pop = torch.as_tensor(self.data.item_pop[1:], dtype=torch.float32, device=self.device)
        self.valid = self._valid_subset()

    def _valid_subset(self) -> EvalSet:
        v, n = self.data.valid, self.t.valid_users
        if not n or n >= len(v):
            return v
        rows = np.sort(np.random.default_rng(int(self.t.seed) + 7).choice(len(v), size=int(n), replace=False))
        return EvalSet(v.users[rows], v.history.subset(rows), v.targets[rows])

    # ---------------------------------------------------------------- state
    def _capture(self, st: _State) -> dict[str, Any]:
        return {
            "meta": {"version": __version__, "fingerprint": self.fingerprint, "n_items": self.data.n_items,
                     "model": type(self.model).__name__},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "rng": {"numpy_global": _np_state(np.random.get_state()),
                    "numpy": json.dumps(self.rng.bit_generator.state),
                    "torch": torch.get_rng_state(), "loss": self.gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "python_rng": json.dumps(_py_state()),
            "state": {"epoch": st.epoch, "step": st.step, "global_step": st.global_step,
                      "perm": torch.from_numpy(st.perm) if st.perm is not None else None,
                      "best": st.best, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
                      "nan_skips": st.nan_skips, "elapsed": st.elapsed, "stopped": st.stopped,
                      "history": json.dumps(st.history or [])},
        }

    def _restore(self, ck: dict[str, Any]) -> _State:
        self.model.load_state_dict(ck["model"])
        if self.optimizer and ck.get("optimizer"):
            self.optimizer.load_state_dict(ck["optimizer"])
        r = ck["rng"]
        _set_py_state(json.loads(ck["python_rng"]))
        np.random.set_state(_np_state_back(r["numpy_global"]))
        self.rng.bit_generator.state = json.loads(r["numpy"])
        torch.set_rng_state(r["torch"])
        self.gen.set_state(r["loss"])
        if r["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(r["cuda"])
        s = ck["state"]
        return _State(epoch=s["epoch"], step=s["step"], global_step=s["global_step"],
                      perm=s["perm"].numpy() if s["perm"] is not None else None, best=s["best"],
                      best_epoch=s["best_epoch"], bad_epochs=s["bad_epochs"], nan_skips=s["nan_skips"],
                      elapsed=s["elapsed"], history=json.loads(s["history"]), stopped=s["stopped"])

    def _ckpt_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _save_last(self, st: _State) -> None:
        if self.run_dir:
            save_checkpoint(self._capture(st), self._ckpt_dir() / "last.pt", keep_previous=True)

    def _write_metrics(self, st: _State) -> None:
        if self.run_dir:
            write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in st.history or []))

    def load_resume_state(self) -> dict[str, Any] | None:
        """The newest loadable training checkpoint in run_dir (falls back to prev.pt if last.pt is damaged)."""
        d = self._ckpt_dir()
        if d is None or not (d / "last.pt").exists():
            return None
        try:
            ck = load_checkpoint(d / "last.pt")
            path = d / "last.pt"
        except SeqrecError as e:
            if not (d / "prev.pt").exists():
                raise
            self.log(f"warning: {e}; falling back to {d / 'prev.pt'}")
            ck, path = load_checkpoint(d / "prev.pt"), d / "prev.pt"
        check_compatible(ck, self.fingerprint, self.data.n_items, path)
        return ck

    # ---------------------------------------------------------------- training
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue a checkpointed run) and leave the best weights in ``self.model``."""
        self._setup()
        if not getattr(self.model, "trainable", True):
            self.model.fit_popularity(self.data.item_pop)
            return {"best_epoch": 0, "epochs": 0, "epoch_s": 0.0, "wall_s": 0.0, "peak_rss_mb": _peak_rss_mb()}
        st = _State(history=[])
        ck = self.load_resume_state() if resume else None
        if ck is not None:
            st = self._restore(ck)
            if st.stopped.startswith("time budget") and (not t_max(self.t) or st.elapsed < t_max(self.t)):
                st.stopped = ""  # resumed with a larger budget
            if st.stopped.startswith("early stop") and st.bad_epochs < self.t.patience:
                st.stopped = ""  # resumed with more patience
            self.log(f"resumed from epoch {st.epoch} step {st.step}")
        t, B = self.t, int(self.t.batch_size)
        n_batches = math.ceil(len(self.windows) / B)
        start = time.monotonic() - st.elapsed
        last_ckpt = time.monotonic()
        autocast = _autocast(t.autocast, self.device)
        from tqdm.auto import tqdm

        while st.epoch < t.epochs and not st.stopped:
            self.model.train()
            if st.perm is None:
                lengths = self.windows.ends - self.windows.starts
                st.perm, st.step = epoch_order(self.rng, lengths, B, bool(t.group_by_length)), 0
            ep_start, ep_loss, ep_n, stats_acc = time.monotonic(), 0.0, 0, {}
            bar = tqdm(total=n_batches, initial=st.step, desc=f"epoch {st.epoch + 1}", leave=False, disable=None)
            while st.step < n_batches:
                sel = st.perm[st.step * B:(st.step + 1) * B]
                value, stats = self._step(sel, autocast, st)
                st.step += 1
                st.global_step += 1
                if value is not None:
                    ep_loss, ep_n = ep_loss + value, ep_n + 1
                    for k, v in stats.items():
                        stats_acc[k] = stats_acc.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}" if value is not None else "skip")
                st.elapsed = time.monotonic() - start
                if self.stop_signal is not None:
                    bar.close()
                    self._save_last(st)
                    raise TrainingInterrupted(self.stop_signal, self.run_dir)
                if t.max_time and st.elapsed > t.max_time:
                    st.stopped = f"time budget of {t.max_time}s reached"
                    break
                now = time.monotonic()
                due_s = t.checkpoint_every_s and now - last_ckpt >= t.checkpoint_every_s
                due_n = t.checkpoint_every_steps and st.global_step % int(t.checkpoint_every_steps) == 0
                if (due_s or due_n) and st.step < n_batches:
                    self._save_last(st)
                    last_ckpt = time.monotonic()
            bar.close()
            st.epoch += 1
            st.perm, st.step = None, 0
            trim_heap()
            valid = self.evaluate(self.valid)
            rec = {"epoch": st.epoch, "loss": ep_loss / max(ep_n, 1), "epoch_s": time.monotonic() - ep_start,
                   "elapsed_s": time.monotonic() - start, **{f"valid_{k}": v for k, v in valid.items()},
                   **{k: v / max(ep_n, 1) for k, v in stats_acc.items()}}
            st.history.append(rec)
            score = valid["ndcg@10"]
            if score > st.best:
                st.best, st.best_epoch, st.bad_epochs = score, st.epoch, 0
                if self.run_dir:
                    save_checkpoint({"meta": self._capture(st)["meta"], "model": self.model.state_dict(),
                                     "epoch": st.epoch}, self._ckpt_dir() / "best.pt")
                else:
                    self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                st.bad_epochs += 1
                if st.bad_epochs >= t.patience:
                    st.stopped = f"early stop: no validation NDCG@10 gain for {t.patience} epochs"
            self.log(f"epoch {st.epoch:3d}  loss {rec['loss']:.4f}  valid ndcg@10 {score:.4f}  "
                     f"hr@10 {valid['hr@10']:.4f}  ({rec['epoch_s']:.1f}s)")
            st.elapsed = time.monotonic() - start
            self._write_metrics(st)
            self._save_last(st)
            last_ckpt = time.monotonic()
            if self.stop_signal is not None:
                raise TrainingInterrupted(self.stop_signal, self.run_dir)
        if st.stopped:
            self.log(st.stopped)
        self.restore_best()
        epochs = len(st.history)
        return {"best_epoch": st.best_epoch, "epochs": epochs, "best_valid_ndcg@10": st.best,
                "epoch_s": float(np.mean([h["epoch_s"] for h in st.history])) if epochs else 0.0,
                "wall_s": st.elapsed, "peak_rss_mb": _peak_rss_mb(), "stopped": st.stopped,
                "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None}

    def restore_best(self) -> None:
        d = self._ckpt_dir()
        if d is not None and (d / "best.pt").exists():
            self.model.load_state_dict(load_checkpoint(d / "best.pt")["model"])
        elif getattr(self, "_best_state", None) is not None:
            self.model.load_state_dict(self._best_state)

    def _batch(self, sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LossContext]:
        """Windows ``sel`` -> inputs [B, W], targets [B, W] (0 = none), has-target mask, loss context."""
        model, dev, win = self.model, self.device, self.windows
        if getattr(model, "causal", True):
            inputs, targets = causal_batch(self.data.train, win, sel)
        else:
            inputs, targets = masked_batch(self.data.train, win, sel, model.mask_prob, model.mask_token, self.rng)
        inputs_t = torch.from_numpy(inputs).to(dev)
        targets_t = torch.from_numpy(targets).to(dev)
        has = targets_t > 0
        offs, items = history_csr(self.data.train, win.rows[sel])
        ctx = LossContext(seq_idx=has.nonzero()[:, 0], hist_offsets=torch.from_numpy(offs).to(dev),
                          hist_items=torch.from_numpy(items).to(dev), item_pop=self.item_pop, generator=self.gen,
                          capacity=int(self.t.batch_size) * self.max_len)
        return inputs_t, targets_t, has, ctx

    def sample_batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, LossContext]]:
        """The first ``n`` training batches of an epoch, as ``fit`` builds them (for diagnostics)."""
        self._setup()
        B = int(self.t.batch_size)
        perm = epoch_order(self.rng, self.windows.ends - self.windows.starts, B, bool(self.t.group_by_length))
        for i in range(min(n, math.ceil(len(perm) / B))):
            yield self._batch(perm[i * B:(i + 1) * B])

    def _step(self, sel: np.ndarray, autocast: Any, st: _State) -> tuple[float | None, dict[str, float]]:
        model = self.model
        inputs_t, targets_t, has, ctx = self._batch(sel)
        with autocast:
            hidden = model(inputs_t)                      # [B, W, d]
            x = hidden[has]                               # [N, d]
            value = self.loss(x, targets_t[has] - 1, model.item_embeddings(), ctx)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(value):
            return self._non_finite(st, f"loss {value.item()}"), {}
        scale = x.shape[0] / self.mean_targets if self.t.group_by_length else 1.0
        (value * scale).backward()
        clip = self.t.grad_clip if self.t.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite(st, f"gradient norm {norm.item()} (loss {value.item():.4f})"), {}
        self.optimizer.step()
        return float(value.item()), ctx.stats

    def _non_finite(self, st: _State, what: str) -> None:
        where = f"epoch {st.epoch + 1} step {st.step + 1}"
        last = self._ckpt_dir() / "last.pt" if self.run_dir and (self._ckpt_dir() / "last.pt").exists() else None
        if self.t.nan_policy == "skip" and st.nan_skips < self.t.max_nan_skips:
            st.nan_skips += 1
            self.log(f"warning: non-finite {what} at {where}; step skipped ({st.nan_skips}/{self.t.max_nan_skips})")
            return None
        raise SeqrecError(f"non-finite {what} at {where}; last good checkpoint: {last or 'none'} "
                          "(lower train.lr, set train.grad_clip, or train.nan_policy=skip)")

    def evaluate(self, evalset: EvalSet, retriever: Any = None, recall_sample: int = 0) -> dict[str, float]:
        e = self.cfg.eval
        return evaluate(self.model, evalset, max_len=self.max_len, ks=list(e.ks), retriever=retriever,
                        filter_seen=e.filter_seen, batch_size=e.batch_size, device=self.device,
                        recall_sample=recall_sample, seed=int(self.t.seed))


def t_max(t: Any) -> float | None:
    return float(t.max_time) if t.max_time else None


def _autocast(kind: str | None, device: torch.device) -> Any:
    import contextlib

    if not kind:
        return contextlib.nullcontext()
    if kind == "fp16" and device.type != "cuda":
        raise SeqrecError("train.autocast=fp16 needs CUDA; use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the OS; True where that is possible (glibc).

    Losses whose intermediate shapes change from batch to batch (SCE ``union``, RECE) leave glibc's
    heap fragmented, so a long run's RSS creeps far above its working set. Once per epoch costs
    milliseconds; on ML-1M with ``sce`` union+cover it cut the 15-epoch peak RSS from 2.8 to 2.2 GB
    (docs/benchmarks.md).
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", False)
        except (OSError, TypeError):  # no C library handle (e.g. Windows)
            _MALLOC_TRIM = False
    if not _MALLOC_TRIM:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _py_state() -> list:
    v, s, g = random.getstate()
    return [v, list(s), g]


def _set_py_state(x: list) -> None:
    random.setstate((x[0], tuple(x[1]), x[2]))


def _np_state(s: tuple) -> dict:
    return {"name": s[0], "keys": torch.from_numpy(s[1].astype(np.int64)), "pos": int(s[2]),
            "has_gauss": int(s[3]), "gauss": float(s[4])}


def _np_state_back(d: dict) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])
