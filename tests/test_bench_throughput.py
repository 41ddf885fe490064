"""`seqrec bench throughput` and the allocator setting it reports (``system.tune_allocator``)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY

from seqrec.bench.throughput import PARTS
from seqrec.cli.bench import bench
from seqrec.errors import ConfigError
from seqrec.training import system


def test_throughput_writes_sane_records(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "synthetic", "options": TINY},
                                   "model": {"name": "sasrec", "d": 16, "max_len": 20, "n_blocks": 1},
                                   "loss": {"name": "ce"}, "train": {"batch_size": 16, "num_threads": 1}}))
    out = tmp_path / "tp"
    res = CliRunner().invoke(bench, ["throughput", "--config", str(cfg), "--loss", "ce", "--loss", "ce_chunked",
                                     "--steps", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in recs] == ["ce", "ce_chunked"]
    for r in recs:
        assert r["steps"] == 3 and r["tokens_per_step"] > 0 and r["tokens_per_s"] > 0
        assert sum(r[f"share_{p}"] for p in PARTS) == pytest.approx(1.0, abs=1e-3)
        assert all(r[f"{p}_s"] > 0 for p in PARTS)
        assert r["minflt_per_step"] >= 0 and r["sys_s_per_step"] >= 0
    assert "| ce_chunked |" in (out / "table.md").read_text()
    assert (out / "throughput.png").stat().st_size > 1000


def test_throughput_rejects_unknown_loss(tmp_path):
    res = CliRunner().invoke(bench, ["throughput", "--loss", "nope", "--out", str(tmp_path / "x")])
    assert isinstance(res.exception, ConfigError) and "nope" in str(res.exception)


def test_tune_then_untune_restores_glibc_settings(monkeypatch):
    calls = []

    class Glibc:
        def __init__(self, name):
            pass

        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(system, "_HEAP_KEPT", False)
    monkeypatch.setattr(system, "_MALLOC_TRIM", None)
    monkeypatch.setattr(system.ctypes, "CDLL", Glibc)
    with system.kept_heap(True):
        assert system.heap_kept()
    assert not system.heap_kept()
    # M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1; then glibc's defaults and the free pages handed back
    assert calls == [(-4, 0), (-1, -1), (-4, 65536), (-1, 128 * 1024), ("trim", 0)]
    calls.clear()
    with system.kept_heap(False):
        assert not system.heap_kept()
    assert calls == []


def test_tune_allocator_is_a_no_op_without_glibc(monkeypatch):
    class NoMallopt:  # a C library without mallopt (musl, macOS)
        def __init__(self, name):
            pass

    monkeypatch.setattr(system, "_HEAP_KEPT", False)
    monkeypatch.setattr(system.ctypes, "CDLL", NoMallopt)
    assert system.tune_allocator() is False

    def no_handle(name):
        raise OSError("no C library handle")

    monkeypatch.setattr(system.ctypes, "CDLL", no_handle)
    assert system.tune_allocator() is False


def _spy_trainer(monkeypatch, free_bytes):
    from seqrec.api import SeqRec
    from seqrec.training import trainer as trainer_mod

    calls = []
    monkeypatch.setattr(system, "tune_allocator", lambda: calls.append(1) or True)
    monkeypatch.setattr(trainer_mod, "available_bytes", lambda device: (free_bytes, "test"))
    monkeypatch.setattr(trainer_mod, "check_fits", lambda *a: None)
    return calls, SeqRec


@pytest.mark.parametrize("free_bytes, tuned", [(2**40, True), (1, False)])
def test_trainer_keeps_the_heap_only_when_memory_is_not_tight(monkeypatch, tiny_overrides, free_bytes, tuned):
    calls, SeqRec = _spy_trainer(monkeypatch, free_bytes)
    SeqRec(overrides={**tiny_overrides, "train.epochs": 1}).fit(log=lambda s: None)
    assert bool(calls) is tuned


def test_the_heap_is_kept_only_while_stepping(monkeypatch, tiny_overrides):
    """Evaluation (validation, the popularity line) runs under glibc's settings: its large one-off
    arrays grew a kept heap by 3.5 GB on ML-20M."""
    from seqrec.api import SeqRec
    from seqrec.training import trainer as trainer_mod

    seen = {"step": [], "evaluate": []}
    step, evaluate = trainer_mod.Trainer._step, trainer_mod.Trainer.evaluate
    monkeypatch.setattr(trainer_mod.Trainer, "_step", lambda self, *a, **k: seen["step"].append(system.heap_kept())
                        or step(self, *a, **k))
    monkeypatch.setattr(trainer_mod.Trainer, "evaluate", lambda self, *a: seen["evaluate"].append(system.heap_kept())
                        or evaluate(self, *a))
    monkeypatch.setattr(trainer_mod, "available_bytes", lambda device: (2**40, "test"))
    SeqRec(overrides={**tiny_overrides, "train.epochs": 2}).fit(log=lambda s: None)
    assert seen["evaluate"] and not any(seen["evaluate"]) and not system.heap_kept()
    glibc = system._libc("mallopt") is not None
    assert seen["step"] and all(seen["step"]) is glibc
