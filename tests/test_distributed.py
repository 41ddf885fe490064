"""Training and evaluation on 2 CPU processes (gloo) through torchrun, as users run them.

Each test starts ``torchrun --standalone`` (a free port of its own) on a tiny SASRec over the
embedded synthetic data, so the three take about a minute on 2 cores:
- sharded evaluation of one trained model on 2 ranks equals single-process evaluation exactly;
- a 2-process run trains (clearly beats popularity) and writes its run directory from rank 0 only;
- SIGKILL of one rank -> torchrun restarts the group (--max-restarts 1) -> the run resumes from its
  checkpoint and ends with exactly the metrics of an uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.run", reason="needs torch.distributed")
import torch.distributed as dist  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TINY = [x for s in ("model.d=32", "train.lr=0.005", "model.n_blocks=1", "model.max_len=20", "train.batch_size=64",
                    "model.dropout=0.1") for x in ("--set", s)]


def _env(tag: str = "") -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    if tag:
        env["SEQREC_TEST_TAG"] = tag
    return env


def _torchrun(*args: str, nproc: int = 2, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={restarts}", *args]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _fit(out: Path, *extra: str, nproc: int = 2) -> dict:
    cmd = ["-m", "seqrec", "fit", "--no-baseline", *TINY, *extra, "--out", str(out)]
    _run(_torchrun(*cmd, nproc=nproc) if nproc > 1 else [sys.executable, *cmd])
    return json.loads((out / "results.json").read_text())


EVAL_SCRIPT = """
import json, sys
import torch.distributed as dist
from seqrec.api import SeqRec
from seqrec.evaluation.sharded import evaluate_sharded
dist.init_process_group("gloo")
rec = SeqRec.load(sys.argv[1]); m, e = rec.model_, rec.cfg_.eval
out = {s: evaluate_sharded(m, getattr(rec.data_, s), max_len=m.max_len, ks=list(e.ks), filter_seen=e.filter_seen,
                           batch_size=int(sys.argv[3])) for s in ("valid", "test")}
