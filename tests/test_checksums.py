"""Weights that cannot silently rot: every checkpoint (last.pt, prev.pt, best.pt) and model.pt
carries a sha256 over all its bytes; a damaged file is refused with one line, a damaged last.pt
falls back to prev.pt, and files written before checksums still load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqrec import SeqRec
from seqrec.errors import SeqrecError
from seqrec.rundir import RunDir
from seqrec.training import Callback
from seqrec.training.checkpoint import MAGIC, load_checkpoint, save_checkpoint
from seqrec.training.state import load_resume

REGION = 1024


def _state(seed: int = 0) -> dict:
    """A tiny checkpoint of last.pt's shape: a model's state dict, optimiser moments, meta, state."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(41, 16), torch.nn.Linear(16, 16))
    opt = torch.optim.Adam(model.parameters())
    model(torch.arange(5)).sum().backward()
    opt.step()
    return {"meta": {"version": "test", "fingerprint": "fp", "n_items": 40, "model": "Sequential"},
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "state": {"epoch": seed, "stop": "null"}}


def _flip(path: Path, offset: int, n: int = 16) -> None:
    """XOR 0x5A onto ``n`` bytes of ``path`` from ``offset`` (in place, as a bad disk would)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = bytearray(f.read(n))
        f.seek(offset)
        f.write(bytes(x ^ 0x5A for x in b))


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(SeqrecError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "damaged" in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_round_trip_and_trailer(tmp_path):
    path = tmp_path / "last.pt"
    state = _state()
    save_checkpoint(state, path)
    data = path.read_bytes()
    assert data.startswith(b"PK") and data[-40:-32] == MAGIC
    back = load_checkpoint(path)
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v), k
    assert back["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert back["meta"] == state["meta"]


def test_a_flip_in_any_1kib_region_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(_state(), good)
    data = good.read_bytes()
    assert len(data) > 8 * REGION  # zip headers, padding, the pickle and tensor data are all covered
    bad = tmp_path / "last.pt"
    refused = 0
    for offset in [*range(0, len(data), REGION), len(data) - 40, len(data) - 32, len(data) - 16]:
        bad.write_bytes(data)
        _flip(bad, offset)
        assert bad.read_bytes() != data
        _refused(bad)
        refused += 1
    assert refused == len(data) // REGION + 1 + 3


def test_checksum_mismatch_message(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(_state(), path)
    _flip(path, path.stat().st_size // 2)
    msg = _refused(path, "model.pt is damaged: checksum mismatch", "retrain or restore it")
    assert len(msg) < 300


@pytest.mark.parametrize("keep", [0, 1, 39, 40, 41, 200, -41, -39, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:keep % len(data)] if keep else b"")
    _refused(path)


def test_cut_exactly_before_the_trailer_still_loads_intact_weights(tmp_path):
    """Only the checksum is lost: what remains is a whole torch file, loaded as an older one."""
    path = tmp_path / "last.pt"
    state = _state()
    save_checkpoint(state, path)
    path.write_bytes(path.read_bytes()[:-40])
    assert torch.equal(load_checkpoint(path)["model"]["0.weight"], state["model"]["0.weight"])


def test_file_written_before_checksums_still_loads(tmp_path):
    path = tmp_path / "model.pt"
    state = _state()
    torch.save(state, path)  # what seqrec wrote before this change
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["1.weight"], state["model"]["1.weight"])
    _flip(path, path.stat().st_size - 10)  # its zip end record: not a torch file any more
    _refused(path)


def test_new_files_stay_readable_by_a_plain_torch_load(tmp_path):
    """Torch ignores the trailer: a run written now still opens with an older seqrec."""
    path = tmp_path / "model.pt"
    state = _state()
    save_checkpoint(state, path)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["0.weight"], state["model"]["0.weight"])


def test_load_resume_falls_back_to_prev_when_last_is_damaged(tmp_path):
    run = RunDir(tmp_path)
    save_checkpoint(_state(1), run.last, keep_previous=True)
    save_checkpoint(_state(2), run.last, keep_previous=True)
    assert run.prev.exists()
    logs: list[str] = []
    assert load_resume(run, "fp", 40, logs.append)["state"]["epoch"] == 2 and not logs
    _flip(run.last, run.last.stat().st_size // 2)
    ck = load_resume(run, "fp", 40, logs.append)
    assert ck["state"]["epoch"] == 1  # prev.pt's
    assert len(logs) == 1 and "checksum mismatch" in logs[0] and "falling back" in logs[0] \
        and str(run.prev) in logs[0] and "\n" not in logs[0]
    _flip(run.prev, 100)
    with pytest.raises(SeqrecError, match="prev.pt is damaged"):
        load_resume(run, "fp", 40, logs.append)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    over = {"data.options": {"synthetic": {"n_users": 120, "n_items": 40, "n_clusters": 4, "mean_len": 12.0,
                                           "max_len": 30}},
            "model.d": 16, "model.max_len": 20, "model.n_blocks": 1, "train.epochs": 2, "train.batch_size": 32,
            "train.max_time_s": None, "train.num_threads": 1}
    path = tmp_path_factory.mktemp("ck") / "run"
    SeqRec(overrides=over).fit(run_dir=path, log=lambda s: None)
    return path, over


def test_every_file_of_a_run_carries_a_checksum(run):
    path, _ = run
    for name in ("model.pt", "checkpoints/last.pt", "checkpoints/prev.pt", "checkpoints/best.pt"):
        data = (path / name).read_bytes()
        assert data[-40:-32] == MAGIC, name
        load_checkpoint(path / name)


def test_damaged_model_pt_is_refused_by_load_and_cli(run, tmp_path):
    import shutil

    path = shutil.copytree(run[0], tmp_path / "run")
    model = path / "model.pt"
    mid = model.stat().st_size // 2
    _flip(model, mid - 1000, 2000)
    with pytest.raises(SeqrecError, match="model.pt is damaged: checksum mismatch"):
        SeqRec.load(path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "seqrec.cli", "evaluate", str(path), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "model.pt is damaged" in lines[0], p.stderr


class DamageBest(Callback):
    """Flips bytes of best.pt when training ends, before the built-in early stopping restores it."""

    def on_fit_end(self, trainer, state):
        best = trainer.run.best
        assert best.exists()
        _flip(best, best.stat().st_size // 2)


def test_damaged_best_pt_is_refused_when_training_ends(run, tmp_path):
    _, over = run
    with pytest.raises(SeqrecError, match="best.pt is damaged: checksum mismatch"):
        SeqRec(overrides=over).fit(run_dir=tmp_path / "r", log=lambda s: None, callbacks=[DamageBest()])
