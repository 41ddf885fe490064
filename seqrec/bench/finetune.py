"""``seqrec bench finetune``: fine-tuning methods compared on a period split, over seeds.

Split (``split="auto"``): with timestamps (ML-100k's u.data, ML-20M-format files, the synthetic set,
whose users start uniformly over three years) a global time cut at the ``old_frac`` quantile of all
interaction times; without (input order only) each user's first ``old_frac`` of interactions
(``"position"``, also on request). The older part is pretrained (SASRec, ``model.ffn_mult=4``); the newer
part is fine-tuned with each method at the same budget. Both parts are split leave-one-out, so
"test" on the newer part is each user's newest interaction, and "forgetting" is the drop of the
older part's test NDCG@10 from the pretrained model to the fine-tuned one.

Per (dataset, seed, method): test NDCG@10 on the newer part, the older part's NDCG@10 and the
forgetting, values changed per optimiser step (parameters compared before/after the first steps:
Adam's momentum moves every entry with a non-zero moment), trainable values, optimiser-state
bytes, mean step time. ``peft="none"`` is the pretrained model itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from seqrec.training.callbacks import Callback

COLUMNS = ["dataset", "split", "peft", "seeds", "ndcg@10", "ndcg@10_std", "gain", "gain_std", "forgetting",
           "forgetting_std", "updated_per_step", "trainable_values", "optimizer_state_kb", "step_ms"]


class Meter(Callback):
    """Counts the values the first ``count_steps`` steps change, times the other steps, and reads the
    optimiser's state size when training ends."""

    def __init__(self, count_steps: int = 3) -> None:
        self.count_steps, self.counts, self.times = count_steps, [], []
        self.t: float | None = None
        self.state_bytes = 0

    def on_fit_start(self, trainer: Any, state: Any) -> None:
        self.prev = self._snapshot(trainer.model)

    def on_epoch_start(self, trainer: Any, state: Any) -> None:
        self.t = None  # validation between epochs is not a step

    def on_step_end(self, trainer: Any, state: Any, loss: float | None) -> None:
        if len(self.counts) < self.count_steps:
            now = self._snapshot(trainer.model)
            self.counts.append(sum(int((now[k] != v).sum()) for k, v in self.prev.items()))
            self.prev = now
            self.t = None
        elif self.t is not None:
            self.times.append(time.perf_counter() - self.t)
        if len(self.counts) >= self.count_steps:
            self.t = time.perf_counter()

    def on_fit_end(self, trainer: Any, state: Any) -> None:
        from seqrec.peft.base import state_bytes

        self.state_bytes = state_bytes(trainer.optimizer)
        self.prev = {}

    @staticmethod
    def _snapshot(model: Any) -> dict[str, Any]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def periods(dataset: str, data_dir: str | None, how: str = "auto", old_frac: float = 0.6,
            **options: Any) -> tuple[Any, Any, str]:
    """(older part, newer part, "time" or "position"), both PreparedData over one catalog. ``how``:
    "time", "position" or "auto" (time where the data has timestamps: the synthetic set has them too).
    ``options``: dataset options, as ``data.options`` (e.g. ``synthetic={...}``)."""
    from seqrec.data import load_interactions
    from seqrec.data.preprocess import Interactions
    from seqrec.data.split import split

    name, inter, meta = load_interactions(dataset, data_dir=data_dir, **options)
    if how == "auto":
        how = "time" if inter.has_time else "position"
    if how == "time":
        old = inter.timestamps < np.quantile(inter.timestamps.astype(np.float64), old_frac)
    else:
        off = np.concatenate([[0], np.cumsum(inter.lengths)])
        pos = np.arange(len(inter.items)) - off[inter.users]
        old = pos < old_frac * inter.lengths[inter.users]
    parts = []
    for mask in (old, ~old):
        sub = Interactions(users=inter.users[mask], items=inter.items[mask], timestamps=inter.timestamps[mask],
                           user_ids=inter.user_ids, item_ids=inter.item_ids, has_time=inter.has_time)
        parts.append(split(name, sub, "leave_one_out", meta=meta))
    return parts[0], parts[1], how


