"""Hyper-parameter search with Optuna (``seqrec tune``; the ``tune`` extra: ``pip install 'seqrec[tune]'``).

A search space is a YAML mapping of dotted config keys to distributions::

    train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # float (log-uniform)
    model.dropout: {low: 0.0, high: 0.5}                # float
    model.n_blocks: {low: 1, high: 3}                   # int (both bounds integers; optional step)
    model.d: {choices: [32, 64, 128]}                   # categorical

Each trial is an ordinary run directory ``DIR/trials/NNN`` (``seqrec evaluate / recommend /
config show`` work on it) trained on the config with the trial's values; its objective is the best
validation NDCG@10 (the weights early stopping keeps). Trials report validation NDCG@10 after every
epoch and the median pruner stops those below the median of earlier trials at the same epoch.
``--budget-per-trial S`` stops a trial at the first epoch end after which another epoch would pass
S seconds of training (epoch boundaries only, so ``DIR/best.yaml`` — the best trial's config with
``train.epochs`` set to the epochs it trained — reproduces its validation NDCG@10 with ``seqrec fit``).

The study lives in ``DIR/study.db`` (SQLite): running the same command again continues it up to
``--trials`` finished trials (a trial cut off by a crash is marked failed and its directory
removed). ``DIR/table.md`` + ``results.json`` list the trials, ``DIR/importance.png`` shows
Optuna's parameter importances (fANOVA) once two trials are complete.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from seqrec.config import Config, load_tree, read_yaml, set_dotted
from seqrec.errors import ConfigError, SeqrecError
from seqrec.io import run_lock, write_json, write_text
from seqrec.training.callbacks import Callback
from seqrec.training.state import Stop, StopReason

STUDY = "seqrec"


def check_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("seqrec tune needs optuna: pip install 'seqrec[tune]'") from None
    return optuna


def read_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The search space of ``path`` -> {dotted key: {"low", "high", "log", "step"} or {"choices"}};
    a ConfigError (one line) for a malformed entry."""
    space = read_yaml(path)
    if not space:
        raise ConfigError(f"{path}: the search space is empty")
    for key, dist in space.items():
        if not isinstance(dist, dict):
            raise ConfigError(f"{path}: {key} must be a mapping like {{low: 1, high: 4}} or {{choices: [...]}}")
        extra = set(dist) - {"low", "high", "log", "step", "choices"}
        if extra:
            raise ConfigError(f"{path}: {key}: unknown field {sorted(extra)[0]!r} (low, high, log, step, choices)")
        if "choices" in dist:
            if not isinstance(dist["choices"], list) or not dist["choices"] or len(dist) > 1:
                raise ConfigError(f"{path}: {key}: choices must be a non-empty list and stand alone")
            continue
        lo, hi = dist.get("low"), dist.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi:
            raise ConfigError(f"{path}: {key} needs numbers low < high, got low={lo!r} high={hi!r}")
        if dist.get("log") and lo <= 0:
            raise ConfigError(f"{path}: {key}: a log scale needs low > 0")
    return space


def check_space(base: dict[str, Any], space: dict[str, dict[str, Any]]) -> None:
    """Every key and every bound / choice of ``space`` makes a valid config with ``base`` (ConfigError
    naming the key otherwise), before anything is trained or written."""
    for key, dist in space.items():
        for value in dist.get("choices", [dist.get("low"), dist.get("high")]):
            tree = json.loads(json.dumps(base))
            set_dotted(tree, key, value)
            try:
                Config.from_tree(tree)
            except ConfigError as e:
                raise ConfigError(f"search space {key}={value!r}: {e}") from None


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's values for ``space`` (Optuna's suggest_* by the distribution's shape)."""
    out: dict[str, Any] = {}
    for key, d in space.items():
        if "choices" in d:
            out[key] = trial.suggest_categorical(key, d["choices"])
        elif isinstance(d["low"], int) and isinstance(d["high"], int) and not isinstance(d.get("step"), float):
            out[key] = trial.suggest_int(key, d["low"], d["high"], step=d.get("step") or 1, log=bool(d.get("log")))
        else:
            out[key] = trial.suggest_float(key, float(d["low"]), float(d["high"]), log=bool(d.get("log")),
                                           step=d.get("step"))
    return out


