"""``seqrec bench quality``: what each loss costs and what it buys, trained end to end.

Every (loss, seed) pair is one ``seqrec fit`` in a subprocess (same config, same budget, early
stopping on validation; only ``--loss`` and ``train.seed`` change), in ``DIR/runs/LOSS-seedS``.
A run whose ``results.json`` exists is reused, a run with a checkpoint but no results is continued
with ``seqrec fit --resume`` (plus this invocation's budget settings, e.g. ``train.max_time_s``), so
an interrupted benchmark picks up where it stopped. Each run writes its output straight to
``DIR/runs/LOSS-seedS.log``: it survives the death of the benchmark process.

When ``ce`` is among the losses, every other run is also compared with the ``ce`` run of the same
seed on the same test users (``SeqRec.compare``): ``x_ce`` = its test NDCG@10 / CE's, with the
paired-bootstrap 95% interval ``x_ce_lo``..``x_ce_hi`` and the paired t-test ``p_vs_ce``. That
interval covers the test users' sampling noise, not the seed-to-seed spread (use ``--seeds``).

Output: ``DIR/results.json`` (one record per run: loss, dataset, seed, ndcg@10, hr@10, x_ce, peak_mb,
epoch_s, best_epoch, ...), ``DIR/table.md`` (per-run rows, then mean ± std over seeds per loss),
``DIR/summary.json`` and ``DIR/quality.png`` (test NDCG@10 against peak memory, from
``seqrec.bench.plot.quality_figure``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqrec.errors import ConfigError, shorten

COLUMNS = ["loss", "dataset", "seed", "status", "ndcg@10", "hr@10", "x_ce", "x_ce_lo", "x_ce_hi", "p_vs_ce",
           "peak_mb", "epoch_s", "best_epoch", "epochs", "wall_s", "note"]
SUMMARY_COLUMNS = ["loss", "runs", "ndcg@10", "hr@10", "x_ce", "peak_mb", "epoch_s", "best_epoch"]
METRICS = ("ndcg@10", "hr@10", "x_ce", "peak_mb", "epoch_s", "best_epoch")


def run_process(cmd: list[str], timeout_s: float | None, log: Path) -> tuple[int, str]:
    """Run ``cmd`` with its output going straight to the file ``log`` (so the run survives the death
    of this benchmark process: a pipe would kill it with SIGPIPE); return (exit code, output).
    Tests replace this with a fake ``fit``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\ntimed out after {timeout_s:.0f} s\n")
            rc = 124
    return rc, log.read_text(errors="replace")


def split_sets(sets: tuple[str, ...] | list[str], losses: list[str]) -> dict[str, list[str]]:
    """``--set`` overrides per loss: ``KEY=V`` applies to every run, ``LOSS:KEY=V`` to one loss."""
    per = {name: [] for name in losses}
    for s in sets:
        head, sep, rest = s.partition(":")
        if sep and "=" not in head:
            if head not in per:
                raise ConfigError(f"--set {s}: {head!r} is not one of --losses ({', '.join(losses)})")
            per[head].append(rest)
        else:
            for name in losses:
                per[name].append(s)
    return per


def fit_command(run_dir: Path, loss: str, seed: int, dataset: str, data_dir: str | None, fmt: str | None,
                config: str | None, sets: list[str]) -> list[str]:
    """The ``seqrec fit`` command line of one run (or its ``--resume`` when it was interrupted)."""
    fit = [sys.executable, "-m", "seqrec.cli", "fit"]
    if (run_dir / "config.yaml").exists():  # continue it; only budget settings may change on resume
        from seqrec.training.state import RESUME_KEYS

        budget = [x for s in sets if s.split("=", 1)[0].strip() in RESUME_KEYS for x in ("--set", s)]
        return fit + ["--resume", str(run_dir)] + budget
    cmd = fit + ["--dataset", dataset, "--loss", loss, "--set", f"train.seed={seed}", "--out", str(run_dir),
                 "--overwrite", "--no-baseline"]
    for opt, val in (("--data-dir", data_dir), ("--format", fmt), ("--config", config)):
        if val is not None:
            cmd += [opt, val]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def read_run(run_dir: Path) -> dict[str, Any]:
    """Metrics of a finished run directory (results.json + train_info.json)."""
    res = json.loads((run_dir / "results.json").read_text())
    info_path = run_dir / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    test = res.get("test", {})
    peak = info.get("cuda_peak_mb") or info.get("peak_rss_mb")
    return {"ndcg@10": test.get("ndcg@10"), "hr@10": test.get("hr@10"), "peak_mb": peak,
            "epoch_s": info.get("epoch_s"), "best_epoch": info.get("best_epoch"), "epochs": info.get("epochs"),
            "wall_s": info.get("wall_s")}


