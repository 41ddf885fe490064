"""Experiment trackers (``train.loggers``): csv, tensorboard, mlflow, wandb, as one training callback.

What each tracker receives: the resolved config as parameters (dotted keys) when training starts;
per step ``train/loss`` and ``train/tokens_per_s`` (target positions per second of that step); per
epoch the metrics.jsonl record (``valid/ndcg@10``, ``epoch/loss``, ...); at the end the summary
(best epoch, ``best/valid_ndcg@10``), with ``seqrec fit`` the final ``final_valid/*`` and ``test/*``
metrics and the popularity baseline's (``pop_test/*``), and the run directory's small files as
artefacts (config.yaml, metrics.jsonl, results.json, train_info.json, baseline_pop.json, curves.png;
not the checkpoints or model.pt).

Where they write (offline by default, everything inside the run directory):

=============  ===========================  =============================================
logger         default                      ``train.tracking_uri`` = DIR (a plain path)
=============  ===========================  =============================================
csv            RUN/metrics.csv, results.csv  (always in the run directory)
tensorboard    RUN/tensorboard/             DIR/tensorboard/<run name>/
mlflow         RUN/mlruns (file store)      DIR/mlruns; a URI (``http://``, ``sqlite:///``,
                                            ``file:``) is given to MLflow as it is
wandb          RUN/wandb (offline)          DIR/wandb; ``WANDB_MODE=online`` syncs
=============  ===========================  =============================================

MLflow refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set; seqrec sets it (when
unset) for the file stores it picks. MLflow metric names cannot hold ``@``: there ``ndcg@10`` is
``ndcg_at_10``. Each tracker but csv is an extra (``pip install 'seqrec[mlflow]'``); a missing one
is a ConfigError before anything is created (``check_loggers``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.errors import ConfigError
from seqrec.io import write_text
from seqrec.rundir import RunDir
from seqrec.training.callbacks import Callback
from seqrec.training.state import TrainState

if TYPE_CHECKING:
    from seqrec.training.trainer import Trainer

# logger -> (module it needs, the seqrec extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
ARTEFACTS = ("config.yaml", "metrics.jsonl", "metrics.csv", "results.json", "results.csv", "train_info.json",
             "baseline_pop.json", "curves.png")


def check_loggers(names: list[str] | tuple[str, ...]) -> None:
    """A one-line ConfigError naming the extra to install when a logger's package is missing."""
    for name in names:
        module, extra = EXTRAS.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.loggers: {name} needs the {module} package: pip install 'seqrec[{extra}]'")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.001}} -> {"train.lr": 0.001} (lists and None kept as values)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def final_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``seqrec fit``'s results {"valid", "test", "pop"} as tracker keys: ``final_valid/ndcg@10`` (apart
    from the per-epoch ``valid/`` series), ``test/ndcg@10``, ``pop_test/ndcg@10``."""
    prefix = {"valid": "final_valid", "pop": "pop_test"}
    return {f"{prefix.get(s, s)}/{k}": float(v) for s, m in results.items() for k, v in m.items()}


def _has_scheme(uri: str) -> bool:
    return "://" in uri or uri.startswith(("file:", "databricks"))


class _Tracker:
    """One tracker's writes; every method may be called only between ``__init__`` and ``close``."""

    def params(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def history(self, records: list[dict[str, Any]]) -> None:
        pass

    def results(self, results: dict[str, dict[str, float]]) -> None:
        pass

    def artefacts(self, run: Path, files: list[Path]) -> None:
        pass

    def close(self, ok: bool) -> None:
        pass


class CsvTracker(_Tracker):
    """RUN/metrics.csv (the metrics.jsonl records, one row per epoch) and RUN/results.csv."""

    def __init__(self, run: Path, name: str, where: str | None, resumed: bool = False) -> None:
        self.run = run

    def history(self, records: list[dict[str, Any]]) -> None:
        write_text(self.run / "metrics.csv", _csv(records))

    def results(self, results: dict[str, dict[str, float]]) -> None:
        write_text(self.run / "results.csv", _csv([{"split": s, **m} for s, m in results.items()]))


def _csv(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))  # first-seen order over every row
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class TensorBoardTracker(_Tracker):
    """Event files through ``torch.utils.tensorboard.SummaryWriter`` (needs the tensorboard package)."""

    def __init__(self, run: Path, name: str, where: str | None, resumed: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        root = run / "tensorboard" if where is None or _has_scheme(where) else Path(where) / "tensorboard" / name
        self.writer = SummaryWriter(log_dir=str(root))
        self.last_step = 0

    def params(self, params: dict[str, Any]) -> None:
        text = "\n".join(f"| {k} | {v!r} |" for k, v in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + text)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.last_step = max(self.last_step, step)

    def results(self, results: dict[str, dict[str, float]]) -> None:
        self.metrics(final_metrics(results), self.last_step)

    def close(self, ok: bool) -> None:
        self.writer.close()


class MlflowTracker(_Tracker):
    """One MLflow run (experiment ``seqrec``) through ``MlflowClient``: no global active run is touched."""

    def __init__(self, run: Path, name: str, where: str | None, resumed: bool = False) -> None:
        if where is None:
            uri = (run / "mlruns").resolve().as_uri()
        else:
            uri = where if _has_scheme(where) else (Path(where) / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store is opt-in since MLflow 3
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("seqrec")
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("seqrec")
        tag, self.known = str(run.resolve()), {}
        found = self.client.search_runs([exp_id], f"tags.`seqrec.run_dir` = '{tag}'", max_results=1,
                                        order_by=["attributes.start_time DESC"]) if resumed and "'" not in tag else []
        if found:  # a resumed training run goes on in its MLflow run
            self.run_id, self.known = found[0].info.run_id, dict(found[0].data.params)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=name, tags={"seqrec.run_dir": tag}).info.run_id

    @staticmethod
    def _key(k: str) -> str:
        return k.replace("@", "_at_")  # MLflow names allow letters, digits, _ - . / and spaces

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        values = {k: str(v)[:6000] for k, v in params.items()}
        items = [Param(k, v) for k, v in values.items() if k not in self.known]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        changed = [f"{k}={v}" for k, v in values.items() if self.known.get(k, v) != v]
        if changed:  # MLflow params are write-once: what a resume changed becomes a tag
            self.client.set_tag(self.run_id, "seqrec.resumed_with", ", ".join(changed)[:5000])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(self._key(k), float(v), now, step)
                                                    for k, v in values.items()])

    def results(self, results: dict[str, dict[str, float]]) -> None:
        self.metrics(final_metrics(results), 0)

    def artefacts(self, run: Path, files: list[Path]) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbTracker(_Tracker):
    """A W&B run, offline unless ``WANDB_MODE`` says otherwise (``wandb sync DIR`` uploads it later)."""

    def __init__(self, run: Path, name: str, where: str | None, resumed: bool = False) -> None:
        import wandb

        root = run if where is None or _has_scheme(where) else Path(where)
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="seqrec", name=name, dir=str(root),
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")
        self.step = 0

    def params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.step = max(self.step, step)  # W&B steps must not go back
        self.run.log(dict(values), step=self.step)

    def results(self, results: dict[str, dict[str, float]]) -> None:
        self.run.summary.update(final_metrics(results))

    def artefacts(self, run: Path, files: list[Path]) -> None:
        for f in files:
            self.run.save(str(f), base_path=str(run), policy="now")

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


