"""Faults and bad inputs: each one ends in a clear one-line error (exit 2) or a documented outcome,
and never damages what is already on disk. The catalogue with outcomes is docs/reliability.md.

Runs are tiny (120 users, 40 items, d=16, 2 epochs) and shared: ``finished`` is one uninterrupted
``seqrec fit`` run and ``interrupted`` the same run stopped by SIGINT at step 3; tests that change a
run work on a copy.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import with_callbacks

from seqrec import SeqRec
from seqrec.cli import main
from seqrec.errors import ConfigError, SeqrecError
from seqrec.io import atomic_path, write_json, write_text
from seqrec.training import Callback, Trainer
from seqrec.training import checkpoint as ckpt_mod
from seqrec.training.checkpoint import load_checkpoint, save_checkpoint

SYNTH = {"n_users": 120, "n_items": 40, "n_clusters": 4, "mean_len": 12.0, "max_len": 30}
FAST = ["--no-baseline", "--set", "data.options=" + json.dumps({"synthetic": SYNTH}), "--set", "model.d=16",
        "--set", "model.max_len=20", "--set", "model.n_blocks=1", "--set", "train.epochs=2",
        "--set", "train.batch_size=32", "--set", "train.num_threads=1", "--set", "train.max_time_s=null",
        "--set", "train.checkpoint_every_steps=2"]
OVER = {"data.options": {"synthetic": SYNTH}, "model.d": 16, "model.max_len": 20, "model.n_blocks": 1,
        "train.epochs": 2, "train.batch_size": 32, "train.num_threads": 1, "train.max_time_s": None,
        "train.checkpoint_every_steps": 2}
QUIET = {"log": lambda s: None}
OVERWRITE: dict = {}  # what `finished` saw when it first ran without --overwrite


def cli(*args: str) -> tuple[int, str, str]:
    """``seqrec ARGS`` in-process -> (exit code, stdout, stderr); the caller's signal handlers survive."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str, *needles: str) -> None:
    """Exit 2 and the error as one ``error: ...`` line, the last on stderr (progress lines may precede it)."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), err
    assert sum(x.startswith("error:") for x in lines) == 1, err
    for n in needles:
        assert n in lines[-1], (n, err)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run, written over a stale directory (records the --overwrite outcomes)."""
    out = tmp_path_factory.mktemp("rel") / "run"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    refused = cli("fit", "--out", out, *FAST)
    kept = (out / "stale.txt").exists()
    rc, _, err = cli("fit", "--out", out, "--overwrite", *FAST)
    assert rc == 0, err
    OVERWRITE.update(refused=refused, kept=kept)
    return out