json.dump(out, open(f"{sys.argv[2]}.{dist.get_rank()}", "w"))
dist.destroy_process_group()
"""


def test_sharded_evaluation_equals_single_process(tmp_path):
    """2 ranks, each scoring every other length-ordered batch, give bit-identical metrics (==, not
    approx) to one process, on every rank; small batches so each rank gets many batches."""
    from seqrec.api import SeqRec
    from seqrec.evaluation import evaluate

    run = tmp_path / "one"
    _fit(run, "--set", "train.epochs=1", nproc=1)
    script = tmp_path / "ev.py"
    script.write_text(EVAL_SCRIPT)
    _run(_torchrun(str(script), str(run), str(tmp_path / "got"), "64"))
    rec = SeqRec.load(run)
    m, e = rec.model_, rec.cfg_.eval
    for r in (0, 1):
        got = json.loads((tmp_path / f"got.{r}").read_text())
        for split in ("valid", "test"):
            want = evaluate(m, getattr(rec.data_, split), max_len=m.max_len, ks=list(e.ks),
                            filter_seen=e.filter_seen, batch_size=64)
            assert got[split] == want, (r, split)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # between the renames of a checkpoint save
        return 0.0


def _rank_pid(tag: str, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` started with SEQREC_TEST_TAG=tag (our own child)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if env.get("SEQREC_TEST_TAG") == tag and env.get("RANK") == str(rank) and "TORCHELASTIC_RUN_ID" in env:
            return int(d.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank to kill through /proc")
def test_sigkill_of_a_rank_restarts_and_resumes_to_the_same_metrics(tmp_path):
    """Reference: an uninterrupted 2-process run (it must also clearly beat popularity, and rank 0
    alone wrote: no second metrics log, one results.json). Then the same run under --max-restarts 1
    with rank 1 SIGKILLed after a checkpoint inside epoch 2: torchrun restarts both ranks, rank 0
    continues the run directory from its checkpoint (mid-epoch: the epoch order, the step and every
    rank's random streams come back), and the final metrics are equal exactly."""
    args = ["--set", "train.epochs=3", "--set", "train.checkpoint_every_steps=4"]
    ref = _fit(tmp_path / "ref", *args)
    info = json.loads((tmp_path / "ref" / "train_info.json").read_text())
    assert info["world_size"] == 2 and len(info["peak_rss_mb_ranks"]) == 2
    lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and not list((tmp_path / "ref").glob("*.1"))

    out, tag = tmp_path / "killed", uuid.uuid4().hex
    cmd = _torchrun("-m", "seqrec", "fit", "--no-baseline", *TINY, *args, "--out", str(out), restarts=1)
    proc = subprocess.Popen(cmd, env=_env(tag), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        metrics, last = out / "metrics.jsonl", out / "checkpoints" / "last.pt"
        while not metrics.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        # then a checkpoint inside epoch 2 (every 4 steps), so the resume continues mid-epoch
        while metrics.exists() and _mtime(last) <= _mtime(metrics) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _rank_pid(tag, 1)
        assert pid is not None and proc.poll() is None, "the run ended before a rank could be killed"
        os.kill(pid, signal.SIGKILL)
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    assert "resumed from epoch" in log
    got = json.loads((out / "results.json").read_text())
    assert got == ref
    assert ref["test"]["ndcg@10"] > 1.5 * _popularity_ndcg(tmp_path / "ref")


def _popularity_ndcg(run: Path) -> float:
    from seqrec.api import SeqRec

    pop = SeqRec.from_config({**SeqRec.load(run).get_config(), "model": {"name": "pop"}})
    pop.fit(log=lambda s: None)
    return pop.evaluate(split="test", metrics_only=True)["ndcg@10"]


def test_every_batch_is_dealt_and_every_rank_takes_as_many_steps():
    """Round-robin dealing with wrap-around padding: each rank ceil(n / W) steps, every batch trained
    at least once, at most W - 1 twice; 1 rank is the single-process order."""
    from seqrec.training.distributed import batch_index, shard_steps

    for n, world in ((10, 2), (10, 3), (2, 4), (7, 1)):
        steps = shard_steps(n, world)
        dealt = [batch_index(s, r, world, n) for r in range(world) for s in range(steps)]
        assert len(dealt) == steps * world and set(dealt) == set(range(n))
        assert len(dealt) - n < world
    assert [batch_index(s, 0, 1, 7) for s in range(7)] == list(range(7))


def test_launch_drops_devices_and_goes_through_torchrun():
    from seqrec.training.distributed import launch_args

    cmd = launch_args(3, ["fit", "--devices", "3", "--set", "train.epochs=1", "--devices=3", "--out", "r"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "seqrec", "fit",
                       "--set", "train.epochs=1", "--out", "r"]


def test_checkpoint_of_another_world_size_restarts_its_epoch():
    """A mid-epoch checkpoint resumed by the same world size keeps its order and step; by another
    world size its epoch restarts from the first step, with a note."""
    import numpy as np

    from seqrec.config import Config
    from seqrec.data import load_dataset
    from seqrec.registry import LOSSES, MODELS
    from seqrec.training import Trainer
    from seqrec.training.state import TrainState, capture, restore

    cfg = Config.from_tree().with_overrides({"model.d": 16, "model.n_blocks": 1, "model.max_len": 20})
    data = load_dataset("synthetic")
    logs: list[str] = []
    tr = Trainer(cfg, MODELS.build("sasrec", data.n_items, **cfg.model.params), LOSSES.build("ce"), data,
                 log=logs.append)
    tr._setup()
    ck = capture(tr, TrainState(epoch=2, step=3, global_step=40, perm=np.arange(len(tr.windows))))
    same = restore(tr, ck)
    assert same.step == 3 and same.perm is not None and not logs
    ck["state"]["world_size"] = 2
    other = restore(tr, ck)
    assert other.step == 0 and other.perm is None and other.epoch == 2 and other.global_step == 40
    assert "epoch 3 restarts from its first step" in logs[0]


@pytest.mark.slow
def test_two_gpus_train_through_nccl(tmp_path):
    """Where a machine has 2 GPUs: the same command on CUDA (NCCL for the gradients) trains and
    writes one run; CPU-only CI skips it."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    res = _fit(tmp_path / "gpu", "--set", "train.epochs=1", "--device", "cuda")
    info = json.loads((tmp_path / "gpu" / "train_info.json").read_text())
    assert info["world_size"] == 2 and info["cuda_peak_mb"] > 0 and res["test"]["ndcg@10"] > 0
