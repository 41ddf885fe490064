"""``seqrec bench scale``: SASRec training as the catalog grows (10k → 100k → 1M items) per loss.

Data: the ``synthetic:million`` generator (200,000 users, ~50 interactions each, planted sequential
structure), prepared once per catalog into ``--cache`` and loaded by every case. The catalog is the
items that occur: up to 200k items the generator draws that many ids (nearly all occur), above it
1.95x as many (at 1M about 52% of the drawn ids occur, as in the ``million`` preset); 50 ids per
cluster. The table gives the catalog that resulted.

Each (catalog, loss) case runs in a fresh subprocess (so its peak RSS is its own): the default
config (SASRec d = 64, 2 blocks, max_len 50, batch 128, fused Adam) with that
loss, then

1. ``--steps`` timed training steps after one warm-up (``bench.throughput.measure_loss``: seconds
   per step and each part's share; the projected epoch = step time x batches per epoch);
2. training from scratch for ``--budget`` seconds (``train.max_time_s``; the epoch in progress ends
   at the budget and is validated), validation NDCG@10 on a fixed seeded sample of ``--valid-users``
   users, next to popularity's on the same users.

A loss whose predicted step (``seqrec.plan.predict_memory``) exceeds the free RAM is reported as
"does not fit (predicted X GB)" without running. Output: results.json (a record per case), table.md,
scale.png (step time and peak RSS against the catalog, log-log, a line per loss).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ["items", "loss", "step_s", "cpu_s_per_step", "tokens_per_s", "share_loss", "share_optimizer",
           "epoch_s_projected", "trained_s", "epochs", "valid_ndcg@10", "pop_ndcg@10", "x_pop", "peak_rss_mb",
           "predicted_mb", "device", "cuda_peak_mb", "note"]


def prepare(items: int, users: int, cache: Path, log: Callable[[str], None]) -> Path:
    """The prepared data set of ``items`` items and ``users`` users in ``cache`` (made once)."""
    from seqrec.data import load_dataset, save_prepared

    path = cache / f"synthetic-million-items{items}-users{users}"
    if not (path / "meta.json").exists():
        t0 = time.monotonic()
        drawn = items if items <= 200_000 else round(items * 1.95)
        data = load_dataset("synthetic:million", synthetic={"n_items": drawn, "n_users": users,
                                                            "n_clusters": max(drawn // 50, 1)})
        save_prepared(data, path)
        log(f"prepared {items:,} items x {users:,} users in {time.monotonic() - t0:.0f} s -> {path}")
    return path


def _config(loss: str, budget: float, valid_users: int, threads: int | None, device: str = "auto") -> Any:
    from seqrec.config import Config, load_config

    tree = load_config(None).to_dict()
    tree["loss"] = {"name": loss}
    tree["train"].update(max_time_s=float(budget), epochs=1000, valid_users=int(valid_users),
                         checkpoint_every_s=None, device=device)
    if threads:
        tree["train"]["num_threads"] = int(threads)
    return Config.from_tree(tree)


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One case, in this process (the subprocess's entry point): the record of COLUMNS."""
    import math

    import torch

    from seqrec.bench._loss_case import _status_mb
    from seqrec.bench.throughput import _trainer, measure_loss
    from seqrec.data import load_dataset
    from seqrec.evaluation import evaluate
    from seqrec.registry import MODELS

    cfg = _config(spec["loss"], spec["budget"], spec["valid_users"], spec.get("threads"), spec.get("device", "auto"))
    data = load_dataset(spec["data"])
    timed = measure_loss(cfg, data, int(spec["steps"]), warmup=1)
    trainer = _trainer(cfg, data)
    t0 = time.monotonic()
    info = trainer.fit()
    trained_s = time.monotonic() - t0
    pop = MODELS.build("pop", data.n_items)
    pop.fit_popularity(data.item_pop)
    e = cfg.eval
    pop_ndcg = evaluate(pop.to(trainer.device), trainer.valid, max_len=trainer.max_len, ks=[10],
                        filter_seen=e.filter_seen, batch_size=e.batch_size, device=trainer.device,
                        seed=int(cfg.train.seed))["ndcg@10"]
    ndcg = trainer.evaluate(trainer.valid)["ndcg@10"]  # the weights fit() left: the best epoch's
    loss_share = timed["share_loss_fwd"] + timed["share_loss_bwd"]
    cuda_mb = round(torch.cuda.max_memory_allocated() / 2**20) if trainer.device.type == "cuda" else None
    return {"items": data.n_items, "loss": cfg.loss.name, "step_s": timed["step_s"],
            "cpu_s_per_step": timed["cpu_s_per_step"],
            "tokens_per_s": timed["tokens_per_s"], "share_loss": round(loss_share, 3),
            "share_optimizer": timed["share_optimizer"],
            "epoch_s_projected": round(timed["step_s"] * trainer.n_batches, 1),
            "trained_s": round(trained_s, 1), "epochs": info.get("epochs"), "valid_ndcg@10": round(ndcg, 5),
            "pop_ndcg@10": round(pop_ndcg, 5), "x_pop": round(ndcg / pop_ndcg, 2) if pop_ndcg else math.inf,
            "peak_rss_mb": round(_status_mb("VmHWM") or 0.0), "device": trainer.device.type, "cuda_peak_mb": cuda_mb,
            "threads": torch.get_num_threads(), "note": ""}


def _predicted_mb(loss: str, items: int) -> float | None:
    from seqrec.config import load_config
    from seqrec.plan import predict_memory

    c = load_config(None)
    m, t = c.model.params, c.train
    try:
        p = predict_memory(items, t.batch_size, m["max_len"], m["d"], m["n_blocks"], m["n_heads"], loss)
    except NotImplementedError:  # a plug-in loss without a memory model
        return None
    return round(p["total"] / 2**20)


def run_all(items: list[int], losses: list[str], users: int, budget: float, steps: int, valid_users: int,
            cache: Path, threads: int | None, log: Callable[[str], None] = print,
            device: str = "auto") -> list[dict[str, Any]]:
    """A record per (catalog, loss): each case in a fresh ``python -m seqrec.bench.scale`` process."""

    from seqrec.training.memory import available_bytes
    from seqrec.training.system import resolve_device

    free = (available_bytes(resolve_device(device)) or (None, ""))[0]
    records = []
    for c in items:
        path = prepare(c, users, cache, log)
        for loss in losses:
            need = _predicted_mb(loss, c)
            if free is not None and need is not None and need * 2**20 > free:
                records.append({"items": c, "loss": loss, "predicted_mb": need, "note": f"does not fit (predicted "
                                f"{need / 1024:.1f} GB, {free / 2**30:.1f} GB free on {device})"})
                log(f"{c:>9,} {loss:>16}: {records[-1]['note']}")
                continue
            spec = {"data": str(path), "loss": loss, "budget": budget, "steps": steps,
                    "valid_users": valid_users, "threads": threads, "device": device}
            proc = subprocess.run([sys.executable, "-m", "seqrec.bench.scale", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rec = {"items": c, "loss": loss, "predicted_mb": need, "note": f"failed: {err[:200]}"}
            else:
                rec = {**json.loads(proc.stdout.strip().splitlines()[-1]), "predicted_mb": need}
            records.append(rec)
            log(f"{c:>9,} {loss:>16}: " + ", ".join(f"{k}={rec.get(k)}" for k in
                                                    ("step_s", "valid_ndcg@10", "pop_ndcg@10", "peak_rss_mb", "note")))
    return records


if __name__ == "__main__":
    print(json.dumps(run_case(json.loads(sys.argv[1]))))