def _signal_at_step(monkeypatch, n: int, sig: int = signal.SIGINT) -> None:
    """Deliver ``sig`` to this process at the end of the n-th training step (as a user's Ctrl-C would):
    every Trainer built while patched gets a callback that does it."""
    class SignalAt(Callback):
        def on_step_end(self, trainer, state, loss):
            if state.global_step == n:
                os.kill(os.getpid(), sig)

    init = Trainer.__init__

    def with_signal(self, *a, callbacks=(), **k):
        init(self, *a, callbacks=[SignalAt(), *callbacks], **k)
    monkeypatch.setattr(Trainer, "__init__", with_signal)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The ``finished`` configuration stopped by SIGINT in step 3 -> (run dir, exit code, stderr)."""
    out = tmp_path_factory.mktemp("rel") / "cut"
    with pytest.MonkeyPatch.context() as mp:
        _signal_at_step(mp, 3)
        rc, _, err = cli("fit", "--out", out, *FAST)
    return out, rc, err


# ------------------------------------------------------------------ run directory and disk
def test_existing_run_dir_is_kept_without_overwrite_and_replaced_with_it(finished):
    rc, _, err = OVERWRITE["refused"]
    one_line_error(rc, err, "--overwrite", str(finished))
    assert OVERWRITE["kept"]  # the refused call touched nothing
    assert not (finished / "stale.txt").exists()  # --overwrite replaced the directory
    assert (finished / "results.json").exists()


def _no_data_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("data was loaded before the run directory was checked")
    monkeypatch.setattr(SeqRec, "_load_data", boom)


def test_run_dir_under_a_regular_file_fails_before_loading_data(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _no_data_loading(monkeypatch)
    rc, _, err = cli("fit", "--out", blocker / "run", *FAST)
    one_line_error(rc, err, "not writable", str(blocker / "run"))


def test_permission_denied_run_dir_fails_before_loading_data(tmp_path, monkeypatch):
    # root ignores chmod 555, so the refusal of the OS is simulated
    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", denied)
    _no_data_loading(monkeypatch)
    rc, _, err = cli("fit", "--out", tmp_path / "run", *FAST)
    one_line_error(rc, err, "not writable", "Permission denied")


def test_low_disk_space_fails_early_with_clear_message(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("seqrec.rundir.shutil.disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30, 5 * 2**20))
    _no_data_loading(monkeypatch)
    rc, _, err = cli("fit", "--out", tmp_path / "run", *FAST)
    one_line_error(rc, err, "5 MB free", "50 MB")


def test_disk_full_during_training_keeps_last_checkpoint_and_resume_finishes(finished, tmp_path, monkeypatch):
    orig, count = torch.save, {"n": 0}

    def save(obj, f, *a, **k):
        count["n"] += 1
        if count["n"] == 3:  # the third checkpoint write hits a full disk half-way
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    rc, _, err = cli("fit", "--out", run, *FAST)
    one_line_error(rc, err, "No space left on device")
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith(".")) == []  # no temp file left
    load_checkpoint(ck / "last.pt")  # the last good checkpoint is intact
    monkeypatch.setattr(torch, "save", orig)  # space freed: resume to the end
    rc, _, err = cli("fit", "--resume", run)
    assert rc == 0, err
    assert json.loads((run / "results.json").read_text()) == json.loads((finished / "results.json").read_text())


# ------------------------------------------------------------------ resume
def test_resume_of_a_finished_run_prints_results_and_changes_nothing(finished):
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    rc, out, err = cli("fit", "--resume", finished)
    assert rc == 0, err
    assert "already finished" in out
    ndcg = json.loads((finished / "results.json").read_text())["test"]["ndcg@10"]
    assert f"{ndcg:.4f}" in out
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before


def test_resume_of_a_directory_without_config_is_refused(tmp_path):
    (tmp_path / "somedir").mkdir()
    rc, _, err = cli("fit", "--resume", tmp_path / "somedir")
    one_line_error(rc, err, "no config.yaml")


@pytest.mark.parametrize("extra", [["--model", "bert4rec"], ["--loss", "sce"], ["--set", "train.batch_size=8"],
                                   ["--config", "default"], ["--dataset", "synthetic"], ["--out", "elsewhere"],
                                   ["--format", "csv"], ["--overwrite"]])
def test_resume_combined_with_other_options_is_refused(finished, extra):
    rc, _, err = cli("fit", "--resume", finished, *extra)
    one_line_error(rc, err, "--resume")


def test_sigint_saves_checkpoint_exits_130_and_says_how_to_resume(interrupted):
    run, rc, err = interrupted
    assert rc == 130, err
    assert f"seqrec fit --resume {run}" in err and "Traceback" not in err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["state"]["global_step"] == 3  # the step in flight was finished, then saved
    assert not (run / "model.pt").exists() and not (run / "results.json").exists()


def test_signal_handlers_are_restored_after_fit(finished, tmp_path, monkeypatch):
    """An in-process ``main(["fit", ...])`` must not leave its SIGINT handler behind (Ctrl-C would be
    swallowed or kill the interpreter afterwards)."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _signal_at_step(monkeypatch, 2)
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            rc = main(["fit", "--out", str(tmp_path / "r"), *FAST])
            after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        finally:
            signal.signal(signal.SIGINT, before[0])
            signal.signal(signal.SIGTERM, before[1])
    assert rc == 130
    assert after == before


def test_evaluate_and_recommend_of_unfinished_run_say_how_to_resume(interrupted, tmp_path):
    run = interrupted[0]
    rc, _, err = cli("evaluate", run)
    one_line_error(rc, err, "missing model.pt", "seqrec fit --resume")
    rc, _, err = cli("recommend", run, "--all", "--out", tmp_path / "r.csv")
    one_line_error(rc, err, "seqrec fit --resume")


