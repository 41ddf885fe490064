"""The trainer's callback interface: hook order, stopping through ``state.stop``, the built-ins."""

import signal
from types import SimpleNamespace

import pytest
import torch
from test_resume import SignalAt, with_callbacks

from seqrec import SeqRec
from seqrec.training import Callback, EarlyStopping, Stop, StopReason, TimeBudget, TrainingInterrupted, TrainState
from seqrec.training.callbacks import BestWeights

QUIET = {"log": lambda s: None}


class Recorder(Callback):
    """Records every hook call as (hook, epoch, step)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def _rec(self, name, state):
        self.calls.append((name, state.epoch, state.step))

    def on_fit_start(self, trainer, state):
        self.n_batches = trainer.n_batches
        self._rec("fit_start", state)

    def on_epoch_start(self, trainer, state):
        self._rec("epoch_start", state)

    def on_step_end(self, trainer, state, loss):
        assert isinstance(loss, float)
        self._rec("step_end", state)

    def on_epoch_end(self, trainer, state, record):
        assert record is state.history[-1] and record["epoch"] == state.epoch
        self._rec("epoch_end", state)

    def on_fit_end(self, trainer, state):
        self._rec("fit_end", state)

    def teardown(self, trainer, state):
        self._rec("teardown", state)


def test_hooks_are_called_in_documented_order(tiny_overrides):
    rec = Recorder()
    SeqRec(overrides=tiny_overrides).fit(**with_callbacks(rec), **QUIET)
    nb = rec.n_batches
    expected = [("fit_start", 0, 0)]
    for e in range(2):
        expected += [("epoch_start", e, 0)] + [("step_end", e, s) for s in range(1, nb + 1)] + [("epoch_end", e + 1, 0)]
    assert rec.calls == expected + [("fit_end", 2, 0), ("teardown", 2, 0)]


class StopAt(Callback):
    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, trainer, state, loss):
        if state.global_step == self.n:
            state.stop = StopReason(Stop.CALLBACK, "target reached")


def test_a_user_callback_stops_training_through_the_state(tiny_overrides, tmp_path):
    logs: list[str] = []
    rec = SeqRec(overrides=tiny_overrides).fit(run_dir=tmp_path / "r", log=logs.append, **with_callbacks(StopAt(2)))
    assert rec.fit_info_["epochs"] == 1 and rec.fit_info_["stopped"] == "target reached"
    assert "target reached" in logs
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1  # the epoch was closed as usual
    # the reason is saved: a resumed run stays stopped unless the callback that set it clears it
    again = SeqRec(overrides=tiny_overrides).fit(run_dir=tmp_path / "r", resume=True, **QUIET)
    assert again.fit_info_["epochs"] == 1 and again.fit_info_["stopped"] == "target reached"


def test_an_exception_in_a_callback_still_tears_down(tiny_overrides):
    class Boom(Recorder):
        def on_step_end(self, trainer, state, loss):
            raise RuntimeError("boom")

    rec = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        SeqRec(overrides=tiny_overrides).fit(**with_callbacks(rec), **QUIET)
    assert [c[0] for c in rec.calls] == ["fit_start", "epoch_start", "teardown"]


def test_time_budget_stops_and_a_larger_budget_resumes(tiny_overrides, tmp_path):
    over = {**tiny_overrides, "train.max_time_s": 1e-6}
    cut = SeqRec(overrides=over).fit(run_dir=tmp_path / "r", **QUIET)
    assert cut.fit_info_["epochs"] == 1 and cut.fit_info_["stopped"].startswith("time budget of 1e-06s")
    assert cut.fit_info_["steps"] == 1  # the partial epoch counts as one; its steps say how much of it ran
    same = SeqRec(overrides=over).fit(run_dir=tmp_path / "r", resume=True, **QUIET)
    assert same.fit_info_["epochs"] == 1  # the budget is still spent
    more = SeqRec(overrides={**over, "train.max_time_s": None}).fit(run_dir=tmp_path / "r", resume=True, **QUIET)
    assert more.fit_info_["epochs"] == 2 and more.fit_info_["stopped"] == ""
    assert more.fit_info_["steps"] == 1 + more.fit_info_["steps_per_epoch"]


def test_time_budget_reconciles_only_its_own_reason():
    state = TrainState(elapsed=10.0, stop=StopReason(Stop.TIME_BUDGET, "time budget of 5s reached"))
    TimeBudget(5).on_fit_start(None, state)
    assert state.stop is not None
    TimeBudget(20).on_fit_start(None, state)
    assert state.stop is None
    state.stop = StopReason(Stop.EARLY_STOP, "x")
    TimeBudget(None).on_fit_start(None, state)
    assert state.stop.kind is Stop.EARLY_STOP
    TimeBudget(20).on_step_end(None, state, 1.0)
    assert state.stop.kind is Stop.EARLY_STOP  # a reason already set is kept
    state.stop, state.elapsed = None, 21.0
    TimeBudget(20).on_step_end(None, state, 1.0)
    assert state.stop == StopReason(Stop.TIME_BUDGET, "time budget of 20s reached")


@pytest.mark.parametrize("where", ["memory", "file"])
def test_early_stopping_keeps_and_restores_the_best_weights(tmp_path, where):
    model = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(model=model, fingerprint="f", data=SimpleNamespace(n_items=3))
    es = EarlyStopping(2, BestWeights(tmp_path / "best.pt" if where == "file" else None))
    state, weights = TrainState(), []
    for score in (0.1, 0.3, 0.2, 0.25):
        state.epoch += 1
        with torch.no_grad():
            model.weight.fill_(state.epoch)
        weights.append(model.weight.clone())
        es.on_epoch_end(trainer, state, {"valid_ndcg@10": score})
    assert (state.best, state.best_epoch, state.bad_epochs) == (0.3, 2, 2)
    assert state.stop == StopReason(Stop.EARLY_STOP, "early stop: no validation NDCG@10 gain for 2 epochs")
    es.on_fit_end(trainer, state)
    assert torch.equal(model.weight, weights[1])
    assert (tmp_path / "best.pt").exists() == (where == "file")
    EarlyStopping(2, es.best).on_fit_start(trainer, state)
    assert state.stop is not None
    EarlyStopping(3, es.best).on_fit_start(trainer, state)  # resumed with more patience
    assert state.stop is None


def test_early_stop_then_more_patience_continues_the_run(tiny_overrides, tmp_path):
    over = {**tiny_overrides, "train.epochs": 6, "train.patience": 1, "train.lr": 0.5}
    first = SeqRec(overrides=over).fit(run_dir=tmp_path / "r", **QUIET)
    info = first.fit_info_
    assert info["stopped"].startswith("early stop") and info["epochs"] < 6
    more = SeqRec(overrides={**over, "train.patience": 10}).fit(run_dir=tmp_path / "r", resume=True, **QUIET)
    assert more.fit_info_["epochs"] == 6 and more.fit_info_["stopped"] == ""


def test_signal_stop_saves_raises_and_restores_the_handlers(tiny_overrides, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as e:
        SeqRec(overrides=tiny_overrides).fit(run_dir=tmp_path / "r", **with_callbacks(SignalAt(2, signal.SIGINT)),
                                             **QUIET)
    assert e.value.signum == signal.SIGINT and f"--resume {tmp_path / 'r'}" in str(e.value)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert (tmp_path / "r" / "checkpoints" / "last.pt").exists()
