"""`seqrec tune`: Optuna trials as run directories, pruning, a resumable study, a reproducible best config."""

import json

import pytest
import yaml
from conftest import FAST_ARGS as FAST

from seqrec.cli import main
from seqrec.errors import ConfigError
from seqrec.training.state import Stop, TrainState
from seqrec.tune import EpochBudget, ReportToTrial, read_space

optuna = pytest.importorskip("optuna", reason="the tune extra (optuna) is not installed")




@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two tiny trials, then the same command asking for three: the study continues."""
    root = tmp_path_factory.mktemp("tune")
    space = root / "space.yaml"
    space.write_text("train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\nmodel.dropout: {choices: [0.0, 0.3]}\n")
    out = root / "study"
    args = ["tune", "--space", str(space), "--out", str(out), "--quiet", *FAST]
    assert main([*args, "--trials", "2"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert main([*args, "--trials", "3"]) == 0
    return out, first, args


def test_trials_are_run_directories_and_the_study_resumes(study):
    out, first, _ = study
    records = json.loads((out / "results.json").read_text())
    assert [r["trial"] for r in first] == [0, 1]
    assert [r["trial"] for r in records] == [0, 1, 2]
    assert records[:2] == first  # the first two trials were kept, not re-run
    for r in records:
        run = out / "trials" / f"{r['trial']:03d}"
        assert {"config.yaml", "model.pt", "metrics.jsonl", "curves.png", "results.json"} <= {
            p.name for p in run.iterdir()}
        assert r["state"] in ("complete", "pruned")
    assert (out / "importance.png").read_bytes()[:4] == b"\x89PNG"
    assert "| trial | state | valid_ndcg@10 |" in (out / "table.md").read_text()


def test_best_config_reproduces_the_trial(study, tmp_path):
    out, _, _ = study
    records = [r for r in json.loads((out / "results.json").read_text()) if r["state"] == "complete"]
    best = max(records, key=lambda r: r["valid_ndcg@10"])
    assert yaml.safe_load((out / "best.yaml").read_text())["train"]["lr"] == pytest.approx(best["train.lr"])
    run = tmp_path / "again"
    assert main(["fit", "--config", str(out / "best.yaml"), "--no-baseline", "--out", str(run)]) == 0
    again = json.loads((run / "results.json").read_text())["valid"]["ndcg@10"]
    trial = json.loads((out / "trials" / f"{best['trial']:03d}" / "results.json").read_text())["valid"]["ndcg@10"]
    assert again == pytest.approx(trial, abs=1e-9)
    assert best["valid_ndcg@10"] == pytest.approx(trial, abs=1e-9)


def test_another_space_in_the_same_directory_is_refused(study, tmp_path, capsys):
    out, _, args = study
    other = tmp_path / "other.yaml"
    other.write_text("train.lr: {low: 1.0e-4, high: 1.0e-3}\n")
    assert main([*[a if a != args[2] else str(other) for a in args], "--trials", "4"]) == 2
    assert "another config, space" in capsys.readouterr().err


def test_a_trial_cut_off_by_a_crash_is_failed_and_removed(study):
    out, _, args = study
    storage = f"sqlite:///{out / 'study.db'}"
    s = optuna.load_study(study_name="seqrec", storage=storage)
    stale = s.ask()  # left RUNNING, as by a killed process
    (out / "trials" / f"{stale.number:03d}").mkdir(parents=True)
    assert main([*args, "--trials", "3"]) == 0  # nothing more to run, but the stale trial is cleaned up
    s = optuna.load_study(study_name="seqrec", storage=storage)
    assert s.trials[stale.number].state is optuna.trial.TrialState.FAIL
    assert not (out / "trials" / f"{stale.number:03d}").exists()


@pytest.mark.parametrize("text, message", [
    ("train.lr: {low: 1, high: 0.1}", "low < high"),
    ("train.lr: {low: 0, high: 1, log: true}", "log scale"),
    ("train.lr: {lo: 1}", "unknown field 'lo'"),
    ("model.d: {choices: []}", "non-empty list"),
])
def test_malformed_space_is_one_line(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_space(p)


def test_space_keys_and_values_are_validated_before_anything_is_written(tmp_path, capsys):
    space = tmp_path / "s.yaml"
    space.write_text("train.lrr: {low: 0.001, high: 0.01}\n")
    out = tmp_path / "study"
    assert main(["tune", "--space", str(space), "--out", str(out), "--trials", "1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    space.write_text("train.batch_size: {choices: [0, 32]}\n")
    assert main(["tune", "--space", str(space), "--out", str(out), "--trials", "1"]) == 2
    assert "train.batch_size=0" in capsys.readouterr().err
    assert not out.exists()


class _Trial:
    def __init__(self, prune):
        self.reports, self.prune = [], prune

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune


@pytest.mark.parametrize("prune", [False, True])
def test_report_to_trial_prunes_by_stopping_the_epoch(prune):
    state, cb = TrainState(epoch=3), ReportToTrial(_Trial(prune))
    cb.on_epoch_end(None, state, {"valid_ndcg@10": 0.25})
    assert cb.trial.reports == [(3, 0.25)]
    assert cb.pruned is prune and (state.stop is not None) is prune
    if prune:
        assert state.stop.kind is Stop.CALLBACK and "pruned" in state.stop.message


def test_epoch_budget_stops_before_an_epoch_would_overrun():
    state = TrainState(epoch=2, elapsed=8.0)  # 4 s per epoch so far
    EpochBudget(13.0).on_epoch_end(None, state, {})
    assert state.stop is None  # 8 + 4 <= 13: one more epoch fits
    state = TrainState(epoch=2, elapsed=10.0)
    EpochBudget(13.0).on_epoch_end(None, state, {})
    assert state.stop is not None and "budget of 13s" in state.stop.message