def test_resume_after_sigint_matches_uninterrupted_run(finished, interrupted, tmp_path):
    run = copy_run(interrupted[0], tmp_path / "cut")
    rc, _, err = cli("fit", "--resume", run)
    assert rc == 0, err
    assert json.loads((run / "results.json").read_text()) == json.loads((finished / "results.json").read_text())


def test_resume_before_first_checkpoint_starts_over_from_saved_config(finished, interrupted, tmp_path):
    run = copy_run(interrupted[0], tmp_path / "cut")
    shutil.rmtree(run / "checkpoints")  # killed before any checkpoint was written
    rc, _, err = cli("fit", "--resume", run)
    assert rc == 0, err
    assert json.loads((run / "results.json").read_text()) == json.loads((finished / "results.json").read_text())


def test_resume_with_every_checkpoint_damaged_is_a_clear_error(interrupted, tmp_path):
    run = copy_run(interrupted[0], tmp_path / "cut")
    for name in ("last.pt", "prev.pt"):
        p = run / "checkpoints" / name
        p.write_bytes(p.read_bytes()[:200])
    rc, _, err = cli("fit", "--resume", run)
    one_line_error(rc, err, "prev.pt is damaged")


# ------------------------------------------------------------------ numerics
class PoisonLoss(Callback):
    """Wraps the trainer's loss: at the given calls it (or, with ``grad``, its gradient) becomes ``value``."""

    def __init__(self, at_calls: set[int], value: float = float("nan"), grad: bool = False) -> None:
        self.at_calls, self.value, self.grad, self.calls = at_calls, value, grad, 0

    def on_fit_start(self, trainer, state):
        self.trainer, orig = trainer, trainer.loss

        def loss(*a, **k):
            self.calls += 1
            out = orig(*a, **k)
            if self.calls not in self.at_calls:
                return out
            if self.grad:
                out.register_hook(lambda g: g * self.value)
                return out
            return out + self.value
        trainer.loss = loss


def _where(trainer, call: int) -> str:
    nb = trainer.n_batches
    return f"epoch {(call - 1) // nb + 1} step {(call - 1) % nb + 1}"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_naming_step_value_and_last_checkpoint(tmp_path, value):
    poison = PoisonLoss({3}, value)
    with pytest.raises(SeqrecError) as e:
        SeqRec(overrides=OVER).fit(run_dir=tmp_path / "r", **with_callbacks(poison), **QUIET)
    msg = str(e.value)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    assert f"non-finite loss {value}" in msg and _where(poison.trainer, 3) in msg and f"checkpoint: {last}" in msg
    ck = load_checkpoint(last)  # the named checkpoint loads and holds the state before the bad step
    assert ck["state"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_non_finite_gradient_stops_naming_the_gradient():
    poison = PoisonLoss({2}, float("nan"), grad=True)
    with pytest.raises(SeqrecError, match=r"non-finite gradient norm nan \(loss \d") as e:
        SeqRec(overrides=OVER).fit(**with_callbacks(poison), **QUIET)
    assert _where(poison.trainer, 2) in str(e.value) and "last good checkpoint: none" in str(e.value)


def test_huge_learning_rate_stops_with_a_non_finite_message():
    with pytest.raises(SeqrecError, match=r"non-finite .* at epoch \d+ step \d+.*lower train.lr"):
        SeqRec(overrides={**OVER, "train.lr": 1e30}).fit(**QUIET)


def test_resume_after_a_nan_stop_takes_a_lower_lr_and_records_it(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(SeqrecError, match="lower train.lr"):
        SeqRec(overrides=OVER).fit(run_dir=run, **with_callbacks(PoisonLoss({5}, float("nan"))), **QUIET)

    class LrProbe(Callback):
        seen: list = []

        def on_step_end(self, trainer, state, loss):
            self.seen.append(trainer.optimizer.param_groups[0]["lr"])

    import yaml

    old = yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]
    rec = SeqRec(config=str(run / "config.yaml"), overrides={"train.lr": 5e-4, "train.grad_clip": 1.0})
    logs: list[str] = []
    rec.fit(run_dir=run, resume=True, callbacks=[LrProbe()], log=logs.append)
    assert LrProbe.seen and set(LrProbe.seen) == {5e-4}  # the checkpoint's optimiser state kept its moments, not its lr
    change = f"train.lr {old} -> 0.0005, train.grad_clip None -> 1.0"
    assert any(f"resumed with {change}" in m for m in logs), logs
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("resumed_with") for r in records].count(change) == 1
    assert "lr: 0.0005" in (run / "config.yaml").read_text()
    rc, _, err = cli("fit", "--resume", run, "--set", "train.seed=3")
    one_line_error(rc, err, "train.seed cannot change when a run is resumed (the checkpoint was computed with it")


