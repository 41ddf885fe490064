"""Training on many processes through torch.distributed: torchrun's environment, the process group,
the launch of ``seqrec fit --devices N`` and the few collectives the trainer needs.

Every rank runs the same command (``torchrun --nproc_per_node=N -m seqrec fit …``). Rank 0 does
what a single process does (config, run directory, checkpoints, results); the other ranks
("followers") wait for rank 0's announcement of the resolved config (``announce`` / ``follow``),
then train the same model with no run directory. The process group is gloo on CPU and, where CUDA
is present, ``cpu:gloo,cuda:nccl`` (CUDA tensors through NCCL, the small CPU objects through gloo).
Outside torchrun (``WORLD_SIZE`` unset or 1) every helper here is a no-op and the trainer is the
single-process one, bit for bit.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from seqrec.errors import SeqrecError

_ANNOUNCED = False  # rank 0 has sent the followers their config (or told them to stop)


def env_world_size() -> int:
    """The world size torchrun set for this process (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Rank 0 (the only rank that writes), or a single process."""
    return rank() == 0


def restart_count() -> int:
    """How many times torchrun restarted the group (``--max-restarts``); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def setup() -> bool:
    """Join torchrun's process group (``env://``: MASTER_ADDR/PORT, RANK, WORLD_SIZE) -> True when one
    of more than one rank was joined. CUDA ranks pin their device to ``LOCAL_RANK``."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    if not dist.is_available():
        raise SeqrecError("this torch build has no torch.distributed: cannot train on several processes")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    timeout = timedelta(minutes=30)
    # torchrun's store outlives a restart (--max-restarts): without a prefix of its own, a restarted
    # group would read the killed attempt's gloo addresses from it and fail to connect
    store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"seqrec/attempt_{restart_count()}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world, timeout=timeout)
    return True


def teardown() -> None:
    """Leave the process group (a no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


# ---------------------------------------------------------------- the CLI: launch, rank 0, followers
def launch_args(devices: int, argv: list[str]) -> list[str]:
    """The ``torch.distributed.run`` command line of ``seqrec ARGV`` on ``devices`` local processes
    (``--devices`` removed: the relaunched command must not relaunch itself)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--devices":
            skip = True
        elif not a.startswith("--devices="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
            "-m", "seqrec", *rest]


def run_fit(devices: int | None, body: Callable[[], int], follow: Callable[[dict[str, Any]], int]) -> int:
    """``seqrec fit``: relaunch through torchrun for ``--devices N`` (N > 1); under torchrun, rank 0
    runs ``body`` (the single-process command) and the other ranks ``follow(payload)`` once rank 0
    ``announce``s the run (or return 0 when rank 0 ends before training). Alone: ``body()``."""
    if devices is not None and devices > 1 and env_world_size() <= 1:
        if "fit" not in sys.argv[1:]:
            raise SeqrecError("--devices relaunches `seqrec fit …` through torchrun: run it from the command line")
        proc = subprocess.Popen(launch_args(devices, sys.argv[1:]))
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # torchrun got the same SIGINT: it stops the ranks (rank 0 saves)
                continue
    if devices is not None and env_world_size() > 1 and devices != env_world_size():
        raise SeqrecError(f"--devices {devices} under torchrun with {env_world_size()} processes: drop --devices")
    if not setup():
        return body()
    global _ANNOUNCED
    _ANNOUNCED = False
    try:
        if is_main():
            try:
                return body()
            finally:
                if not _ANNOUNCED:  # ended before training (an error, a finished run): release the followers
                    announce(None)
        payload = _broadcast(None)
        return 0 if payload is None else follow(payload)
    finally:
        teardown()


def announce(payload: dict[str, Any] | None) -> None:
    """Rank 0 sends the followers what to train (None: nothing, stop); a no-op alone."""
    global _ANNOUNCED
    if active() and not _ANNOUNCED:
        _ANNOUNCED = True
        _broadcast(payload)


def elastic_resume(out: str | None) -> bool:
    """Whether this is torchrun's restart of a failed group (``--max-restarts``) whose run directory
    ``out`` already holds a run: then the command continues it (``--resume``) instead of starting over."""
    return bool(out) and restart_count() > 0 and (Path(out) / "config.yaml").exists()


# ---------------------------------------------------------------- collectives of the trainer
def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small objects and one checkpoint at resume)."""
    return _broadcast(obj) if active() else obj


def gather_all(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank ([obj] alone)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(values: list[float], device: torch.device | None = None) -> list[float]:
    """The mean over ranks of each of ``values`` (float64 sums; the same list alone)."""
    if not active() or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return (t / world_size()).tolist()


def step_seed(seed: int, rank_: int, step: int) -> int:
    """The seed of rank ``rank_``'s random streams (dropout, negatives, buckets, masks) at global step
    ``step``: a function of the position alone, so a resumed rank draws what it would have drawn."""
    return int(np.random.SeedSequence([int(seed), int(rank_), int(step)]).generate_state(1, np.uint64)[0] >> 1)


def shard_steps(n_batches: int, world: int) -> int:
    """Steps per rank in an epoch of ``n_batches`` batches: ceil(n / world); the last step's missing
    batches are padded by wrapping to the epoch's first ones (every rank takes as many steps)."""
    return -(-n_batches // world)


def batch_index(step: int, rank_: int, world: int, n_batches: int) -> int:
    """The epoch's batch that rank ``rank_`` trains at its step ``step``: batches are dealt round-robin."""
    return (step * world + rank_) % n_batches


# ---------------------------------------------------------------- the DDP step
class Objective(torch.nn.Module):
    """The encoder's forward and the loss as one module, so that DistributedDataParallel's forward
    covers everything that gets a gradient: the encoder and the item table the loss reads through
    ``model.item_embeddings()`` (tied with the input table in SASRec/BERT4Rec). Wrapping the encoder
    alone would leave the loss's use of the table outside DDP's forward; a manual all-reduce after
    ``backward`` would be the home-made scheme DDP replaces. ``ctx`` (the batch's ``LossContext``)
    is set before each call: DDP would otherwise try to copy it between devices."""

    def __init__(self, model: torch.nn.Module, loss: Any, autocast: Any) -> None:
        super().__init__()
        self.model, self.loss, self.autocast, self.ctx = model, loss, autocast, None

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, has: torch.Tensor) -> tuple[torch.Tensor, int]:
        """inputs / targets [B, W] (0 = no target), has [B, W] bool -> (loss, N target positions)."""
        with self.autocast:
            x = self.model(inputs)[has]  # [N, d]
            value = self.loss(x, targets[has] - 1, self.model.item_embeddings(), self.ctx)
        return value, int(x.shape[0])


def wrap(trainer: Any) -> torch.nn.parallel.DistributedDataParallel:
    """The trainer's model and loss in DDP (every rank must hold the same data: checked here)."""
    prints = gather_all(trainer.fingerprint)
    if len(set(prints)) > 1:
        raise SeqrecError(f"rank {rank()} has other training data than rank 0 (data fingerprints differ): "
                          "every rank must read the same dataset")
    trainer.objective = Objective(trainer.model, trainer.loss, trainer.autocast)
    dev = trainer.device
    # buffers (if any) are deterministic functions of the config: no per-step broadcast of them
    ddp = torch.nn.parallel.DistributedDataParallel
    sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else {"broadcast_buffers": False}  # torch before 2.13
    model = ddp(trainer.objective, device_ids=[dev.index] if dev.type == "cuda" else None, **sync)
    trainer.comm = {"bytes": 0, "steps": 0}
    model.register_comm_hook(trainer.comm, _counted_allreduce)
    return model


def _counted_allreduce(state, bucket):  # noqa: ANN001, ANN202 (DDP checks hook annotations by identity)
    """DDP's own all-reduce of a gradient bucket (``default_hooks.allreduce_hook``), counting its bytes
    (``train_info.json``'s ``allreduce_mb_per_step``: the communication volume ``seqrec bench distributed`` reports)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buf = bucket.buffer()
    state["bytes"] += buf.numel() * buf.element_size()
    return default_hooks.allreduce_hook(None, bucket)


def ddp_step(trainer: Any, sel: np.ndarray, state: Any) -> tuple[float | None, dict[str, float]]:
    """``Trainer._step`` under DDP -> (the loss averaged over the ranks, this rank's loss stats).

    The rank's random streams are reseeded from (seed, rank, global step) first. The gradients DDP
    averages are identical on every rank, so clipping, the NaN check and the optimiser step agree;
    the loss value is all-reduced so a non-finite loss on any rank skips (or stops) every rank.
    """
    t = trainer.cfg.train
    s = step_seed(int(t.seed), rank(), state.global_step)
    torch.manual_seed(s)
    trainer.gen.manual_seed(s + 1)
    trainer.rng = np.random.default_rng(s)  # BERT4Rec's masks
    inputs, targets, has, ctx = trainer._batch(sel)
    trainer.objective.ctx = ctx
    value, n = trainer.ddp(inputs, targets, has)
    trainer.last_tokens, trainer.comm["steps"] = n, trainer.comm["steps"] + 1
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = mean([float(value.detach())], torch.device("cpu"))[0]
    scale = n / trainer.mean_targets if t.group_by_length else 1.0
    finite = bool(np.isfinite(loss))
    # a skipped step still runs DDP's backward (its all-reduce is a collective), with zero weight
    (value * scale if finite else value * 0.0).backward()
    if not finite:
        trainer.optimizer.zero_grad(set_to_none=True)
        return trainer._non_finite(state, f"loss {loss}"), {}
    from seqrec.training.backward import clip_gradients

    norm = clip_gradients([p for p in trainer.model.parameters() if p.grad is not None], t.grad_clip)
    if not torch.isfinite(norm):
        trainer.optimizer.zero_grad(set_to_none=True)
        return trainer._non_finite(state, f"gradient norm {norm.item()} (loss {loss:.4f})"), {}
    trainer.optimizer.step()
    return loss, ctx.stats
