"""The "auto" evaluation defaults: validation sample by user count, retrieval backend by catalog size."""

import numpy as np
import pytest

import seqrec.evaluation.defaults as defaults
from seqrec import SeqRec
from seqrec.config import load_config
from seqrec.data.store import EvalSet, SequenceStore
from seqrec.errors import ConfigError


def _evalset(n: int) -> EvalSet:
    rows = [[1 + (u + j) % 9 for j in range(1 + u % 5)] for u in range(n)]
    return EvalSet(np.arange(n), SequenceStore.from_lists(rows), np.arange(n) % 9 + 1)


def test_defaults_are_auto_and_typed():
    cfg = load_config(None)
    assert cfg.train.valid_users == "auto" and cfg.eval.retrieval == "auto" and cfg.eval.encode_dtype == "float32"
    for value in ("all", None, 500):
        assert load_config(None, {"train.valid_users": value}).train.valid_users == value
    for bad in (0, "some", 2.5):
        with pytest.raises(ConfigError, match="train.valid_users"):
            load_config(None, {"train.valid_users": bad})
    with pytest.raises(ConfigError, match="eval.encode_dtype"):
        load_config(None, ["eval.encode_dtype=float16"])
    with pytest.raises(ConfigError, match="need a named backend"):
        load_config(None, ["eval.retrieval_params={nprobe: 3}"])
    with pytest.raises(ConfigError, match="unknown key eval.retrieval_params.nprobe for retrieval backend 'torch'"):
        load_config(None, ["eval.retrieval=torch", "eval.retrieval_params={nprobe: 3}"])


def test_valid_sample_size_by_setting(monkeypatch):
    monkeypatch.setattr(defaults, "VALID_USERS_AUTO", 100)
    assert defaults.valid_sample_size("auto", 100) is None  # at the cap: every user
    assert defaults.valid_sample_size("auto", 101) == 100
    assert defaults.valid_sample_size(30, 101) == 30 and defaults.valid_sample_size(300, 101) is None
    assert defaults.valid_sample_size("all", 10**6) is None and defaults.valid_sample_size(None, 10**6) is None


def test_valid_subset_is_seeded_stable_and_in_user_order(monkeypatch):
    monkeypatch.setattr(defaults, "VALID_USERS_AUTO", 40)
    v = _evalset(150)
    a, b = defaults.valid_subset(v, "auto", seed=3), defaults.valid_subset(v, "auto", seed=3)
    assert len(a) == 40 and np.array_equal(a.users, b.users) and np.all(np.diff(a.users) > 0)
    expected = np.sort(np.random.default_rng(3 + 7).choice(150, size=40, replace=False))  # as before the change
    assert np.array_equal(a.users, expected)
    for i, u in enumerate(a.users):  # histories and targets travel with their users
        assert np.array_equal(a.history.row(i), v.history.row(u)) and a.targets[i] == v.targets[u]
    assert not np.array_equal(defaults.valid_subset(v, "auto", seed=4).users, a.users)
    assert defaults.valid_subset(v, "all", seed=3) is v
    assert len(defaults.valid_subset(_evalset(40), "auto", seed=3)) == 40


def test_trainer_validates_on_the_auto_sample(tiny_overrides, monkeypatch):
    from seqrec.training.trainer import Trainer

    monkeypatch.setattr(defaults, "VALID_USERS_AUTO", 25)
    rec = SeqRec(overrides=tiny_overrides)
    data = rec._load_data(None)
    trainer = Trainer(rec.cfg_, rec._build_model(data.n_items), None, data, log=lambda s: None)
    trainer.cfg.train.seed = 5
    assert len(data.valid) > 25 and len(trainer._valid_subset()) == 25
    assert np.array_equal(trainer._valid_subset().users, defaults.valid_subset(data.valid, 25, 5).users)
    trainer.cfg.train.valid_users = "all"
    assert trainer._valid_subset() is data.valid


def test_no_kept_heap_under_cpu_autocast(tiny_overrides):
    """The kept heap (faster CPU steps) is never used with autocast on CPU: it fragmented to 16 GB."""
    from seqrec.training.trainer import Trainer

    rec = SeqRec(overrides=tiny_overrides)
    data = rec._load_data(None)
    trainer = Trainer(rec.cfg_, rec._build_model(data.n_items), None, data, log=lambda s: None)
    trainer.batch_size = 8
    assert trainer._keep_heap()  # the tiny step fits any machine
    trainer.cfg.train.autocast = "bf16"
    assert not trainer._keep_heap()


def test_retrieval_auto_by_catalog_size(tiny_overrides, monkeypatch):
    assert defaults.retrieval_backend("auto", 199_999) == "torch"
    assert defaults.retrieval_backend("auto", 200_000) == "faiss-ivf"
    assert defaults.retrieval_backend("faiss-hnsw", 10) == "faiss-hnsw"
    rec = SeqRec(model="sasrec", loss="ce", overrides=tiny_overrides).fit(log=lambda s: None)
    exact = rec.evaluate()
    assert "retrieval_recall@50" not in exact  # 40 items: exact torch
    monkeypatch.setattr(defaults, "RETRIEVAL_AUTO_ITEMS", rec.data_.n_items)
    assert rec._retriever(None, None).name == "faiss-ivf"
    approx = rec.evaluate()
    assert 0.0 <= approx["retrieval_recall@50"] <= 1.0 and approx["retrieval_sample"] > 0
    assert rec._retriever("torch", None).name == "torch"  # a named backend is kept