def test_nan_policy_skip_skips_up_to_the_limit_then_stops():
    over = {**OVER, "train.nan_policy": "skip", "train.max_nan_skips": 2}
    logs: list[str] = []
    rec = SeqRec(overrides=over).fit(**with_callbacks(PoisonLoss({2, 4})), log=logs.append)
    skipped = [m for m in logs if "step skipped" in m]
    assert len(skipped) == 2 and "(2/2)" in skipped[-1]
    assert all(torch.isfinite(p).all() for p in rec.model_.parameters())
    with pytest.raises(SeqrecError, match="non-finite loss nan"):
        SeqRec(overrides=over).fit(**with_callbacks(PoisonLoss({2, 4, 5})), **QUIET)


# ------------------------------------------------------------------ untrusted checkpoints and configs
class _Payload:
    """Unpickling this runs a shell command (creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, zipped: bool) -> Path:
    state = {"meta": {"n_items": 40}, "model": _Payload(marker)}
    if zipped:
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "raw-pickle"])
def test_malicious_pickle_checkpoint_is_refused_and_not_executed(tmp_path, zipped):
    control = _evil(tmp_path / "control.pt", tmp_path / "control-ran", zipped)
    if zipped:  # an unsafe load -- harmless here (it touches a file in tmp_path) ...
        torch.load(control, weights_only=False)
    else:
        with open(control, "rb") as f:
            pickle.load(f)
    assert (tmp_path / "control-ran").exists()  # ... and proves the payload is live for an unsafe load
    evil = _evil(tmp_path / "last.pt", tmp_path / "pwned", zipped)
    with pytest.raises(SeqrecError, match="damaged or not a seqrec checkpoint") as e:
        load_checkpoint(evil)
    assert str(evil) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_malicious_model_pt_in_a_run_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    _evil(run / "model.pt", tmp_path / "pwned", zipped=True)
    with pytest.raises(SeqrecError, match="model.pt is damaged"):
        SeqRec.load(run)
    rc, _, err = cli("recommend", run, "--all", "--out", tmp_path / "r.csv")
    one_line_error(rc, err, "model.pt")
    assert not (tmp_path / "pwned").exists()


def test_truncated_or_empty_checkpoint_is_a_clear_error_and_prev_still_loads(finished, tmp_path):
    src = finished / "checkpoints"
    for name in ("last.pt", "prev.pt"):
        shutil.copy(src / name, tmp_path / name)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(SeqrecError, match="last.pt is damaged"):
        load_checkpoint(last)
    last.write_bytes(b"")
    with pytest.raises(SeqrecError, match="last.pt is damaged"):
        load_checkpoint(last)
    prev = load_checkpoint(tmp_path / "prev.pt")
    assert prev["meta"]["n_items"] == 40 and prev["state"]["global_step"] > 0


@pytest.mark.parametrize("content", ["random", "tensor", "other-shape"])
def test_bad_model_pt_makes_evaluate_exit_2_with_one_line(finished, tmp_path, content):
    run = copy_run(finished, tmp_path / "run")
    if content == "random":
        (run / "model.pt").write_bytes(np.random.default_rng(0).bytes(5000))
        needle = "damaged"
    elif content == "tensor":  # a valid torch file that is not a seqrec checkpoint
        torch.save(torch.zeros(3), run / "model.pt")
        needle = "model.pt"
    else:  # config.yaml edited after training: the weights no longer fit the model
        cfg = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(cfg.replace("d: 16", "d: 32", 1))
        needle = "model.pt"
    rc, _, err = cli("evaluate", run)
    one_line_error(rc, err, needle)


def test_python_tags_in_a_run_config_are_refused_and_not_executed(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "results.json").unlink()  # so that --resume reads the config
    (run / "config.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        SeqRec.load(run)
    for args in (["evaluate", run], ["fit", "--resume", run], ["fit", "--config", run / "config.yaml"]):
        rc, _, err = cli(*args)
        one_line_error(rc, err, "config.yaml")
    assert not (tmp_path / "pwned").exists()


def test_loading_a_run_whose_data_belongs_to_other_data_is_refused(finished, tmp_path):
    from seqrec.data import load_dataset, save_prepared

    run = copy_run(finished, tmp_path / "run")
    shutil.rmtree(run / "data")
    save_prepared(load_dataset("synthetic", synthetic={**SYNTH, "seed": 5}), run / "data")
    with pytest.raises(SeqrecError, match="other data"):
        SeqRec.load(run)
    rc, _, err = cli("recommend", run, "--all", "--out", tmp_path / "r.csv")
    one_line_error(rc, err, "other data")
    assert not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "killed"])
def test_crash_while_writing_a_checkpoint_leaves_the_old_one_intact(tmp_path, monkeypatch, exc):
    path = tmp_path / "last.pt"
    save_checkpoint({"meta": {"n_items": 1}, "model": {"w": torch.ones(3)}}, path, keep_previous=True)
    old = path.read_bytes()

    def torn(obj, f, *a, **k):
        Path(f).write_bytes(old[: len(old) // 3])  # half of a file, then the crash
        raise exc
    monkeypatch.setattr(ckpt_mod.torch, "save", torn)
    with pytest.raises(type(exc)):
        save_checkpoint({"meta": {"n_items": 1}, "model": {"w": torch.zeros(3)}}, path, keep_previous=True)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file, prev.pt untouched
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_crash_while_writing_results_json_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json(path, {"test": {"ndcg@10": 0.25}})
    old = path.read_text()

    def torn(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[:5])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", torn)
    with pytest.raises(OSError):
        write_json(path, {"test": {"ndcg@10": 0.5}})
    monkeypatch.undo()
    assert path.read_text() == old and json.loads(old)["test"]["ndcg@10"] == 0.25
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_json(path, {"test": {"ndcg@10": 0.5}})
    assert json.loads(path.read_text())["test"]["ndcg@10"] == 0.5


def test_atomic_writes_keep_the_usual_file_permissions(tmp_path):
    """A file written through seqrec.io gets the same mode as ``open(path, "w")`` would give it."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text(tmp_path / "atomic.txt", "x")
    with atomic_path(tmp_path / "atomic.bin") as tmp:
        tmp.write_bytes(b"x")
    want = plain.stat().st_mode & 0o777
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == want
    assert (tmp_path / "atomic.bin").stat().st_mode & 0o777 == want


