"""The training loop: turn (config, model, loss, data) into a trained model; the rest is callbacks.

- Every position with a target contributes: the trainer gathers those hidden states [N, d] and
  calls ``loss(X, y, W, ctx)`` with W = ``model.item_embeddings()`` (catalog space, no padding).
- Resumable and bit-identical on CPU: the epoch order, the step inside the epoch and every RNG
  (python, numpy, torch, the loss generator) are part of the checkpoint (``state.py``).
- Checkpoints, early stopping (best weights restored at the end), the time budget, signals, the
  progress bar and metrics.jsonl are callbacks (``callbacks.py``, which documents the hooks).
- Under torchrun (``distributed.py``, docs/distributed.md) the step runs through DistributedDataParallel,
  each rank trains its share of the epoch's batches, validation is sharded and merged exactly, and
  rank 0 alone writes (the other ranks keep only the callbacks that write nothing) and decides when to stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from seqrec.data.store import EvalSet, PreparedData
from seqrec.errors import SeqrecError
from seqrec.evaluation import evaluate
from seqrec.evaluation.defaults import valid_subset
from seqrec.evaluation.sharded import evaluate_sharded
from seqrec.losses.base import Loss, LossContext
from seqrec.rundir import RunDir
from seqrec.training import callbacks as builtin
from seqrec.training import distributed
from seqrec.training.backward import backward, clip_gradients
from seqrec.training.batches import causal_batch, epoch_order, history_csr, make_windows, masked_batch
from seqrec.training.callbacks import Callback, TrainingInterrupted, default_callbacks
from seqrec.training.checkpoint import save_checkpoint
from seqrec.training.memory import available_bytes, check_fits, predicted_step
from seqrec.training.optim import OptimizerFactory, build_optimizer
from seqrec.training.state import EpochSums, TrainState, capture, load_resume, restore
from seqrec.training.system import autocast, kept_heap, peak_rss_mb, resolve_device, seed_everything, trim_heap

__all__ = ["Trainer", "TrainingInterrupted", "seed_everything", "trim_heap"]


class Trainer:
    """Trains ``model`` with ``loss`` on ``data`` as ``cfg.train`` says; checkpoints into ``run``.

    ``callbacks`` run before the built-ins (``callbacks.default_callbacks``); see ``callbacks.py``.
    ``force``: train even where the predicted step does not fit the free memory (``memory.check_fits``).
    ``optimizer``: ``factory(model) -> Optimizer`` (default: ``optim.build_optimizer`` from ``cfg.train``).
    """

    def __init__(self, cfg: Any, model: torch.nn.Module, loss: Loss, data: PreparedData,
                 run: RunDir | None = None, log: Callable[[str], None] = print,
                 callbacks: Sequence[Callback] = (), force: bool = False,
                 optimizer: OptimizerFactory | None = None) -> None:
        self.cfg, self.model, self.loss, self.data, self.log, self.force = cfg, model, loss, data, log, force
        self.optimizer_factory = optimizer or (lambda m: build_optimizer(m, cfg.train))
        self.run = RunDir(run) if run is not None else None
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.rank:  # rank 0 alone writes and logs
            self.run, self.log = None, lambda s: None
        self.device = distributed.device_for(resolve_device(cfg.train.device))
        self.fingerprint = data.meta.get("fingerprint", "")
        # ranks > 0 run none of the built-ins (bar, logs, best weights, checkpoints, trackers): rank 0's
        # stop decisions are broadcast (_sync_stop); on SIGTERM (torchrun forwards it) they finish the
        # step, so that rank 0 can finish it too and save
        self.callbacks = [*callbacks, *(default_callbacks(cfg.train, self.run) if not self.rank
                                        else [builtin.SignalStop()])]
        self.ddp: Any = None  # the DistributedDataParallel step module under torchrun

    # ---------------------------------------------------------------- the loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue the run's checkpoint) and leave the best weights in ``self.model``.

        -> summary for train_info.json: epochs, steps, steps_per_epoch, best_epoch, best_valid_ndcg@10, epoch_s, wall_s,
        peak_rss_mb, cuda_peak_mb, stopped (the stop reason's message, "" if none).
        """
        self._setup()
        if not self.model.trainable:  # popularity is counted, not trained
            self.model.fit_popularity(self.data.item_pop)
            return {"best_epoch": 0, "epochs": 0, "epoch_s": 0.0, "wall_s": 0.0, "peak_rss_mb": peak_rss_mb()}
        state = self._start(resume)
        try:
            self._call("on_fit_start", state)
            self._sync_stop(state)
            while state.epoch < self.cfg.train.epochs and state.stop is None:
                sums = self._train_epoch(state)
                self._end_epoch(state, sums)
            if state.stop is not None:
                self.log(state.stop.message)
            self._call("on_fit_end", state)
        finally:
            self._teardown(state)
        return self._summary(state)

    def _train_epoch(self, state: TrainState) -> EpochSums:
        B = self.batch_size
        self.model.train()
        if state.perm is None:
            # every rank draws the same epoch order (a generator of the seed and the epoch), then its share
            rng = self.rng if self.world == 1 else np.random.default_rng([int(self.cfg.train.seed), state.epoch])
            lengths = self.windows.ends - self.windows.starts
            state.perm, state.step = epoch_order(rng, lengths, B, bool(self.cfg.train.group_by_length)), 0
        sums = EpochSums(start=time.monotonic())
        self._call("on_epoch_start", state)
        with kept_heap(self.keep_heap):
            self._steps(state, sums)
        return sums

    def _steps(self, state: TrainState, sums: EpochSums) -> None:
        B = self.batch_size
        while state.step < self.n_batches and state.stop is None:
            b = distributed.batch_index(state.step, self.rank, self.world, self.epoch_batches)
            sel = state.perm[b * B:(b + 1) * B]
            loss, stats = distributed.ddp_step(self, sel, state) if self.ddp is not None else self._step(sel, state)
            state.step += 1
            state.global_step += 1
            sums.add(loss, stats)
            state.elapsed = time.monotonic() - self._t0
            self._call("on_step_end", state, loss)
            self._sync_stop(state)

    def _sync_stop(self, state: TrainState) -> None:
        """Rank 0's stop decision (time budget, early stop, a user's callback) on every rank."""
        if self.world > 1:
            state.stop = distributed.broadcast(state.stop)

    def _end_epoch(self, state: TrainState, sums: EpochSums) -> None:
        state.epoch += 1
        state.perm, state.step = None, 0
        trim_heap()
        valid = self.evaluate(self.valid)
        n = max(sums.n, 1)
        keys = list(sums.stats)  # a loss's statistics, averaged over the ranks too
        stats = dict(zip(keys, distributed.mean([sums.stats[k] / n for k in keys]), strict=True))
        record = {"epoch": state.epoch, "loss": sums.loss / n, "epoch_s": time.monotonic() - sums.start,
                  "elapsed_s": time.monotonic() - self._t0, **{f"valid_{k}": v for k, v in valid.items()}, **stats}
        state.history.append(record)
        state.elapsed = time.monotonic() - self._t0
        self._call("on_epoch_end", state, record)
        self._sync_stop(state)

    def _step(self, sel: np.ndarray, state: TrainState, lap: Callable[[str], None] = lambda part: None,
              split_backward: bool = False) -> tuple[float | None, dict[str, float]]:
        """One optimiser step on windows ``sel`` -> (loss, loss stats); (None, {}) if skipped as non-finite.

        ``lap(part)`` is called as each part ends (data, encoder_fwd, loss_fwd, backward or with
        ``split_backward`` loss_bwd + encoder_bwd, optimizer): ``seqrec bench throughput`` times them.
        ``split_backward`` takes the loss's gradients wrt its inputs first (``autograd.grad``), then
        runs the encoder's backward from them: the same gradients, summed in another order.
        """
        model, t = self.model, self.cfg.train
        inputs, targets, has, ctx = self._batch(sel)
        lap("data")
        with self.autocast:
            x = model(inputs)[has]                        # [B, W, d] -> [N, d]
            lap("encoder_fwd")
            table = model.item_embeddings()
            # the loss reads an alias of a leaf table (ItemTable), so its dense [C, d] gradient comes back
            # to backward() instead of meeting the lookup's sparse one in autograd, which adds them out of place
            own = table.is_leaf and table.requires_grad
            w = table.view_as(table) if own or split_backward else table
            value = self.loss(x, targets[has] - 1, w, ctx)
        self.last_tokens = x.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(value):
            return self._non_finite(state, f"loss {value.item()}"), {}
        lap("loss_fwd")
        scale = x.shape[0] / self.mean_targets if t.group_by_length else 1.0
        backward(value * scale, x, w, table if own else None, lap, split_backward)
        norm = clip_gradients([p for p in model.parameters() if p.grad is not None], t.grad_clip)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite(state, f"gradient norm {norm.item()} (loss {value.item():.4f})"), {}
        self.optimizer.step()
        lap("optimizer")
        return float(value.item()), ctx.stats

    def run_steps(self, n: int, lap: Callable[[str], None], split_backward: bool = True) -> Iterator[int]:
        """The first ``n`` steps of a fresh epoch as ``fit`` runs them, without validation or callbacks
        (``seqrec bench throughput``); yields each step's target positions N after the step."""
        self._setup()
        state, B = TrainState(), self.batch_size
        self.model.train()
        perm = epoch_order(self.rng, self.windows.ends - self.windows.starts, B, bool(self.cfg.train.group_by_length))
        with kept_heap(self.keep_heap):
            for i in range(min(n, self.n_batches)):
                self._step(perm[i * B:(i + 1) * B], state, lap, split_backward)
                yield self.last_tokens

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _teardown(self, state: Any) -> None:
        """Every callback's ``teardown``, also after one of them fails (the first error is raised):
        a user callback's failure must not leave seqrec's signal handlers installed."""
        first: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.teardown(self, state)
            except BaseException as e:  # re-raised below, after the others ran
                first = first or e
        if first is not None:
            raise first

    # ---------------------------------------------------------------- setup, state, summary
    def _setup(self) -> None:
        t, model = self.cfg.train, self.model
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        seed_everything(int(t.seed))
        model.to(self.device)
        self.keep_heap = False
        if not model.trainable:
            return
        self.rng = np.random.default_rng(int(t.seed))
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(t.seed) + 1)
        self.max_len = model.max_len
        span = self.max_len + 1 if model.causal else self.max_len
        self.windows = make_windows(self.data.train, span, t.window_stride, min_len=2 if model.causal else 1)
        if len(self.windows) == 0:
            raise SeqrecError("no training sequence has enough items (need at least 2 per user)")
        self.batch_size = min(int(t.batch_size), len(self.windows))
        if self.batch_size < t.batch_size:
            self.log(f"note: train.batch_size={t.batch_size} is more than the {len(self.windows)} training "
                     f"sequences: batches of {self.batch_size}")
        if not self.force:
            check_fits(self.cfg, model, self.batch_size, self.data.n_items, self.device)
        self.keep_heap = self._keep_heap()
        self.epoch_batches = math.ceil(len(self.windows) / self.batch_size)  # batches of the whole epoch
        self.n_batches = distributed.shard_steps(self.epoch_batches, self.world)  # this rank's steps
        # With length grouping a batch's token count varies a lot; scaling each batch's mean loss by
        # tokens / mean tokens keeps every target's weight in the epoch's gradient as in random batches.
        targets = (self.windows.ends - self.windows.starts - (1 if model.causal else 0)).astype(np.float64)
        if not model.causal:
            targets *= model.mask_prob
        self.mean_targets = max(float(targets.sum()) / self.epoch_batches, 1.0)
        self.optimizer = self.optimizer_factory(model)
        self.item_pop = torch.as_tensor(self.data.item_pop[1:], dtype=torch.float32, device=self.device)
        self.valid = self._valid_subset()
        self.autocast = autocast(t.autocast, self.device)
        if self.world > 1:
            self.ddp = distributed.wrap(self)

    def _keep_heap(self) -> bool:
        """Whether to ``tune_allocator`` around the steps (no per-step mmap/munmap of large buffers:
        1.5x faster ML-1M CE epochs): not when memory is tight, since the kept heap fragments and the
        peak RSS can reach ~1.5x the step's (ML-1M CE: 2.9 vs 2.0 GB); only when twice the
        predicted step fits the free RAM. Never with autocast on CPU: its bf16 / float32 buffers of
        every batch's size fragment the kept heap without bound (ML-1M CE, bf16: 5.2 GB after one
        epoch, 15.9 GB after ten, against 2.3 GB with glibc's default; docs/benchmarks.md, session 13)."""
        if self.cfg.train.autocast and self.device.type == "cpu":
            return False
        need = predicted_step(self.cfg, self.model, self.batch_size, self.data.n_items)
        have = available_bytes(torch.device("cpu")) if self.device.type == "cpu" and need is not None else None
        return have is None or 2 * need <= have[0]

    def _valid_subset(self) -> EvalSet:
        """The validation users of early stopping: all, or a fixed seeded sample (``train.valid_users``,
        see ``seqrec.evaluation.defaults.valid_subset``)."""
        return valid_subset(self.data.valid, self.cfg.train.valid_users, int(self.cfg.train.seed))

    def _start(self, resume: bool) -> TrainState:
        state = TrainState()
        ck = load_resume(self.run, self.fingerprint, self.data.n_items, self.log) if resume and not self.rank else None
        ck = distributed.broadcast(ck)  # rank 0's checkpoint on every rank (the others have no run directory)
        if ck is not None:
            state = restore(self, ck)
            self.log(f"resumed from epoch {state.epoch} step {state.step}")
        self._t0 = time.monotonic() - state.elapsed  # elapsed counts every process of the run
        self._saved_at: tuple[int, int] | None = None
        return state

    def save_last(self, state: TrainState) -> None:
        """Write the full training state to ``last.pt`` (the previous one becomes ``prev.pt``); a second
        call at the same position (e.g. a signal right after a periodic save) writes nothing."""
        position = (state.epoch, state.global_step)
        if self.run is not None and position != self._saved_at:
            save_checkpoint(capture(self, state), self.run.last, keep_previous=True)
            self._saved_at = position

    def _summary(self, state: TrainState) -> dict[str, Any]:
        epochs = len(state.history)
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
        # a time budget's last epoch is partial yet counted in epochs: steps / steps_per_epoch says how much ran
        return {"best_epoch": state.best_epoch, "epochs": epochs, "steps": state.global_step,
                "steps_per_epoch": self.n_batches, "best_valid_ndcg@10": state.best,
                "best_valid": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
                "epoch_s": float(np.mean([h["epoch_s"] for h in state.history])) if epochs else 0.0,
                "wall_s": state.elapsed, "peak_rss_mb": peak_rss_mb(),
                "stopped": state.stop.message if state.stop else "", "world_size": self.world,
                "peak_rss_mb_ranks": distributed.gather_all(peak_rss_mb()) if self.world > 1 else None,
                "allreduce_mb_per_step": self.comm["bytes"] / 2**20 / max(self.comm["steps"], 1) if self.ddp else None,
                "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None}

    # ---------------------------------------------------------------- batches
    def _batch(self, sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LossContext]:
        """Windows ``sel`` -> inputs [B, W], targets [B, W] (0 = none), has-target mask, loss context."""
        model, dev, win = self.model, self.device, self.windows
        if model.causal:
            inputs, targets = causal_batch(self.data.train, win, sel)
        else:
            inputs, targets = masked_batch(self.data.train, win, sel, model.mask_prob, model.mask_token, self.rng)
        inputs_t = torch.from_numpy(inputs).to(dev)
        targets_t = torch.from_numpy(targets).to(dev)
        has = targets_t > 0
        offs, items = history_csr(self.data.train, win.rows[sel])
        ctx = LossContext(seq_idx=has.nonzero()[:, 0], hist_offsets=torch.from_numpy(offs).to(dev),
                          hist_items=torch.from_numpy(items).to(dev), item_pop=self.item_pop, generator=self.gen,
                          capacity=self.batch_size * self.max_len)
        return inputs_t, targets_t, has, ctx

    def sample_batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, LossContext]]:
        """The first ``n`` training batches of an epoch, as ``fit`` builds them (for diagnostics)."""
        self._setup()
        B = self.batch_size
        perm = epoch_order(self.rng, self.windows.ends - self.windows.starts, B, bool(self.cfg.train.group_by_length))
        for i in range(min(n, self.n_batches)):
            yield self._batch(perm[i * B:(i + 1) * B])

    def _non_finite(self, state: TrainState, what: str) -> None:
        t, where = self.cfg.train, f"epoch {state.epoch + 1} step {state.step + 1}"
        if t.nan_policy == "skip" and state.nan_skips < t.max_nan_skips:
            state.nan_skips += 1
            self.log(f"warning: non-finite {what} at {where}; step skipped ({state.nan_skips}/{t.max_nan_skips})")
            return None
        last = self.run.last if self.run is not None and self.run.last.exists() else None
        raise SeqrecError(f"non-finite {what} at {where}; last good checkpoint: {last or 'none'} "
                          "(lower train.lr, set train.grad_clip, or train.nan_policy=skip)")

    def evaluate(self, evalset: EvalSet) -> dict[str, float]:
        """Metrics of the current model on ``evalset`` (``cfg.eval`` settings; exact scoring)."""
        e = self.cfg.eval
        if self.world > 1:  # a collective: each rank scores its share of the users, merged exactly
            return evaluate_sharded(self.model, evalset, max_len=self.max_len, ks=list(e.ks),
                                    filter_seen=e.filter_seen, batch_size=e.batch_size, device=self.device,
                                    encode_dtype=e.encode_dtype)
        return evaluate(self.model, evalset, max_len=self.max_len, ks=list(e.ks), filter_seen=e.filter_seen,
                        batch_size=e.batch_size, device=self.device, seed=int(self.cfg.train.seed),
                        encode_dtype=e.encode_dtype)