class EpochBudget(Callback):
    """Stop at the first epoch end after which one more (mean-length) epoch would pass ``max_s`` seconds."""

    def __init__(self, max_s: float | None) -> None:
        self.max_s = max_s

    def on_epoch_end(self, trainer: Any, state: Any, record: dict[str, float]) -> None:
        if self.max_s is None or state.stop is not None:
            return
        if state.elapsed + state.elapsed / max(state.epoch, 1) > self.max_s:
            state.stop = StopReason(Stop.CALLBACK, f"trial budget of {self.max_s:g}s reached")


class ReportToTrial(Callback):
    """Reports validation NDCG@10 to the Optuna trial after every epoch; stops a trial the pruner
    prunes (the epoch is closed and the run saved as usual; ``objective`` then marks it pruned)."""

    def __init__(self, trial: Any) -> None:
        self.trial, self.pruned = trial, False

    def on_epoch_end(self, trainer: Any, state: Any, record: dict[str, float]) -> None:
        self.trial.report(record["valid_ndcg@10"], state.epoch)
        if state.stop is None and self.trial.should_prune():
            self.pruned = True
            state.stop = StopReason(Stop.CALLBACK, f"pruned by optuna at epoch {state.epoch}")


def run_tune(config: str | None, space_path: str | Path, trials: int, budget_s: float | None, out: str | Path,
             overrides: dict[str, Any] | None = None, seed: int = 0,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the study in ``out`` until ``trials`` trials are complete or pruned; write
    table.md, results.json, importance.png and best.yaml -> summary (best trial, value, counts)."""
    optuna = check_optuna()
    space = read_space(space_path)
    base = load_tree(config, overrides)
    base["train"]["max_time_s"] = None  # the trial budget stops at epoch ends (EpochBudget): reproducible
    Config.from_tree(base)
    check_space(base, space)
    out = Path(out)
    spec = {"config": base, "space": space, "budget_per_trial_s": budget_s, "seed": seed}
    _check_out(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        write_json(out / "tune.json", spec)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{(out / 'study.db').resolve()}",
                                    direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
        _fail_stale(study, out, log)
        cache: dict[str, Any] = {}
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        while len(study.get_trials(deepcopy=False, states=finished)) < trials:
            study.optimize(lambda t: _objective(t, base, space, out, budget_s, cache, log), n_trials=1)
        return write_summary(study, out)


def _check_out(out: Path, spec: dict[str, Any]) -> None:
    if not out.exists() or not any(c.name != ".lock" for c in out.iterdir()):
        return
    saved = out / "tune.json"
    if not saved.exists():
        raise SeqrecError(f"--out {out} is not empty and holds no seqrec study; use a new directory")
    if json.loads(saved.read_text()) != json.loads(json.dumps(spec)):
        raise SeqrecError(f"{out} holds a study of another config, space, budget or seed; use a new --out "
                          "(or the same options to continue it)")


def _fail_stale(study: Any, out: Path, log: Callable[[str], None]) -> None:
    """Trials left running by a crash: marked failed, their half-written run directories removed."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        shutil.rmtree(trial_dir(out, t.number), ignore_errors=True)
        log(f"trial {t.number} was cut off (a crash?): marked failed, its directory removed")


def trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:03d}"