def run_seed(dataset: str, old: Any, new: Any, how: str, seed: int, methods: list[str], budget: float,
             pre_epochs: int, ft_epochs: int, overrides: dict[str, Any], log: Callable[[str], None],
             ft_overrides: dict[str, Any] | None = None) -> list[dict]:
    """Pretrain on ``old`` (``overrides``), fine-tune on ``new`` with each method (``ft_overrides``)
    -> one record per method (+ "none")."""
    from seqrec.api import SeqRec

    ov = {"model.ffn_mult": 4, "model.max_len": 50, "train.seed": seed, "train.epochs": pre_epochs,
          "train.num_threads": 1, **overrides}
    t0 = time.perf_counter()
    base = SeqRec(overrides=ov).fit(old, log=lambda s: None)
    base_old = base.evaluate(split="test", metrics_only=True)["ndcg@10"]
    common = {"dataset": dataset, "split": how, "seed": seed, "budget": budget, "base_old_ndcg@10": base_old,
              "ft_lr": (ft_overrides or {}).get("train.lr", base.cfg_.train.lr)}
    records = [{**common, "peft": "none", "ndcg@10": base.evaluate(new, "test", metrics_only=True)["ndcg@10"],
                "old_ndcg@10": base_old, "forgetting": 0.0, "updated_per_step": 0, "trainable_values": 0,
                "optimizer_state_kb": 0.0, "step_ms": None, "wall_s": time.perf_counter() - t0}]
    for m in methods:
        meter, t0 = Meter(), time.perf_counter()
        tuned = base.finetune(new, peft=m, budget=budget, log=lambda s: None, callbacks=[meter],
                              overrides={"train.epochs": ft_epochs, "train.seed": seed, **(ft_overrides or {})})
        old_ndcg = tuned.evaluate(old, "test", metrics_only=True)["ndcg@10"]
        records.append({**common, "peft": m, "ndcg@10": tuned.evaluate(split="test", metrics_only=True)["ndcg@10"],
                        "old_ndcg@10": old_ndcg, "forgetting": base_old - old_ndcg,
                        "updated_per_step": float(np.mean(meter.counts)) if meter.counts else 0.0,
                        "trainable_values": tuned.fit_info_["finetune"]["trainable_values"],
                        "optimizer_state_kb": meter.state_bytes / 1024,
                        "step_ms": 1000 * float(np.median(meter.times)) if meter.times else None,
                        "epochs": tuned.fit_info_.get("epochs"), "wall_s": time.perf_counter() - t0})
        log(f"{dataset} seed {seed} {m}: ndcg@10 {records[-1]['ndcg@10']:.4f} (base {records[0]['ndcg@10']:.4f}), "
            f"forgetting {records[-1]['forgetting']:+.4f}, {records[-1]['updated_per_step']:,.0f} values/step")
    return records


def run_all(datasets: list[str], data_dir: str | None, seeds: int, methods: list[str], budget: float,
            pre_epochs: int, ft_epochs: int, overrides: dict[str, Any], log: Callable[[str], None],
            split: str = "auto", ft_overrides: dict[str, Any] | None = None) -> list[dict]:
    records = []
    for ds in datasets:
        old, new, how = periods(ds, data_dir, split, **overrides.get("data.options", {}))  # --set data.options=
        log(f"{ds}: {how} split, older part {len(old.full.items):,} / newer {len(new.full.items):,} interactions")
        for seed in range(seeds):
            records += run_seed(ds, old, new, how, seed, methods, budget, pre_epochs, ft_epochs, overrides, log,
                                ft_overrides)
    return records


def _stats(rs: list[dict], key: str) -> tuple[float | None, float]:
    vals = [r[key] for r in rs if r.get(key) is not None]
    return (float(np.mean(vals)) if vals else None), (float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)


