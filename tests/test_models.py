"""Model zoo: shapes, causality, padding invariance, tying, registry errors, params round trip, pop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.errors import ConfigError
from seqrec.models import Encoder
from seqrec.registry import LOSSES, MODELS

C = 30
TINY = {
    "sasrec": {"d": 16, "n_blocks": 2, "n_heads": 2, "max_len": 12, "dropout": 0.1},
    "bert4rec": {"d": 16, "n_blocks": 2, "n_heads": 2, "max_len": 12, "dropout": 0.1},
    "gru4rec": {"d": 16, "n_blocks": 2, "max_len": 12, "dropout": 0.1},
}


def make(name: str, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return MODELS.build(name, C, **TINY.get(name, {})).eval()


def batch(seed: int = 0, b: int = 4, length: int = 8) -> torch.Tensor:
    """Left-padded batch: row r has r leading zeros (row 0 is full)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, C + 1, (b, length), generator=g)
    for r in range(b):
        x[r, :r] = 0
    return x


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec", "pop"])
def test_shapes_and_no_nan_with_padding(name):
    m = make(name)
    x = batch()
    x[-1] = 0  # an all-padding row must not produce NaN either
    h = m(x)
    assert h.shape == (4, 8, m.d)
    assert torch.isfinite(h).all()
    assert m.item_embeddings().shape == (C, m.d)
    if name != "pop":  # padding positions carry no signal
        assert (h[x == 0] == 0).all()
        m.train()
        assert torch.isfinite(m(x)).all()


