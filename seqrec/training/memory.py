"""Memory before training: the step's predicted peak (``seqrec plan``'s model) against what the
machine has free, so a batch the machine cannot hold is refused in seconds with a way out, instead
of the kernel killing the process minutes later with nothing said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqrec.errors import SeqrecError
from seqrec.plan import fmt_bytes, predict_memory

SHAPE_KEYS = ("d", "n_blocks", "n_heads", "max_len")


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes free for this process, what was measured) on ``device``; None where unknown.

    CPU: MemAvailable of /proc/meminfo, lowered to the cgroup's limit minus its usage when a
    container sets one. CUDA: ``torch.cuda.mem_get_info``.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    what = "available RAM"
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max" and int(limit) - used < free:
            free, what = int(limit) - used, "RAM left under the container's limit"
    except (OSError, ValueError):
        pass
    return free, what


def predicted_step(cfg: Any, model: Any, batch_size: int, n_items: int, loss: str | None = None) -> int | None:
    """Predicted peak bytes of one training step (``seqrec plan``), or None for a model or loss the
    memory model does not cover (non-transformers, losses without ``predict_bytes``)."""
    params = model.get_params()
    if not all(isinstance(params.get(k), int) for k in SHAPE_KEYS):
        return None
    name = loss or cfg.loss.name
    try:
        mem = predict_memory(n_items=n_items, batch_size=batch_size, max_len=params["max_len"], d=params["d"],
                             n_blocks=params["n_blocks"], n_heads=params["n_heads"], loss_name=name,
                             loss_params=cfg.loss.params if name == cfg.loss.name else {},
                             model=cfg.model.name, ffn_mult=params.get("ffn_mult"))
    except NotImplementedError:
        return None
    return int(mem["total"])


def check_fits(cfg: Any, model: Any, batch_size: int, n_items: int, device: torch.device) -> None:
    """Refuse (one line) a run whose predicted step does not fit the free memory of ``device``:
    the predicted and the available figure, a batch size that fits, an exact lighter loss, ``--force``."""
    need = predicted_step(cfg, model, batch_size, n_items)
    have = available_bytes(device) if need is not None else None
    if need is None or have is None or need <= have[0]:
        return
    free, what = have
    ways = []
    b = batch_size
    while b > 1 and (predicted_step(cfg, model, b, n_items) or 0) > free:
        b //= 2
    if b < batch_size and (predicted_step(cfg, model, b, n_items) or 0) <= free:
        ways.append(f"train.batch_size={b} (predicted {fmt_bytes(predicted_step(cfg, model, b, n_items))})")
    chunked = predicted_step(cfg, model, batch_size, n_items, loss="ce_chunked") if cfg.loss.name == "ce" else None
    if chunked is not None and chunked < need:  # ce's blocks of positions can outgrow its chunks of items
        ways.append(f"--loss ce_chunked, the same exact CE (predicted {fmt_bytes(chunked)})")
    if cfg.loss.name not in ("sce", "rece"):
        ways.append("--loss sce")
    raise SeqrecError(f"one training step needs about {fmt_bytes(need)} (loss {cfg.loss.name}, batch {batch_size}) "
                      f"but only {fmt_bytes(free)} of {what} is free; try {', or '.join(ways)}; "
                      "or pass --force to train anyway")
