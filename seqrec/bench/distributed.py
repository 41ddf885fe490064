"""``seqrec bench distributed``: 1 vs N training processes, and the gradient traffic per step per loss.

Two parts, one record list (``part`` says which):

- ``scaling``: ``seqrec fit`` of one config as one process (1 thread, and as many threads as
  ``--procs``) and as ``--procs`` processes of 1 thread under ``torch.distributed.run`` (gloo on
  CPU), for each seed. The N-process runs keep the effective batch (``train.batch_size`` / N per
  rank), so the optimisation matches the single process's and the metrics are comparable within
  the seed spread. Per run: epoch seconds, wall seconds of the whole command, the peak RSS of the
  largest rank against the single process's, the measured all-reduce volume per step (DDP's comm
  hook, ``train_info.json``) and test NDCG@10. With fewer cores than processes × threads nothing
  can be faster, and on a machine shared with other jobs the timings are the load's as much as ours.
- ``traffic``: per loss, a few training steps in this process (``Trainer.run_steps``) on a synthetic
  catalog of ``items`` items (the default data set's 800 items are all touched by every step): the dense
  gradient DDP all-reduces every step (every parameter, float32; the item table C×d×4 bytes is
  nearly all of it), the rows of the item table a step's gradient actually touches, and the
  per-rank bytes of a ring all-reduce of the dense gradient, 2(W−1)/W × P×4, against an all-gather
  of the touched rows, (W−1) × rows × (d×4 + 8) (row-sparse gradients), for W = ``--procs``, and
  the world size below which the row-sparse exchange would move fewer bytes (``sparse_pays_below_w``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ["part", "procs", "threads", "seed", "loss", "epoch_s", "wall_s", "peak_rss_mb", "rss_vs_single",
           "allreduce_mb_per_step", "ndcg@10", "params_mb", "item_rows", "rows_touched", "dense_ring_mb_per_rank",
           "sparse_gather_mb_per_rank", "sparse_pays_below_w"]


def seed_list(text: str) -> list[int]:
    """``"0,1"`` -> [0, 1]; a ConfigError naming ``--seeds`` unless they are integers >= 0."""
    from seqrec.errors import ConfigError

    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds: expected comma-separated integers >= 0, got {text!r}")
    return seeds


def _fit(procs: int, threads: int, seed: int, epochs: int, batch_size: int, sets: list[str],
         out: Path) -> dict[str, Any]:
    """One ``seqrec fit`` (``procs`` > 1: under torchrun) of ``threads`` threads per process -> its record."""
    per_rank = max(1, batch_size // procs)
    args = ["-m", "seqrec", "fit", "--no-baseline", "--set", f"train.seed={seed}", "--set", f"train.epochs={epochs}",
            "--set", f"train.batch_size={per_rank}", "--set", f"train.num_threads={threads}",
            *[x for s in sets for x in ("--set", s)], "--out", str(out)]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 \
        else [sys.executable]
    t0 = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run([*launch, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"fit with {procs} process(es) failed: {p.stderr.strip().splitlines()[-1:]}")
    info = json.loads((out / "train_info.json").read_text())
    test = json.loads((out / "results.json").read_text())["test"]
    rss = max(info["peak_rss_mb_ranks"]) if info.get("peak_rss_mb_ranks") else info["peak_rss_mb"]
    return {"part": "scaling", "procs": procs, "threads": threads, "seed": seed, "loss": "",
            "epoch_s": round(info["epoch_s"], 2),
            "wall_s": round(time.monotonic() - t0, 1), "peak_rss_mb": round(rss, 1),
            "allreduce_mb_per_step": info.get("allreduce_mb_per_step"), "ndcg@10": round(test["ndcg@10"], 4),
            "per_rank_batch": per_rank}


def scaling(procs: int, seeds: list[int], epochs: int, batch_size: int, sets: list[str],
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """1 process and ``procs`` processes, each seed (module docstring)."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for n, threads in ((1, 1), (1, procs), (procs, 1)):
                log(f"fit: {n} process(es) x {threads} thread(s), seed {seed}")
                records.append(_fit(n, threads, seed, epochs, batch_size, sets, Path(tmp) / f"p{n}-t{threads}-s{seed}"))
    single = [r["peak_rss_mb"] for r in records if r["procs"] == 1]
    for r in records:
        r["rss_vs_single"] = round(r["peak_rss_mb"] / max(single), 3) if single else None
    return records


def traffic(config: str | None, losses: list[str], procs: int, steps: int, sets: dict[str, Any], items: int = 20_000,
            batch_size: int = 32, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per loss: the dense gradient volume and the item-table rows a step of ``batch_size`` sequences
    touches, on the synthetic data with ``items`` items (module docstring)."""
    syn = {"n_items": items, "n_users": max(2_000, items // 5), "n_clusters": max(40, items // 20)}
    sets = {"data.dataset": "synthetic", "data.options.synthetic": syn, "train.batch_size": batch_size, **sets}
    from seqrec.bench.throughput import _config, _trainer
    from seqrec.data import load_dataset

    records = []
    data = None
    for name in losses:
        cfg = _config(config, name, None, None, sets)
        if data is None:
            d = cfg.data
            data = load_dataset(str(d.dataset), data_dir=d.data_dir, fmt=d.format, split=d.split, **d.options)
        log(f"traffic: {name}")
        trainer = _trainer(cfg, data)
        touched = []
        for _ in trainer.run_steps(steps, lambda part: None, split_backward=False):
            table = max(trainer.model.parameters(), key=lambda p: p.shape[0])  # the item table [C(+pad), d]
            touched.append(int((table.grad != 0).any(dim=1).sum()) if table.grad is not None else 0)
        params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        rows, d = int(table.shape[0]), int(table.shape[1])
        r = sum(touched) / max(len(touched), 1)
        records.append({"part": "traffic", "procs": procs, "batch": batch_size, "loss": name,
                        "params_mb": round(params * 4 / 2**20, 3),
                        "item_rows": rows, "rows_touched": round(r, 1),
                        "dense_ring_mb_per_rank": round(2 * (procs - 1) / procs * params * 4 / 2**20, 3),
                        "sparse_gather_mb_per_rank": round((procs - 1) * r * (d * 4 + 8) / 2**20, 3),
                        # r / C < 2 / W * 4d / (4d + 8)  <=>  W < 2 C / r * 4d / (4d + 8)
                        "sparse_pays_below_w": round(2 * rows / max(r, 1) * 4 * d / (4 * d + 8), 2)})
    return records


def figure(records: list[dict[str, Any]]) -> Any:
    """Epoch seconds and peak RSS of the scaling runs, one bar per (processes, seed)."""
    from seqrec.bench.plot import hbars

    runs = [r for r in records if r["part"] == "scaling"]
    return hbars([f"{r['procs']} proc x {r['threads']} thr, seed {r['seed']}" for r in runs],
                 [("epoch seconds", [r["epoch_s"] for r in runs], None, ""),
                  ("peak RSS of the largest rank, MB", [r["peak_rss_mb"] for r in runs], None, "")],
                 "1 vs N training processes")