def test_default_params_and_readme_snippet():
    m = MODELS.build("sasrec", 100)
    assert m.get_params() == {"d": 64, "n_blocks": 2, "n_heads": 1, "max_len": 200, "dropout": 0.2,
                            "block": "pre_ln", "ffn_mult": 1}
    assert m(torch.randint(0, 101, (2, 7))).shape == (2, 7, 64)
    b = MODELS.build("bert4rec", 100)
    assert b.mask_token == 101 and b.item_emb.num_embeddings == 102 and b.mask_prob == 0.2
    assert b.item_emb.weight.shape == (100, 64)
    names = ("sasrec", "bert4rec", "gru4rec", "pop")
    assert [MODELS.get(n).trainable for n in names] == [True, True, True, False]
    assert [MODELS.get(n).causal for n in ("sasrec", "bert4rec", "gru4rec")] == [True, False, True]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_future_item_does_not_change_past(name):
    m = make(name)
    x = batch()
    h = m(x)
    for t in range(7):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] % C) + 1  # change item t+1 (also turns padding at t+1 into an item)
        h2 = m(y)
        torch.testing.assert_close(h2[:, : t + 1], h[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(h2[0, t + 1], h[0, t + 1])  # the changed position itself does move


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_left_padding_width_does_not_change_last_state(name):
    m = make(name)
    x = batch(length=6)
    wide = torch.cat([torch.zeros(4, 5, dtype=torch.long), x], dim=1)  # same rows, 5 more padding
    torch.testing.assert_close(m(wide)[:, -6:], m(x), atol=1e-5, rtol=1e-5)


def test_bert4rec_sees_the_future():
    m = make("bert4rec")
    x = batch()
    x[:, -1] = m.mask_token
    y = x.clone()
    y[:, -2] = (y[:, -2] % C) + 1
    h, h2 = m(x), m(y)
    assert not torch.allclose(h[:, 2], h2[:, 2])  # an earlier position changed
    assert not torch.allclose(h[:, -1], h2[:, -1])  # and the mask position


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_item_embeddings_tied_to_input_table(name):
    m = make(name)
    w = m.item_embeddings()
    table = m.item_emb.weight
    assert w is table and w.shape == (C, m.d)  # the parameter itself: no slice, no copy
    ids = torch.tensor([[0, 1, C]])
    got = m.item_emb(ids)[0]
    assert torch.equal(got[0], torch.zeros(m.d)) and torch.equal(got[1], w[0]) and torch.equal(got[2], w[C - 1])
    # the gradients of a scoring loss and of the lookup reach the table as one dense gradient
    m.train()
    (m(batch())[:, -1] @ w.T).logsumexp(-1).sum().backward()
    assert table.grad is not None and not table.grad.is_sparse and table.grad.abs().sum() > 0
    if name == "bert4rec":
        assert m.item_emb.extra.shape == (1, m.d)
        torch.testing.assert_close(m.item_emb(torch.tensor([[m.mask_token]]))[0, 0], m.item_emb.extra[0])


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_state_dict_of_the_single_table_layout_still_loads(name):
    """Runs saved before the split kept one [1 + C (+ mask), d] table with a zero padding row."""
    m = make(name)
    state = m.state_dict()
    rows = [torch.zeros(1, m.d), state.pop("item_emb.weight")]
    if "item_emb.extra" in state:
        rows.append(state.pop("item_emb.extra"))
    state["item_emb.weight"] = torch.cat(rows)
    fresh = make(name, seed=1)
    fresh.load_state_dict(state)
    x = batch()
    torch.testing.assert_close(fresh(x), m(x))
    assert torch.equal(fresh.item_embeddings(), m.item_embeddings())


def test_registry_errors():
    with pytest.raises(ConfigError, match="known: .*bert4rec.*gru4rec.*pop.*sasrec"):
        MODELS.build("sasrek", 10)
    with pytest.raises(ConfigError, match="did you mean 'sasrec'"):
        MODELS.build("sasrek", 10)
    with pytest.raises(ConfigError, match=r"model\.n_block.*did you mean 'n_blocks'.*valid: d, n_blocks"):
        MODELS.build("sasrec", 10, n_block=3)
    for bad in [{"d": 0}, {"d": 2.5}, {"dropout": 1.0}, {"n_heads": True}, {"d": 10, "n_heads": 3}]:
        with pytest.raises(ConfigError, match=r"model\."):
            MODELS.build("sasrec", 10, **bad)
    with pytest.raises(ConfigError, match="mask_prob"):
        MODELS.build("bert4rec", 10, mask_prob=0.0)
    with pytest.raises(ConfigError, match="n_items"):
        MODELS.build("gru4rec", 0)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec", "pop"])
def test_get_params_round_trip(name):
    m = make(name)
    m2 = MODELS.build(m.name, m.n_items, **m.get_params())
    assert type(m2) is type(m) and m2.get_params() == m.get_params()
    m2.load_state_dict(m.state_dict())  # same architecture: every tensor has the same shape
    m2.eval()
    torch.testing.assert_close(m2(batch()), m(batch()))


def test_pop_ranks_by_popularity():
    m = make("pop")
    assert m.trainable is False
    counts = np.zeros(C + 1, dtype=np.int64)
    counts[1:] = np.random.default_rng(0).integers(0, 50, C)
    counts[0] = 10**6  # padding slot must be ignored
    m.fit_popularity(counts)
    scores = (m(batch())[:, -1] @ m.item_embeddings().T)  # [B, C], catalog space
    assert (scores == scores[0]).all()  # same for every user
    order = torch.argsort(scores[0], descending=True, stable=True) + 1  # back to model ids
    assert (np.diff(counts[order.numpy()]) <= 0).all()
    m2 = MODELS.build("pop", C)
    m2.load_state_dict(m.state_dict())  # the counts travel with the state dict
    torch.testing.assert_close(m2.item_embeddings(), m.item_embeddings())
    with pytest.raises(ConfigError, match="shape"):
        m.fit_popularity(counts[1:])


def test_register_custom_model():
    @MODELS.register("test_mean")
    class Mean(Encoder):
        max_len = 50  # the contract: the longest input it reads

        def __init__(self, n_items: int, d: int = 8):
            super().__init__(n_items, d)
            self.emb = torch.nn.Embedding(n_items + 1, d, padding_idx=0)

        def forward(self, items):
            return self.emb(items).cumsum(1)

        def item_embeddings(self):
            return self.emb.weight[1:]

    try:
        m = MODELS.build("test_mean", C, d=4)
        assert m.name == "test_mean" and "test_mean" in MODELS.names()
        assert m.get_params() == {"d": 4} and m(batch()).shape == (4, 8, 4) and m.max_len == 50
        with pytest.raises(ConfigError, match=r"model\.d.*valid integer"):
            MODELS.build("test_mean", C, d="four")
    finally:
        MODELS.unregister("test_mean")


def test_encoder_contract_is_checked_at_construction():
    class NoMaxLen(Encoder):
        def __init__(self, n_items: int):
            super().__init__(n_items, 4)

    class Masked(NoMaxLen):
        causal = False
        max_len = 10

    with pytest.raises(ConfigError, match="'NoMaxLen' must set max_len"):
        NoMaxLen(C)
    with pytest.raises(ConfigError, match="'Masked' is not causal, so it must set mask_token"):
        Masked(C)
    Masked.mask_token = C  # a real item id, not a token of its own
    with pytest.raises(ConfigError, match="mask_token"):
        Masked(C)
    Masked.mask_token = C + 1
    with pytest.raises(ConfigError, match=r"must set mask_prob \(a number in \(0, 1\]\), got None"):
        Masked(C)
    Masked.mask_prob = 0.3
    assert Masked(C).mask_prob == 0.3
    b = make("bert4rec")
    assert (b.max_len, b.mask_token, b.mask_prob) == (12, C + 1, 0.2)
    assert make("gru4rec").max_len == 12 and make("pop").max_len == 1 and make("sasrec").mask_prob is None


def test_gru4rec_n_layers_was_renamed():
    with pytest.raises(ConfigError, match=r"^model\.n_layers was renamed to model\.n_blocks$"):
        MODELS.build("gru4rec", C, n_layers=2)
    assert make("gru4rec").gru.num_layers == 2


def test_custom_models_doc_example_matches_gru4rec():
    """The GRU code shown in docs/custom_models.md runs and computes what seqrec's gru4rec computes."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "custom_models.md").read_text()
    code = re.search(r"```python\n(.*?@MODELS\.register\(\"gru4rec\"\).*?)```", doc, re.S).group(1)
    ns: dict = {}
    exec(code.replace('"gru4rec"', '"test_doc_gru"'), ns)
    try:
        ours = make("gru4rec")
        theirs = MODELS.build("test_doc_gru", C, **TINY["gru4rec"]).eval()
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(theirs(batch()), ours(batch()))
    finally:
        MODELS.unregister("test_doc_gru")


def test_sasrec_reference_layout_is_causal_padding_invariant_and_distinct():
    torch.manual_seed(0)
    ref = MODELS.build("sasrec", C, **{**TINY["sasrec"], "block": "sasrec"}).eval()
    torch.manual_seed(0)
    pre = MODELS.build("sasrec", C, **TINY["sasrec"]).eval()
    x = batch()
    h = ref(x)
    assert torch.isfinite(h).all() and (h[x == 0] == 0).all()
    assert not torch.allclose(h, pre(x))  # same weights, other layout: other function
    y = x.clone()
    y[:, -1] = (y[:, -1] % C) + 1  # change the last item: earlier positions must not move
    assert torch.allclose(ref(y)[:, :-1], h[:, :-1], atol=1e-6)
    wide = torch.cat([torch.zeros(4, 3, dtype=torch.long), x], dim=1)  # more left padding
    assert torch.allclose(ref(wide)[:, -1], h[:, -1], atol=1e-5)
    with pytest.raises(ConfigError, match="model.block"):
        MODELS.build("sasrec", C, block="post")


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
@pytest.mark.parametrize("loss", ["ce", "sce"])
def test_two_part_backward_gives_autograd_gradients(name, loss):
    """The trainer's backward (loss gradients first, then the encoder's, the table's dense and sparse
    parts added by hand) computes what one ``backward()`` computes, and leaves a dense table gradient."""
    from seqrec.losses import LossContext
    from seqrec.training.backward import backward

    grads = []
    for two_part in (False, True):
        m = make(name).train()
        torch.manual_seed(1)  # the same dropout masks
        x = m(batch()).reshape(-1, m.d)
        table = m.item_embeddings()
        w = table.view_as(table) if two_part else table
        ctx = LossContext(capacity=x.shape[0], generator=torch.Generator().manual_seed(0))
        value = LOSSES.build(loss)(x, torch.arange(x.shape[0]) % C, w, ctx)
        backward(value, x, w, table if two_part else None, lambda part: None, False)
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and not grads[1]["item_emb.weight"].is_sparse
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k].to_dense(), rtol=1e-5, atol=1e-7)


def test_dropout_mask_rate_scale_and_seed():
    """The CPU dropout's masks: the kept share is 1 - p, kept entries are scaled by 1 / (1 - p), the
    masks follow torch's seed (so runs and resumes repeat), eval and p = 0 are the identity, and the
    gradient goes through the same mask."""
    from seqrec.models.dropout import Dropout

    drop = Dropout(0.2)
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(7)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.005 and torch.allclose(y[y != 0], torch.tensor(1.25))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    torch.manual_seed(7)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # the next draw is another mask
    assert drop.eval()(x) is x and Dropout(0.0)(x) is x