# ------------------------------------------------------------------ recommend inputs
@pytest.mark.parametrize("flag, name, content, needle", [
    ("--users", "users.txt", b"999999\n", "unknown user"),
    ("--users", "users.txt", b"\xff\xfe\x00bad\n", "UTF-8"),
    ("--users", "users.txt", b"alice\n", "integers"),
    ("--users", "users.parquet", b"PAR1 not really parquet", "users.parquet"),
    ("--histories", "h.json", b"{not json", "invalid JSON"),
    ("--histories", "h.json", b"\xff\xfe{}", "invalid JSON"),
    ("--histories", "h.json", b"[1, 2, 3]", "expected"),
    ("--histories", "h.json", b'{"new": [1, "x"]}', "integers"),
    ("--histories", "h.csv", b"a,b\n1,2\n", "columns user,item"),
    ("--histories", "h.parquet", b"garbage", "cannot read histories"),
    ("--items", "items.txt", b"123456\n", "none of the items"),
])
def test_recommend_with_bad_input_files_exits_2_with_one_line(finished, tmp_path, flag, name, content, needle):
    f = tmp_path / name
    f.write_bytes(content)
    args = ["recommend", finished, flag, f, "--out", tmp_path / "r.csv"]
    if flag == "--items":
        args.append("--all")
    rc, _, err = cli(*args)
    one_line_error(rc, err, needle)
    assert not (tmp_path / "r.csv").exists()


# ------------------------------------------------------------------ data and settings through `seqrec fit`
def _fit_file(tmp_path, content: bytes, name: str, *args: str) -> tuple[int, str, str]:
    f = tmp_path / name
    f.write_bytes(content)
    return cli("fit", "--dataset", f, "--out", tmp_path / "run", "--no-baseline",
               "--set", "train.epochs=1", "--set", "model.d=8", "--set", "train.num_threads=1", *args)


