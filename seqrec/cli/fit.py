"""``seqrec fit``: validate everything, then create the run directory, train, evaluate, report."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import click

from seqrec.cli.options import overrides, plugin_option, set_option
from seqrec.errors import SeqrecError


def metrics_table(rows: dict[str, dict[str, float]], ks: list[int]) -> str:
    """Rows of metrics (hr/ndcg/mrr/coverage@k for ``ks``) as an aligned text table."""
    names = ["hr", "ndcg", "mrr", "coverage"]
    cols = [f"{n}@{k}" for n in names for k in ks if f"{n}@{k}" in next(iter(rows.values()))]
    width = max(len(r) for r in rows) + 2
    head = " " * width + "".join(f"{c:>12}" for c in cols)
    lines = [head] + [f"{r:<{width}}" + "".join(f"{v.get(c, float('nan')):>12.4f}" for c in cols)
                      for r, v in rows.items()]
    return "\n".join(lines)


def _help_names(kind: str) -> str:
    from seqrec.registry import LOSSES, MODELS

    return ", ".join((MODELS if kind == "model" else LOSSES).names())


def _help_configs() -> str:
    from seqrec.config import packaged_configs

    return ", ".join(packaged_configs())


@click.command(epilog="Every config key, its type and default: docs/cli.md (\"Config keys\"), or `seqrec config "
                      "keys`; a run's or config's resolved values: `seqrec config show RUN|NAME`.")
@click.option("--config", "config", default=None,
              help=f"Packaged config ({_help_configs()}) or a YAML file (default: default).")
@click.option("--dataset", default=None, help="Dataset name, prepared directory or file path.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--format", "fmt", default=None, help="Reader for a file path (see `seqrec data --help`).")
@click.option("--model", default=None, help=f"Model: {_help_names('model')} (or a plug-in's).")
@click.option("--loss", default=None, help=f"Objective: {_help_names('loss')} (or a plug-in's).")
@set_option()
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (= --set train.device=...).")
@click.option("--out", "out", default=None, type=click.Path(), help="Run dir (default runs/MODEL-LOSS-DATA-TIME).")
@click.option("--resume", "resume", default=None, type=click.Path(), help="Continue the run in this directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--strict", is_flag=True, default=None,
              help="Refuse data with rows that are not interactions instead of dropping them with a warning "
                   "(= --set data.strict=true).")
@click.option("--baseline/--no-baseline", default=True, help="Also report the most-popular baseline.")
@click.option("--force", is_flag=True, help="Train even if one step is predicted not to fit the free memory.")
@click.option("--dry-run", is_flag=True, help="Validate, read the data, plan the memory and print it; train "
                                              "nothing, write nothing.")
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Train on N processes (N GPUs, or N CPU processes): relaunches through torchrun "
                   "(torch.distributed.run); see docs/distributed.md.")
@plugin_option
def fit(config, dataset, data_dir, fmt, model, loss, sets, device, out, resume, overwrite, strict, baseline,
        force, dry_run, devices) -> int:
    """Train a model, evaluate it on validation and test, and save the run.

    With no arguments: SASRec + full CE on the embedded synthetic data (under a minute on 2 cores).
    Under torchrun, rank 0 runs this command and the other ranks train what it announces.
    """
    def body() -> int:
        return _fit(config, dataset, data_dir, fmt, model, loss, sets, device, out, resume, overwrite, strict,
                    baseline, force, dry_run)

    if devices is None and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return body()  # one process: no torch import before the config is checked (a mistake answers at once)
    from seqrec.training import distributed

    return distributed.run_fit(devices, body, _follow)


def _follow(payload: dict[str, Any]) -> int:
    """A rank > 0 under torchrun: train rank 0's run (no run directory: rank 0 writes everything); on
    resume from the run's data copy where this machine sees it (one node), else the config's data set."""
    from seqrec.api import SeqRec
    from seqrec.rundir import RunDir
    from seqrec.training import TrainingInterrupted

    run = RunDir(payload["run"])
    data = str(run.data) if payload["resume"] and run.has_data() else None
    try:
        SeqRec(config=payload["config"]).fit(data, resume=payload["resume"], log=lambda s: None, force=payload["force"])
    except TrainingInterrupted as e:
        return 128 + e.signum
    return 0


def _fit(config, dataset, data_dir, fmt, model, loss, sets, device, out, resume, overwrite, strict, baseline,
         force, dry_run) -> int:
    from seqrec.rundir import RunDir

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:  # torchrun restarted a failed group
        from seqrec.training import distributed

        if distributed.elastic_resume(out):  # continue the run, don't start over
            resume, out, config, dataset, data_dir, fmt, model, loss, strict, overwrite = (out, *[None] * 8, False)

    flags = {"data.dataset": dataset, "data.data_dir": data_dir, "data.format": fmt, "model.name": model,
             "loss.name": loss, "train.device": device, "data.strict": strict}
    ov = {k: v for k, v in flags.items() if v is not None} | overrides(sets)
    if resume:
        if any(x is not None for x in (config, dataset, data_dir, fmt, model, loss, out, strict)) or overwrite:
            from seqrec.training.state import RESUME_KEYS

            raise SeqrecError("--resume continues a run with its saved config; only --device and --set "
                              f"{'/'.join(k for k in RESUME_KEYS if k != 'train.device')} may change")
        run = RunDir(resume)
        cfg = _resume_config(run, ov)
        if cfg is None:
            return 0
        preflight(cfg)
        if dry_run:
            return dry_run_report(cfg, run.path, resume=True)
        with run.lock():
            return _train(cfg, run, True, baseline, force)
    from seqrec.config import Config, load_tree
    from seqrec.data import check_spec

    tree = load_tree(config, ov)
    if isinstance(tree["data"]["dataset"], str):  # before validation loads torch
        check_spec(tree["data"]["dataset"], tree["data"]["format"])
    cfg = Config.from_tree(tree)
    preflight(cfg)
    run = RunDir(out or Path("runs") / (f"{cfg.model.name}-{cfg.loss.name}-{Path(cfg.data.dataset).stem}-"
                                        f"{time.strftime('%Y%m%d-%H%M%S')}"))
    if dry_run:
        return dry_run_report(cfg, run.path, resume=False)
    with run.create(overwrite):
        return _train(cfg, run, False, baseline, force)


def preflight(cfg: Any) -> None:
    """The device exists and every logger's package is installed (the dataset was checked before torch
    loaded: ``check_spec`` in ``fit``)."""
    from seqrec.training import resolve_device
    from seqrec.training.loggers import check_loggers

    resolve_device(cfg.train.device)
    check_loggers(cfg.train.loggers)


def _resume_config(run: Any, ov: dict[str, Any]) -> Any:
    """The saved config with the allowed budget changes, or None when the run is finished."""
    from seqrec.config import Config

    if not run.is_run():
        raise SeqrecError(f"--resume {run.path}: no config.yaml there (not a seqrec run directory)")
    if run.results.exists() and not any(k != "train.device" for k in ov):
        click.echo(f"run {run.path} is already finished (extend it with --set train.epochs=... or "
                   "train.max_time_s=...)")
        click.echo(metrics_table(json.loads(run.results.read_text()), [10, 20, 50]))
        return None
    from seqrec.training.state import resume_changes

    saved = run.read_config()
    cfg = Config.from_tree(saved).with_overrides(ov) if ov else Config.from_tree(saved)
    resume_changes(saved, cfg.to_dict())  # refuses, naming it, a setting the checkpoint was computed with
    return cfg


def _train(cfg: Any, run: Any, resume: bool, baseline: bool, force: bool) -> int:
    from seqrec.api import SeqRec
    from seqrec.training import TrainingInterrupted, distributed
    from seqrec.training.loggers import Trackers

    distributed.announce({"config": cfg.to_dict(), "resume": resume, "force": force, "run": str(run.path)})
    rec = SeqRec(config=cfg)
    trackers = Trackers(cfg.train, run, owned=True) if cfg.train.loggers else None
    try:  # with a run directory the trainer turns SIGINT/SIGTERM into a checkpoint and TrainingInterrupted
        rec.fit(run_dir=run.path, resume=resume, log=lambda s: click.echo(s, err=True), force=force,
                callbacks=[trackers] if trackers else [])
        results = _results(rec, cfg, run, baseline)
    except TrainingInterrupted as e:
        click.echo(f"interrupted: checkpoint saved in {run.checkpoints}; resume with: seqrec fit --resume "
                   f"{run.path}", err=True)
        return 128 + e.signum
    except BaseException:
        if trackers is not None:
            with contextlib.suppress(Exception):  # the original error is the one to report
                trackers.abort()
        raise
    if trackers is not None:
        trackers.finish(results)
    return 0


def _results(rec: Any, cfg: Any, run: Any, baseline: bool) -> dict[str, dict[str, float]]:
    """Evaluate, write results.json (and baseline_pop.json), print the table, the verdict against
    popularity and the next commands -> {"valid", "test", "pop"} metrics for the trackers."""
    from seqrec.api import SeqRec

    # valid: the best epoch's validation, as early stopping scored it (exact, train.valid_users' users,
    # the weights fit restored); scoring it again cost a pass over up to 50,000 users (1M items: minutes)
    best = {k: v for k, v in rec.fit_info_.get("best_valid", {}).items() if "@" in k}
    results = {"valid": best or rec.evaluate(split="valid", metrics_only=True),
               "test": rec.evaluate(split="test", metrics_only=True)}
    run.write_json(run.results.name, results)
    name = cfg.model.name
    rows = {f"{name} valid": results["valid"], f"{name} test": results["test"]}
    pop: dict[str, float] = {}
    if baseline and name != "pop":
        tree = rec.get_config()
        pop_rec = SeqRec.from_config({**tree, "model": {"name": "pop"}, "train": {**tree["train"], "loggers": []}})
        pop_rec.fit(rec.data_, log=lambda s: None)
        pop = rows["pop test"] = pop_rec.evaluate(split="test", metrics_only=True)
        run.write_json(run.baseline.name, {"test": pop})
    click.echo(metrics_table(rows, [k for k in cfg.eval.ks if k in (10, 20, 50)] or cfg.eval.ks))
    info = rec.fit_info_
    click.echo(f"best epoch {info.get('best_epoch')} of {info.get('epochs')}, {info.get('wall_s', 0):.1f}s training; "
               f"run saved in {run.path}")
    mine, theirs = results["test"].get("ndcg@10"), pop.get("ndcg@10")
    if mine is not None and theirs is not None and mine < theirs:
        click.echo(f"warning: {name} scores below the popularity baseline (test NDCG@10 {mine:.4f} < {theirs:.4f}): "
                   "it has not learnt more than item counts; train longer (train.epochs, train.patience) or check "
                   f"the curves in {run.path / 'curves.png'}", err=True)
    click.echo(next_steps(run.path))
    return {**results, **({"pop": pop} if pop else {})}


def next_steps(run: Path) -> str:
    """The commands a user runs next on a finished run (printed at the end of ``seqrec fit``)."""
    q = shlex.quote(str(run))
    return "\n".join(["next:",
                      f"  seqrec evaluate {q}                       # metrics again (--retrieval, --split)",
                      f"  seqrec recommend {q} --all --out recs.parquet   # top-10 for every user",
                      f"  seqrec compare {q} OTHER_RUN              # paired test against another run",
                      f"  seqrec config show {q}                    # the resolved config",
                      f"  open {shlex.quote(str(run / 'curves.png'))}   # training curves"])


def dry_run_report(cfg: Any, run: Path, resume: bool) -> int:
    """``fit --dry-run``: the resolved config, the data's size, the predicted memory of one step
    against the free memory; nothing is trained or written."""
    import torch
    import yaml

    from seqrec.data import load_dataset
    from seqrec.plan import fmt_bytes
    from seqrec.registry import MODELS
    from seqrec.training import resolve_device
    from seqrec.training.memory import available_bytes, predicted_step

    d = cfg.data
    data = load_dataset(d.dataset, data_dir=d.data_dir, fmt=d.format, split=d.split, strict=d.strict, **d.options)
    with torch.device("meta"):
        model = MODELS.build(cfg.model.name, data.n_items, **cfg.model.params)
    batch = min(cfg.train.batch_size, max(data.n_users, 1))
    need = predicted_step(cfg, model, batch, data.n_items) if model.trainable else None
    device = resolve_device(cfg.train.device)
    have = available_bytes(device)
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    click.echo(f"\ndata: {data.name}: {data.n_users:,} users, {data.n_items:,} items, "
               f"{len(data.train.items):,} "
               "training interactions")
    step = f"~{fmt_bytes(need)}" if need is not None else "not predicted for this model/loss"
    free = f"{fmt_bytes(have[0])} of {have[1]}" if have else "unknown"
    verdict = "" if need is None or have is None else ("  (fits)" if need <= have[0] else "  (does NOT fit: "
                                                                                           "fit would refuse it)")
    click.echo(f"memory: one training step {step} on {device}; free {free}{verdict}")
    click.echo(f"dry run: would {'resume' if resume else 'train into'} {run}; nothing trained or written")
    return 0
