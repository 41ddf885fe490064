"""The fast evaluation encoder: last-position states equal the model's, batches bounded, metrics unchanged."""

import numpy as np
import pytest
import torch

import seqrec.evaluation.ranking as ranking
from seqrec import SeqRec
from seqrec.data.store import SequenceStore
from seqrec.evaluation.encode import encode_batches, last_states
from seqrec.registry import MODELS

# rows of different lengths, one longer than max_len and one empty (its state is the padding's)
ROWS = [[3, 1, 4, 1, 5, 9, 2, 6], [7], [], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9], [5, 3]]


@pytest.mark.parametrize("name, params", [
    ("sasrec", {"block": "pre_ln", "n_heads": 2}),
    ("sasrec", {"block": "sasrec", "n_blocks": 3}),
    ("bert4rec", {"n_heads": 4}),
])
def test_last_states_equal_the_full_forward(name, params):
    torch.manual_seed(0)
    model = MODELS.build(name, 12, d=16, max_len=10, **params).eval()
    store = SequenceStore.from_lists(ROWS)
    items = torch.from_numpy(ranking.model_inputs(model, store, np.arange(len(ROWS)), model.max_len))
    with torch.no_grad():
        expected = model(items)[:, -1]
        got = last_states(model, items)
    assert got.shape == expected.shape == (len(ROWS), 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_other_models_and_training_mode_use_the_full_forward():
    torch.manual_seed(0)
    items = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    gru = MODELS.build("gru4rec", 12, d=8).eval()
    with torch.no_grad():
        assert torch.equal(last_states(gru, items), gru(items)[:, -1])
    sasrec = MODELS.build("sasrec", 12, d=8, max_len=4, dropout=0.0).train()  # no fast path while training
    with torch.no_grad():
        assert torch.equal(last_states(sasrec, items), sasrec(items)[:, -1])


def test_encode_batches_cover_every_row_within_both_bounds():
    lengths = np.random.default_rng(0).integers(0, 60, size=500)
    batches = list(encode_batches(lengths, max_users=64, tokens=600))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))  # every row once
    assert np.all(np.diff(lengths[rows]) >= 0)  # in length order
    for b in batches:
        assert len(b) <= 64 and (len(b) == 1 or len(b) * max(lengths[b].max(), 1) <= 600)
    assert [len(b) for b in encode_batches(np.array([700, 800]), 64, 600)] == [1, 1]  # one row always fits


def _old_user_vectors(model, history, max_len, batch_size=1024, device="cpu", dtype="float32"):
    """The encoder before the speed-up: full forward, batches of ``batch_size`` in length order."""
    order = np.argsort(np.minimum(history.lengths, max_len), kind="stable")
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(ranking.model_inputs(model, history, order[lo:lo + batch_size],
                                                                       max_len)))[:, -1]
                         for lo in range(0, len(order), batch_size)])
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return out[torch.from_numpy(back)]


@pytest.mark.parametrize("model", ["sasrec", "bert4rec"])
def test_metrics_identical_to_the_full_forward(tiny_overrides, model, monkeypatch):
    rec = SeqRec(model=model, loss="ce", overrides=tiny_overrides).fit(log=lambda s: None)
    monkeypatch.setattr("seqrec.evaluation.encode.ENCODE_TOKENS", 64)  # many small batches
    fast = rec.evaluate(split="test"), rec.evaluate(split="valid")
    rec.model_.eval()
    monkeypatch.setattr(ranking, "user_vectors", _old_user_vectors)
    assert (rec.evaluate(split="test"), rec.evaluate(split="valid")) == fast


def test_bfloat16_encoding_is_opt_in_and_close(tiny_overrides):
    rec = SeqRec(model="sasrec", loss="ce", overrides=tiny_overrides).fit(log=lambda s: None)
    hist = rec.data_.test.history
    exact = ranking.user_vectors(rec.model_, hist, rec.model_.max_len)
    half = ranking.user_vectors(rec.model_, hist, rec.model_.max_len, dtype="bfloat16")
    assert rec.cfg_.eval.encode_dtype == "float32" and half.dtype == torch.float32
    torch.testing.assert_close(half, exact, rtol=0.05, atol=0.05)
    assert not torch.equal(half, exact)  # it is another computation: hence opt-in
    m = rec.set_config({"eval.encode_dtype": "bfloat16"}).evaluate()
    assert 0.0 <= m["ndcg@10"] <= 1.0
