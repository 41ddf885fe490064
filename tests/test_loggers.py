"""Experiment trackers (train.loggers): what each writes is read back with the tracker's own reader."""

import csv
import importlib.util
import json
import os

import pytest

from seqrec.api import SeqRec
from seqrec.cli import main
from seqrec.errors import ConfigError

INSTALLED = [n for n in ("tensorboard", "mlflow") if importlib.util.find_spec(n) is not None]
EPOCHS = 2


def _sets(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--set", f"{k}={json.dumps(v) if v is not None else 'null'}"]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny `seqrec fit` with csv + every installed tracker (module scope: trained once)."""
    from conftest import TINY

    out = tmp_path_factory.mktemp("loggers") / "run"
    ov = {"data.options": TINY, "model.d": 16, "model.max_len": 20, "model.n_blocks": 1, "train.epochs": EPOCHS,
          "train.batch_size": 32, "train.num_threads": 1, "train.loggers": ["csv", *INSTALLED]}
    assert main(["fit", *_sets(ov), "--out", str(out)]) == 0
    return out


def _history(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_csv_matches_metrics_jsonl(run):
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    history = _history(run)
    assert len(rows) == len(history) == EPOCHS
    for row, rec in zip(rows, history, strict=True):
        assert set(row) == set(rec)
        assert all(float(row[k]) == pytest.approx(v, rel=1e-12) for k, v in rec.items())
    results = {r["split"]: r for r in csv.DictReader((run / "results.csv").open())}
    saved = json.loads((run / "results.json").read_text())
    assert float(results["test"]["ndcg@10"]) == pytest.approx(saved["test"]["ndcg@10"])


def test_tensorboard_holds_epoch_and_final_metrics(run):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    history = _history(run)
    ndcg = acc.Scalars("valid/ndcg@10")
    assert [e.step for e in ndcg] == [h["epoch"] for h in history]
    assert [e.value for e in ndcg] == pytest.approx([h["valid_ndcg@10"] for h in history], rel=1e-6)
    assert len(acc.Scalars("train/loss")) >= EPOCHS  # one per step
    assert all(e.value > 0 for e in acc.Scalars("train/tokens_per_s"))
    test = json.loads((run / "results.json").read_text())["test"]
    assert acc.Scalars("test/ndcg@10")[-1].value == pytest.approx(test["ndcg@10"], rel=1e-6)


def test_mlflow_file_store_holds_params_metrics_results_artefacts(run):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    exp = client.get_experiment_by_name("seqrec")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED" and r.info.run_name == "run"
    assert r.data.params["train.epochs"] == str(EPOCHS) and r.data.params["model.d"] == "16"
    hist = client.get_metric_history(r.info.run_id, "valid/ndcg_at_10")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
        [h["valid_ndcg@10"] for h in _history(run)])
    saved = json.loads((run / "results.json").read_text())
    assert r.data.metrics["test/ndcg_at_10"] == pytest.approx(saved["test"]["ndcg@10"])
    assert r.data.metrics["final_valid/ndcg_at_10"] == pytest.approx(saved["valid"]["ndcg@10"])
    assert "pop_test/ndcg_at_10" in r.data.metrics
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "results.json", "curves.png"} <= names


def test_missing_package_is_one_line_before_anything_is_created(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    assert main(["fit", "--set", "train.loggers=[tensorboard]", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'seqrec[tensorboard]'" in err
    assert not out.exists()


def test_bad_logger_name_gets_did_you_mean(tmp_path, capsys):
    assert main(["fit", "--set", "train.loggers=[tensorbord]", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err


def test_loggers_need_a_place_to_write(tiny_overrides):
    rec = SeqRec(overrides={**tiny_overrides, "train.loggers": ["csv"]})
    with pytest.raises(ConfigError, match="run directory"):
        rec.fit()


def test_tracking_uri_directory_and_api_fit(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    track = tmp_path / "tracking"
    SeqRec(overrides={**tiny_overrides, "train.epochs": 1, "train.loggers": ["tensorboard"],
                      "train.tracking_uri": str(track)}).fit(run_dir=tmp_path / "r1", log=lambda s: None)
    assert list((track / "tensorboard" / "r1").glob("events.out.tfevents.*"))
    assert not (tmp_path / "r1" / "tensorboard").exists()


def test_wandb_offline_run_inside_the_run_dir(tmp_path, tiny_overrides, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "r"
    SeqRec(overrides={**tiny_overrides, "train.epochs": 1, "train.loggers": ["wandb"]}).fit(run_dir=run,
                                                                                            log=lambda s: None)
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert (offline / "files" / "config.yaml").exists()  # the run's artefacts
    assert next(offline.glob("run-*.wandb")).stat().st_size > 0


def test_a_resumed_run_goes_on_in_its_mlflow_run(tmp_path, tiny_overrides):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "r"
    ov = {**tiny_overrides, "train.epochs": 1, "train.loggers": ["mlflow"]}
    assert main(["fit", *_sets(ov), "--no-baseline", "--out", str(run)]) == 0
    assert main(["fit", "--resume", str(run), "--set", "train.epochs=2", "--no-baseline"]) == 0
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (r,) = client.search_runs([client.get_experiment_by_name("seqrec").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "valid/ndcg_at_10")) == [1, 2]
    assert r.data.params["train.epochs"] == "1" and r.data.tags["seqrec.resumed_with"] == "train.epochs=2"
    assert r.info.status == "FINISHED"