TRACKERS: dict[str, type[_Tracker]] = {"csv": CsvTracker, "tensorboard": TensorBoardTracker,
                                       "mlflow": MlflowTracker, "wandb": WandbTracker}


class Trackers(Callback):
    """The callback that feeds every tracker of ``train.loggers`` (see the module docstring).

    Built by ``default_callbacks`` for every run with loggers; ``seqrec fit`` passes its own with
    ``owned=True`` (a user callback, so it runs first and the built-in one stands down): that one stays
    open after training so that ``finish(results)`` adds the final metrics and artefacts, then closes.
    A failed training closes every tracker as failed.
    """

    def __init__(self, t: Any, run: RunDir | None, owned: bool = False) -> None:
        self.names, self.where, self.owned = list(t.loggers), t.tracking_uri, owned
        check_loggers(self.names)
        if run is None and self.names and t.tracking_uri is None:
            raise ConfigError("train.loggers need a run directory (seqrec fit --out, SeqRec.fit(run_dir=...)) "
                              "or train.tracking_uri")
        if run is None and t.tracking_uri and _has_scheme(t.tracking_uri) and set(self.names) - {"mlflow"}:
            raise ConfigError(f"train.tracking_uri {t.tracking_uri!r} is an MLflow URI: without a run directory "
                              "the other loggers need a directory (train.tracking_uri=DIR)")
        self.run = run
        self.open: list[_Tracker] = []
        self.active, self.ended = False, False

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        if any(isinstance(cb, Trackers) and cb.active for cb in trainer.callbacks):
            return  # seqrec fit's own instance logs this run
        root = self.run.path if self.run is not None else Path(self.where or ".")
        name, resumed = root.resolve().name, state.global_step > 0 or state.epoch > 0
        try:
            for n in self.names:
                self.open.append(TRACKERS[n](root, name, self.where, resumed))
        except BaseException:
            self._close(False)
            raise
        self.active = True
        self._each("params", flatten(trainer.cfg.to_dict()))
        self.tick = time.monotonic()

    def on_epoch_start(self, trainer: Trainer, state: TrainState) -> None:
        self.tick = time.monotonic()

    def on_step_end(self, trainer: Trainer, state: TrainState, loss: float | None) -> None:
        now = time.monotonic()
        if self.active and loss is not None:
            dt = max(now - self.tick, 1e-9)
            self._each("metrics", {"train/loss": loss, "train/tokens_per_s": getattr(trainer, "last_tokens", 0) / dt},
                       state.global_step)
        self.tick = now

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        if not self.active:
            return
        values = {(f"valid/{k[6:]}" if k.startswith("valid_") else f"epoch/{k}"): float(v)
                  for k, v in record.items() if k != "epoch" and isinstance(v, int | float)}
        self._each("metrics", values, state.epoch)
        self._each("history", [dict(h) for h in state.history])
        self.tick = time.monotonic()

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        if self.active:
            self._each("metrics", {"best/valid_ndcg@10": state.best, "best/epoch": state.best_epoch}, state.epoch)
        self.ended = True

    def teardown(self, trainer: Trainer, state: TrainState) -> None:
        if not (self.owned and self.ended):
            self._close(self.ended)

    def finish(self, results: dict[str, dict[str, float]]) -> None:
        """Final metrics ({"valid": {...}, "test": {...}, "pop": {...}}), the run's artefacts, close."""
        try:
            self._each("results", results)
        finally:
            self._close(True)

    def abort(self) -> None:
        """Close every tracker as failed (``seqrec fit`` failed after training)."""
        self._close(False)

    def _each(self, method: str, *args: Any) -> None:
        for tr in self.open:
            getattr(tr, method)(*args)

    def _close(self, ok: bool) -> None:
        first: BaseException | None = None
        if self.run is not None and ok:
            files = [self.run.path / f for f in ARTEFACTS if (self.run.path / f).is_file()]
            try:
                self._each("artefacts", self.run.path, files)
            except BaseException as e:  # the trackers are closed all the same
                first = e
        for tr in self.open:
            try:
                tr.close(ok)
            except BaseException as e:  # the others still close; the first error is raised
                first = first or e
        self.open, self.active = [], False
        if first is not None:
            raise first