SEQS = b"".join(b"%d %d\n" % (u, i) for u in range(1, 9) for i in range(1, 7))  # 8 users x 6 items, no time


@pytest.mark.parametrize("case, content, name, args, needle", [
    ("empty file", b"", "empty.csv", ["--format", "csv"], "empty file"),
    ("unknown format", b"user,item\n1,2\n", "x.csv", ["--format", "bogus"], "unknown format 'bogus'"),
    ("no format", b"user,item\n1,2\n", "x.txt", [], "pass --format"),
    ("k-core leaves nothing", SEQS, "s.txt", ["--format", "sasrec", "--set", 'data.options={"min_user": 50}'],
     "leaves no interactions"),
    ("global_temporal without timestamps", SEQS, "s.txt",
     ["--format", "sasrec", "--set", "data.split=global_temporal"], "needs real timestamps"),
    ("one item per user", b"".join(b"%d %d\n" % (u, u % 5 + 1) for u in range(1, 30)), "s.txt",
     ["--format", "sasrec"], "need at least 2"),
    ("fp16 on CPU", SEQS, "s.txt", ["--format", "sasrec", "--set", "train.autocast=fp16", "--device", "cpu"],
     "fp16 needs CUDA"),
])
def test_bad_data_or_settings_through_fit_exit_2_with_one_line(tmp_path, case, content, name, args, needle):
    rc, _, err = _fit_file(tmp_path, content, name, *args)
    one_line_error(rc, err, needle)
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_device_without_cuda_exits_2(tmp_path):
    rc, _, err = _fit_file(tmp_path, SEQS, "s.txt", "--format", "sasrec", "--device", "cuda")
    one_line_error(rc, err, "CUDA is not available")


def test_atomic_directories_keep_the_usual_permissions(tmp_path, tiny_overrides):
    """Prepared data and saved indexes are built in a temp dir and renamed; they must end with the
    mode ``mkdir`` gives (``mkdtemp`` alone would leave them 0700)."""
    from seqrec.data import load_dataset, save_prepared

    plain = tmp_path / "plain"
    plain.mkdir()
    data = load_dataset("synthetic", **tiny_overrides["data.options"])
    save_prepared(data, tmp_path / "prepared")
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_run_directory_in_use_is_refused(finished, tmp_path):
    """Two processes training one run directory would interleave checkpoints: the second fails at once."""
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    code = "import sys, time\nfrom seqrec.io import run_lock\nwith run_lock(sys.argv[1]):\n" \
           "    print('held', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = cli("fit", "--resume", run, "--set", "train.epochs=3")
        one_line_error(rc, err, "in use by another seqrec process", f"pid {holder.pid}")
        rc, _, err = cli("fit", "--out", run, "--overwrite", *FAST)
        one_line_error(rc, err, "in use by another seqrec process")
        assert (run / "model.pt").exists() and (run / "results.json").exists()  # nothing deleted
        with pytest.raises(SeqrecError, match="in use"):
            SeqRec.load(run).fit(run_dir=run, resume=True, log=lambda s: None)
    finally:
        holder.kill()
        holder.wait()
    rc, _, err = cli("fit", "--resume", run, "--set", "train.epochs=3")  # the lock died with its holder
    assert rc == 0, err


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim and /proc/self/statm exist on glibc Linux only")
def test_trim_heap_returns_freed_pages_to_the_os(tmp_path):
    # A fragmented heap: 3,000 blocks of 100 kB (below the mmap threshold), every tenth kept. In a
    # fresh process so other tests' allocations do not blur the figure.
    script = tmp_path / "trim.py"
    script.write_text(
        "import numpy as np\n"
        "from seqrec.training.system import trim_heap\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "blocks = [np.ones(12_500) for _ in range(3000)]\n"
        "keep = blocks[::10]\n"
        "del blocks\n"
        "before = rss(); ok = trim_heap(); print(ok, before - rss())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) > 100  # MB handed back of the ~270 MB freed


# ------------------------------------------------------------------ memory before training
def test_a_step_that_cannot_fit_is_refused_before_training(tmp_path, monkeypatch):
    from seqrec.training import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: (6 * 2**20, "available RAM"))
    rc, _, err = cli("fit", "--out", tmp_path / "r", *FAST, "--set", "train.batch_size=100000000")
    one_line_error(rc, err, "one training step needs about", "but only 6.0 MB of available RAM is free",
                   "train.batch_size=", "--loss sce", "--force")
    assert "is more than the" in err  # the batch was clamped to the training sequences first, with a note
    assert not (tmp_path / "r").exists()
    rc, _, err = cli("fit", "--out", tmp_path / "r", *FAST, "--force")
    assert rc == 0, err