def run_all(out: Path, dataset: str, losses: list[str], seeds: list[int], data_dir: str | None = None,
            fmt: str | None = None, config: str | None = None, sets: tuple[str, ...] = (),
            timeout_s: float | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train (or reuse) every (loss, seed) run under ``out/runs``; one record per run."""

    per_loss = split_sets(sets, losses)
    records = []
    for name in losses:
        for seed in seeds:
            run_dir = out / "runs" / f"{name}-seed{seed}"
            rec: dict[str, Any] = {"loss": name, "dataset": dataset, "seed": seed, "status": "ok", "note": "",
                                   "run_dir": str(run_dir)}
            if (run_dir / "results.json").exists():
                rec["note"] = "reused"
            else:
                cmd = fit_command(run_dir, name, seed, dataset, data_dir, fmt, config, per_loss[name])
                log(f"{name} seed {seed}: {'resuming' if '--resume' in cmd else 'training'} in {run_dir}")
                t0 = time.monotonic()
                rc, output = run_process(cmd, timeout_s, run_dir.parent / f"{name}-seed{seed}.log")
                if rc != 0 or not (run_dir / "results.json").exists():
                    tail = [s for s in output.strip().splitlines() if s.strip()][-1:] or [f"exit code {rc}"]
                    rec.update(status="failed", note=shorten(tail[0]))
                    log(f"{name} seed {seed}: failed ({rec['note']}); log in {run_dir.parent}")
                    records.append(rec)
                    continue
                rec["note"] = f"trained in {time.monotonic() - t0:.0f} s"
            rec.update(read_run(run_dir))
            log(f"{name} seed {seed}: NDCG@10 {rec['ndcg@10']} HR@10 {rec['hr@10']} peak {rec['peak_mb']} MB")
            records.append(rec)
    return records


def paired_with_ce(records: list[dict[str, Any]], resamples: int = 2000) -> None:
    """Add ``x_ce``, ``x_ce_lo``, ``x_ce_hi``, ``p_vs_ce`` (test NDCG@10 against the same seed's ce run) in place."""
    from seqrec.api import SeqRec

    for seed in dict.fromkeys(r["seed"] for r in records):
        base = next((r for r in records if r["seed"] == seed and r["loss"] == "ce" and r["status"] == "ok"), None)
        others = [r for r in records if r["seed"] == seed and r["status"] == "ok" and r is not base]
        if base is None or not others:
            continue
        try:  # one load and one ranking of the ce run per seed
            rows = SeqRec.load(base["run_dir"]).compare(*(SeqRec.load(r["run_dir"]) for r in others),
                                                        metrics=("ndcg@10",), resamples=resamples).to_dicts()
        except Exception as e:  # a comparison must not sink the table of finished runs
            for r in others:
                r["note"] = (r["note"] + f"; no ce comparison ({shorten(e, 80)})").lstrip("; ")
            continue
        for r, c in zip(others, rows, strict=True):
            r.update(x_ce=c["ratio"], x_ce_lo=c["ratio_lo"], x_ce_hi=c["ratio_hi"], p_vs_ce=c["p_value"])


def _mean_std(vals: list[float]) -> tuple[float, float]:
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per loss: mean and (sample) std over its successful seeds of every metric."""
    rows = []
    for name in dict.fromkeys(r["loss"] for r in records):
        ok = [r for r in records if r["loss"] == name and r["status"] == "ok"]
        row: dict[str, Any] = {"loss": name, "runs": len(ok)}
        for key in METRICS:
            vals = [float(r[key]) for r in ok if r.get(key) is not None]
            if vals:
                row[key], row[f"{key}_std"] = _mean_std(vals)
        rows.append(row)
    return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        if key in ("loss", "runs"):
            return str(row[key])
        if key not in row:
            return "—"
        digits = 4 if key in ("ndcg@10", "hr@10") else 3 if key == "x_ce" else 1
        return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"

    head = "| " + " | ".join(SUMMARY_COLUMNS) + " |\n|" + "---|" * len(SUMMARY_COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(cell(r, k) for k in SUMMARY_COLUMNS) + " |\n" for r in rows)


def table_body(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """table.md under its header: the per-loss summary (``rows``), then one row per run."""
    from seqrec.bench.common import markdown_table

    return ("## Mean ± std over seeds (test split)\n\n" + summary_markdown(rows)
            + "\n## Runs\n\n" + markdown_table(records, COLUMNS))
