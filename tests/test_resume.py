"""Resumable training: an interrupted run continues to the same result as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from seqrec import SeqRec
from seqrec.errors import SeqrecError
from seqrec.training import Callback, TrainingInterrupted


def _over(tiny, **extra):
    return {**tiny, "train.epochs": 3, "train.checkpoint_every_steps": 2, **extra}


class SignalAt(Callback):
    """Sends ``sig`` to this process at the end of step ``n``, as ``kill`` would mid-run."""

    def __init__(self, n: int, sig: int = signal.SIGTERM) -> None:
        self.n, self.sig = n, sig

    def on_step_end(self, trainer, state, loss):
        if state.global_step == self.n:
            os.kill(os.getpid(), self.sig)


def with_callbacks(*callbacks):
    """``fit`` keyword arguments that put ``callbacks`` first in the run's Trainer."""
    return {"callbacks": list(callbacks)}


def _interrupt_at(at_step):
    return with_callbacks(SignalAt(at_step))


# SCE with scan_items carries the items of its recent selections from step to step: the checkpoint keeps them
SCE_SCAN = {"loss.name": "sce", "loss.bucket_size_y": 3, "loss.scan_items": 10}


@pytest.mark.parametrize("model,loss", [("sasrec", {}), ("bert4rec", {}), ("sasrec", SCE_SCAN)],
                         ids=["sasrec", "bert4rec", "sasrec-sce-scan"])
def test_interrupt_and_resume_is_bit_identical(tiny_overrides, tmp_path, model, loss):
    over = _over(tiny_overrides, **{"model.name": model}, **loss)
    full = SeqRec(overrides=over).fit(run_dir=tmp_path / "full", log=lambda s: None)
    cut = SeqRec(overrides=over)
    with pytest.raises(TrainingInterrupted):
        cut.fit(run_dir=tmp_path / "cut", log=lambda s: None, **_interrupt_at(5))  # mid-epoch 2
    resumed = SeqRec(overrides=over).fit(run_dir=tmp_path / "cut", resume=True, log=lambda s: None)
    for k, v in full.model_.state_dict().items():
        assert torch.equal(v, resumed.model_.state_dict()[k]), k
    assert resumed.evaluate() == full.evaluate()
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_ndcg@10"] for r in a] == [r["valid_ndcg@10"] for r in b]


def test_damaged_last_checkpoint_falls_back_to_previous(tiny_overrides, tmp_path):
    over = _over(tiny_overrides)
    with pytest.raises(TrainingInterrupted):
        SeqRec(overrides=over).fit(run_dir=tmp_path / "r", log=lambda s: None, **_interrupt_at(6))
    ck = tmp_path / "r" / "checkpoints"
    assert (ck / "prev.pt").exists()
    (ck / "last.pt").write_bytes((ck / "last.pt").read_bytes()[:100])  # truncated
    msgs = []
    SeqRec(overrides=over).fit(run_dir=tmp_path / "r", resume=True, log=msgs.append)
    assert any("damaged" in m and "prev.pt" in m for m in msgs)


def test_checkpoint_for_other_data_is_refused(tiny_overrides, tmp_path):
    import shutil

    over = _over(tiny_overrides)
    other = {**over, "data.options": {"synthetic": {**over["data.options"]["synthetic"], "seed": 5}}}
    with pytest.raises(TrainingInterrupted):
        SeqRec(overrides=over).fit(run_dir=tmp_path / "a", log=lambda s: None, **_interrupt_at(3))
    SeqRec(overrides=other).fit(run_dir=tmp_path / "b", log=lambda s: None)
    shutil.rmtree(tmp_path / "a" / "data")
    shutil.copytree(tmp_path / "b" / "data", tmp_path / "a" / "data")  # a run pointed at other data
    with pytest.raises(SeqrecError, match="other data"):
        SeqRec(overrides=over).fit(run_dir=tmp_path / "a", resume=True, log=lambda s: None)
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.pt", tmp_path / "b" / "model.pt")
    with pytest.raises(SeqrecError, match="other data"):
        SeqRec.load(tmp_path / "b")


def _fit_cmd(out, *extra):
    return [sys.executable, "-m", "seqrec.cli", *_fit_args(out, *extra)]


def _fit_args(out, *extra):
    tiny = ('data.options={"synthetic": {"n_users": 400, "n_items": 60, "n_clusters": 4, "mean_len": 20.0,'
            ' "max_len": 40}}')
    return ["fit", "--out", str(out), "--no-baseline", "--set", tiny,
            "--set", "model.d=16", "--set", "model.max_len=30", "--set", "train.epochs=3",
            "--set", "train.batch_size=16", "--set", "train.checkpoint_every_steps=3",
            "--set", "train.max_time_s=null", "--set", "train.num_threads=1", *extra]


def _start_and_stop(out, sig):
    p = subprocess.Popen(_fit_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out / "checkpoints" / "last.pt").exists() and (out / "metrics.jsonl").exists():
            break
        time.sleep(0.05)
    if p.poll() is not None:
        pytest.fail(f"fit ended before it could be stopped: {p.stderr.read()[-300:]}")
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    subprocess.run(_fit_cmd(tmp_path / "full"), check=True, capture_output=True)
    rc, _ = _start_and_stop(tmp_path / "cut", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (tmp_path / "cut" / "results.json").exists()
    r = subprocess.run([sys.executable, "-m", "seqrec.cli", "fit", "--resume", str(tmp_path / "cut")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a == b


@pytest.mark.slow
def test_sigterm_saves_checkpoint_exits_143_and_says_how_to_resume(tmp_path):
    rc, err = _start_and_stop(tmp_path / "t", signal.SIGTERM)
    assert rc == 143
    assert f"seqrec fit --resume {tmp_path / 't'}" in err
    assert (tmp_path / "t" / "checkpoints" / "last.pt").exists()
    assert "Traceback" not in err
    r = subprocess.run([sys.executable, "-m", "seqrec.cli", "fit", "--resume", str(tmp_path / "t")],
                       capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr[-500:]
    assert (tmp_path / "t" / "results.json").exists()


def test_resume_with_a_larger_budget_extends_a_finished_run(tmp_path, capsys):
    from seqrec.cli import main

    run = tmp_path / "r"
    # in process: four interpreter start-ups cost more than the tiny runs themselves
    assert main(_fit_args(run, "--set", "train.epochs=1")) == 0
    capsys.readouterr()
    assert main(["fit", "--resume", str(run)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["fit", "--resume", str(run), "--set", "train.epochs=2"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["fit", "--resume", str(run), "--set", "train.seed=1"]) == 2
    assert "only --device" in capsys.readouterr().err