def test_the_memory_model_covers_the_default_transformers():
    import torch

    from seqrec.config import load_config
    from seqrec.registry import MODELS
    from seqrec.training.memory import available_bytes, predicted_step

    cfg = load_config("sasrec-ml-1m-ce")
    model = MODELS.build("sasrec", 3416, **cfg.model.params)
    small, big = predicted_step(cfg, model, 128, 3416), predicted_step(cfg, model, 6040, 3416)
    assert 0 < small < 4 * 2**30 < big  # 128 x 200 fits a laptop; the whole of ML-1M in one CE batch does not
    assert available_bytes(torch.device("cpu")) is None or available_bytes(torch.device("cpu"))[0] > 0


def test_quoted_error_text_is_never_cut_mid_word(tmp_path):
    from seqrec.errors import shorten

    torch_text = ("Weights only load failed. This file can still be loaded, to do so you have two options, do those "
                  "steps only if you trust the source of the checkpoint. there is a high\nlikelihood that "
                  "the file was produced by an unsafe pickler " * 3)
    short = shorten(torch_text, 160)
    assert len(short) <= 161 and "\n" not in short and short.endswith("…")
    assert set(short[:-1].split()) <= set(torch_text.split())  # whole words only
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    rc, _, err = cli("fit", "--config", bad)
    one_line_error(rc, err, "invalid YAML", "expected ',' or ']'")  # the parser's last line, not only its first


def test_a_resume_refused_in_setup_leaves_the_run_as_it_was(finished, tmp_path, monkeypatch):
    from seqrec.training import memory

    run = copy_run(finished, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # 64 KB: this tiny run's whole step is predicted under 1 MB since ce holds one [N, C] buffer
    monkeypatch.setattr(memory, "available_bytes", lambda device: (2**16, "available RAM"))
    rc, _, err = cli("fit", "--resume", run, "--set", "train.epochs=3", "--set", "train.lr=0.0005")
    one_line_error(rc, err, "one training step needs about")
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_the_api_applies_the_resume_rules_and_never_trains_into_a_used_directory(finished, tmp_path):
    run = copy_run(finished, tmp_path / "r")
    with pytest.raises(ConfigError, match="model.d cannot change when a run is resumed"):
        SeqRec(config=str(run / "config.yaml"), overrides={"model.d": 32}).fit(run_dir=run, resume=True, **QUIET)
    with pytest.raises(SeqrecError, match="is not empty: pass resume=True"):
        SeqRec(overrides=OVER).fit(run_dir=run, **QUIET)


def test_a_failing_user_teardown_still_restores_the_signal_handlers(tmp_path):
    class Boom(Callback):
        def teardown(self, trainer, state):
            raise RuntimeError("user teardown failed")

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="user teardown failed"):
        SeqRec(overrides=OVER).fit(run_dir=tmp_path / "r", callbacks=[Boom()], **QUIET)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_damaged_last_checkpoint_is_set_aside_and_a_missing_one_falls_back(finished, tmp_path):
    from seqrec.rundir import RunDir
    from seqrec.training.state import load_resume

    run = RunDir(copy_run(finished, tmp_path / "r"))
    meta = load_checkpoint(run.last)["meta"]
    run.last.write_bytes(run.last.read_bytes()[:-100])  # damaged
    logs: list[str] = []
    assert load_resume(run, meta["fingerprint"], meta["n_items"], logs.append) is not None
    assert not run.last.exists() and run.last.with_name("last.pt.damaged").exists() and "falling back" in logs[0]
    assert load_resume(run, meta["fingerprint"], meta["n_items"], logs.append) is not None  # prev.pt alone