def _objective(trial: Any, base: dict[str, Any], space: dict[str, dict[str, Any]], out: Path,
               budget_s: float | None, cache: dict[str, Any], log: Callable[[str], None]) -> float:
    import optuna

    from seqrec.api import SeqRec
    from seqrec.rundir import RunDir

    values = suggest(trial, space)
    tree = json.loads(json.dumps(base))
    for key, value in values.items():
        set_dotted(tree, key, value)
    rec = SeqRec(config=Config.from_tree(tree))
    key = json.dumps(rec.cfg_.data.to_dict(), sort_keys=True)
    if key not in cache:  # the data is read once per data section (a space may change data.*)
        cache[key] = rec._load_data(None)
    run = trial_dir(out, trial.number)
    trial.set_user_attr("run", str(run))
    log(f"trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in values.items()))
    report = ReportToTrial(trial)
    rec.fit(cache[key], run_dir=run, log=lambda s: log(f"  [{trial.number}] {s}"),
            callbacks=[report, EpochBudget(budget_s)])
    valid = rec.evaluate(split="valid", metrics_only=True)
    RunDir(run).write_json("results.json", {"valid": valid})
    info = rec.fit_info_
    for k in ("epochs", "best_epoch", "wall_s"):
        trial.set_user_attr(k, info.get(k))
    log(f"trial {trial.number}: valid NDCG@10 {info['best_valid_ndcg@10']:.4f} (epoch {info['best_epoch']})"
        f"{' — pruned' if report.pruned else ''}")
    if report.pruned:
        raise optuna.TrialPruned()
    return float(info["best_valid_ndcg@10"])


def write_summary(study: Any, out: Path) -> dict[str, Any]:
    """table.md + results.json (one record per trial), importance.png, best.yaml -> summary."""
    from optuna.trial import TrialState

    from seqrec.bench.common import write_results

    records = [{"trial": t.number, "state": t.state.name.lower(), "valid_ndcg@10": t.value,
                **{k: v for k, v in t.params.items()}, "epochs": t.user_attrs.get("epochs"),
                "wall_s": t.user_attrs.get("wall_s"), "run": t.user_attrs.get("run")}
               for t in study.get_trials(deepcopy=False) if t.state is not TrialState.RUNNING]
    params = list(dict.fromkeys(k for t in study.trials for k in t.params))
    complete = [t for t in study.trials if t.state is TrialState.COMPLETE]
    summary: dict[str, Any] = {"trials": len(records), "complete": len(complete),
                               "pruned": sum(r["state"] == "pruned" for r in records),
                               "failed": sum(r["state"] == "fail" for r in records)}
    if complete:
        best = study.best_trial
        summary |= {"best_trial": best.number, "best_valid_ndcg@10": best.value, "best_params": best.params,
                    "best_config": str(out / "best.yaml")}
        _write_best(out, best)
    write_results(out, records, ["trial", "state", "valid_ndcg@10", *params, "epochs", "wall_s", "run"],
                  f"seqrec tune: {summary['complete']} complete, {summary['pruned']} pruned",
                  f"seqrec tune --out {out}", importance_figure(study), "importance.png")
    return summary


def _write_best(out: Path, best: Any) -> None:
    """best.yaml: the best trial's resolved config with ``train.epochs`` = the epochs it trained."""
    from seqrec.rundir import RunDir

    tree = RunDir(best.user_attrs["run"]).read_config()
    epochs = best.user_attrs.get("epochs")
    if epochs:
        tree["train"]["epochs"] = int(epochs)
    head = (f"# seqrec tune: trial {best.number}, validation NDCG@10 {best.value:.4f}; train.epochs = the epochs it "
            f"trained.\n# Reproduce: seqrec fit --config {out / 'best.yaml'} --out RUN\n")
    write_text(out / "best.yaml", head + yaml.safe_dump(tree, sort_keys=False))


def importance_figure(study: Any) -> Any:
    """Optuna's parameter importances (fANOVA) as a horizontal bar chart; a note while there are
    fewer than two complete trials or nothing varies."""
    import optuna
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as e:  # optuna refuses under two complete trials
        imp, why = {}, str(e).split(".")[0]
    else:
        why = "no parameter varied across complete trials"
    if not imp or not all(math.isfinite(v) for v in imp.values()):
        ax.text(0.5, 0.5, f"no importances yet:\n{why}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
        return fig
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance for validation NDCG@10 (fANOVA)", title="hyper-parameter importance")
    ax.grid(axis="x", alpha=0.3)
    return fig