def summary(records: list[dict]) -> list[dict]:
    """One row per (dataset, method): means and standard deviations (ddof=1) over the seeds; ``gain``:
    NDCG@10 minus the same seed's pretrained model's (paired)."""
    rows, g = [], gains(records)
    for ds, m in dict.fromkeys((r["dataset"], r["peft"]) for r in records):
        rs = [r for r in records if r["dataset"] == ds and r["peft"] == m]
        row = {"dataset": ds, "split": rs[0]["split"], "peft": m, "seeds": len(rs)}
        for key in ("ndcg@10", "forgetting"):
            row[key], row[f"{key}_std"] = _stats(rs, key)
        d = g.get((ds, m), [0.0])
        row["gain"], row["gain_std"] = float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
        for key in ("updated_per_step", "trainable_values", "optimizer_state_kb", "step_ms"):
            row[key] = _stats(rs, key)[0]
        rows.append(row)
    return rows


def gains(records: list[dict], key: str = "ndcg@10") -> dict[tuple[str, str], list[float]]:
    """{(dataset, method): [per-seed ``key`` minus the same seed's pretrained model's]} (paired)."""
    base = {(r["dataset"], r["seed"]): r[key] for r in records if r["peft"] == "none"}
    out: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r["peft"] != "none" and (r["dataset"], r["seed"]) in base:
            out.setdefault((r["dataset"], r["peft"]), []).append(r[key] - base[(r["dataset"], r["seed"])])
    return out


def figure(records: list[dict]) -> Any:
    """Per method and dataset: the NDCG@10 gain over the pretrained model (mean ± std of the per-seed
    paired differences) and the values changed per step (log scale)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    ax1, ax2 = fig.subplots(1, 2)
    g, rows = gains(records), summary(records)
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    methods = [m for m in dict.fromkeys(r["peft"] for r in records) if m != "none"]
    width = 0.8 / max(len(datasets), 1)
    for i, ds in enumerate(datasets):
        x = np.arange(len(methods)) + i * width
        d = [g.get((ds, m), [np.nan]) for m in methods]
        ax1.bar(x, [np.mean(v) for v in d], width, yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in d],
                capsize=3, label=ds)
        rs = {r["peft"]: r for r in rows if r["dataset"] == ds}
        ax2.bar(x, [rs[m]["updated_per_step"] if m in rs else np.nan for m in methods], width, label=ds)
    ax1.axhline(0, color="black", lw=0.8)
    for ax, title in ((ax1, "test NDCG@10 minus the pretrained model's (paired, mean ± std over seeds)"),
                      (ax2, "values changed per optimiser step")):
        ax.set_xticks(np.arange(len(methods)) + width * (len(datasets) - 1) / 2, methods)
        ax.set_title(title, fontsize=10)
        ax.legend()
    ax2.set_yscale("log")
    fig.tight_layout()
    return fig


def energy_shares(run_dir: str, steps: int = 16, frac: float = 0.01) -> dict[str, dict[str, float]]:
    """Share of the feed-forward weight gradients' energy in their top ``frac`` entries, on the
    trained run ``run_dir``'s own batches: {kind: {original, rotated (P^T G Q), rotated_qt (P^T G Q^T)}},
    the rotations fit on the first half of ``steps`` batches and measured on the other half."""
    from seqrec.api import SeqRec
    from seqrec.peft import ffn_modules
    from seqrec.peft.finetune import _gradient_source
    from seqrec.peft.sparse import collect_gradients, energy_share, mode_factors
    from seqrec.registry import LOSSES

    rec = SeqRec.load(run_dir)
    loss = LOSSES.build(rec.cfg_.loss.name, **rec.cfg_.loss.params)
    source = _gradient_source(rec.cfg_, rec.model_, loss, rec.data_, force=True)
    out = {}
    for kind, g in collect_gradients(rec.model_, ffn_modules(rec.model_), source, steps).items():
        fit, held = g[:len(g) // 2].double(), g[len(g) // 2:].double()
        p, q = mode_factors(fit)
        mean = lambda xs: float(np.mean([energy_share(x, frac) for x in xs]))  # noqa: E731
        out[kind] = {"original": mean(held), "rotated": mean(p.T @ held @ q), "rotated_qt": mean(p.T @ held @ q.T)}
    return out
