"""``seqrec bench throughput``: where the time of one training step goes, per loss.

Each loss trains ``warmup + steps`` steps of a fresh epoch exactly as ``fit`` runs them
(``Trainer.run_steps``: same batches, model, optimizer; no validation, no checkpoints), in this
process, one loss after the other. A step is cut into the parts ``Trainer._step`` reports:

- ``data``: building the batch (numpy gather, tensors, loss context);
- ``encoder_fwd``: the transformer's forward to the hidden states X [N, d] of the N target positions;
- ``loss_fwd``: the loss's forward on (X, y, W);
- ``loss_bwd``: the loss's gradients wrt X and W only (``torch.autograd.grad``);
- ``encoder_bwd``: the rest of the backward, from those gradients into every parameter;
- ``optimizer``: gradient clipping and the optimizer's step.

Splitting the backward this way computes the same gradients as ``fit``'s single ``backward()``
(summed in another order) at no extra cost. Timings are wall clock (``perf_counter``; CUDA is
synchronised at each part's end). Per loss: tokens/s (target positions N per second of the whole
step), each part's seconds per step and share of the step, and the process's CPU time (user +
system: on a loaded machine a steadier figure than wall time), system CPU time and minor page faults
per step (``getrusage``: large buffers that are mapped afresh every step show up
here), the RSS high-water mark of the timed steps (VmHWM, Linux) and whether the trainer applied
``seqrec.training.system.tune_allocator`` (glibc, memory not tight).

Output: ``DIR/results.json`` (one flat record per loss, COLUMNS + ``<part>_s``), ``DIR/table.md``,
``DIR/throughput.png`` (a stacked bar of seconds per step by part, per loss).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTS = ("data", "encoder_fwd", "loss_fwd", "loss_bwd", "encoder_bwd", "optimizer")
COLUMNS = ["loss", "steps", "tokens_per_step", "tokens_per_s", "step_s", *(f"share_{p}" for p in PARTS),
           "cpu_s_per_step", "sys_s_per_step", "minflt_per_step", "peak_rss_mb", "allocator_tuned", "threads",
           "autocast"]


class Laps:
    """Seconds per part, summed over the steps after ``start()`` (``lap(part)`` ends a part)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.last = time.perf_counter()

    def start(self) -> None:
        """Start timing (again) from now; the next lap is the first part of a step."""
        self.sync()
        self.last = time.perf_counter()

    def __call__(self, part: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[part] += now - self.last
        self.last = now


def _config(config: str | Path | None, loss: str, data_dir: str | Path | None, batch_size: int | None,
            sets: dict[str, Any]) -> Any:
    """The run's Config: ``config`` with loss ``loss`` (its defaults, unless the config names that
    loss: then its parameters), ``data_dir``, ``batch_size`` and the ``--set`` overrides."""
    from seqrec.config import Config, load_config, set_dotted

    tree = load_config(config).to_dict()
    if tree["loss"]["name"] != loss:
        tree["loss"] = {"name": loss}
    if data_dir is not None:
        tree["data"]["data_dir"] = str(data_dir)
    if batch_size is not None:
        tree["train"]["batch_size"] = batch_size
    for key, value in sets.items():
        set_dotted(tree, key, value)
    return Config.from_tree(tree)


def _trainer(cfg: Any, data: Any) -> Any:
    """A Trainer of ``cfg`` on ``data`` with the model initialised as ``fit`` does (no run directory)."""
    from seqrec.registry import LOSSES, MODELS
    from seqrec.training import Trainer, seed_everything

    seed_everything(int(cfg.train.seed))
    model = MODELS.build(cfg.model.name, data.n_items, **cfg.model.params)
    loss = LOSSES.build(cfg.loss.name, **cfg.loss.params)
    return Trainer(cfg, model, loss, data, None, log=lambda s: None)


def measure_loss(cfg: Any, data: Any, steps: int, warmup: int = 1) -> dict[str, Any]:
    """One loss's record (module docstring): ``warmup`` untimed steps, then up to ``steps`` timed
    ones (fewer when the epoch has fewer batches); warmup 0 times the first step too."""
    import torch

    from seqrec.bench._loss_case import _reset_peak, _status_mb
    from seqrec.training.system import trim_heap

    trim_heap()  # the previous loss's freed heap (kept by tune_allocator) must not count as this one's RSS
    trainer = _trainer(cfg, data)
    cuda = trainer.device.type == "cuda"
    laps = Laps(torch.cuda.synchronize if cuda else lambda: None)
    tokens, n = 0, 0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for i, n_tokens in enumerate(trainer.run_steps(warmup + steps, laps)):
        if i >= warmup:
            tokens, n = tokens + n_tokens, n + 1
        elif i == warmup - 1:  # the timed steps start after the warm-up (first allocations, caches)
            laps.totals = dict.fromkeys(PARTS, 0.0)
            _reset_peak()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        laps.start()  # CPU time per step below is this interval's (user + system) time
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    step_s = sum(laps.totals.values()) / max(n, 1)
    rec: dict[str, Any] = {
        "loss": cfg.loss.name, "steps": n, "tokens_per_step": round(tokens / max(n, 1), 1),
        "tokens_per_s": round(tokens / max(step_s * n, 1e-12), 1), "step_s": round(step_s, 4)}
    for p in PARTS:
        rec[f"{p}_s"] = round(laps.totals[p] / max(n, 1), 5)
        rec[f"share_{p}"] = round(laps.totals[p] / max(step_s * n, 1e-12), 4)
    cpu_s = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    rec.update(cpu_s_per_step=round(cpu_s / max(n, 1), 4),
               sys_s_per_step=round((r1.ru_stime - r0.ru_stime) / max(n, 1), 4),
               minflt_per_step=round((r1.ru_minflt - r0.ru_minflt) / max(n, 1)),
               peak_rss_mb=_status_mb("VmHWM"), allocator_tuned=trainer.keep_heap,
               threads=torch.get_num_threads(), autocast=cfg.train.autocast or "")
    return rec


def run_all(config: str | Path | None, losses: list[str], data_dir: str | Path | None, steps: int,
            batch_size: int | None, warmup: int, sets: dict[str, Any],
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """A record per loss (``measure_loss``); the data set is loaded once, from the first config."""
    from seqrec.data import load_dataset

    cfgs = [_config(config, name, data_dir, batch_size, sets) for name in losses]
    d = cfgs[0].data
    data = load_dataset(str(d.dataset), data_dir=d.data_dir, fmt=d.format, split=d.split, strict=d.strict,
                        **d.options)
    records = []
    for cfg in cfgs:
        rec = measure_loss(cfg, data, steps, warmup)
        log(f"{rec['loss']:>16}: {rec['tokens_per_s']:,.0f} tokens/s, {rec['step_s']:.3f} s/step, "
            f"sys {rec['sys_s_per_step']:.3f} s/step, {rec['minflt_per_step']:,} minor faults/step")
        records.append(rec)
    return records
