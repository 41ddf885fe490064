"""seqrec plan: predict_memory's components and the command (no dataset needed with --catalog)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from seqrec.cli.plan import plan
from seqrec.plan import predict_memory
from seqrec.registry import LOSSES


@pytest.mark.parametrize("model,heads", [("sasrec", 1), ("bert4rec", 2)])
def test_parameter_count_matches_the_model(model, heads):
    from seqrec.registry import MODELS

    enc = MODELS.build(model, 97, d=16, n_blocks=2, n_heads=heads, max_len=12)
    n_params = sum(p.numel() for p in enc.parameters())
    mem = predict_memory(97, 4, 12, 16, 2, heads, "ce", model=model)
    assert mem["parameters"] == 4 * n_params
    assert mem["optimizer_state"] == 2 * mem["parameters"] == 2 * mem["gradients"]


def test_components_add_up_and_loss_uses_its_prediction():
    mem = predict_memory(100_000, 64, 200, 64, 2, 1, "gbce", {"n_negatives": 128}, tokens=12_800)
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    emb_grad = 100_000 * 64 * 4  # counted under "gradients", not again under "loss"
    assert mem["loss"] == LOSSES.build("gbce", n_negatives=128).predict_bytes(12_800, 100_000, 64, 4) - emb_grad
    # tokens defaults to every position of the padded batch
    full = predict_memory(100_000, 64, 200, 64, 2, 1, "ce")
    assert full["loss"] == LOSSES.build("ce").predict_bytes(64 * 200, 100_000, 64, 4) - emb_grad


def test_sce_sized_with_the_training_capacity():
    # training passes ctx.capacity = batch_size * max_len and SCE's "auto" buckets follow it;
    # plan must size them the same way, also when fewer tokens reach the loss
    emb_grad = 100_000 * 64 * 4
    mem = predict_memory(100_000, 64, 200, 64, 2, 1, "sce", tokens=1_000)
    sce = LOSSES.build("sce")
    assert mem["loss"] == sce.predict_bytes(1_000, 100_000, 64, 4, capacity=64 * 200) - emb_grad
    assert mem["loss"] != sce.predict_bytes(1_000, 100_000, 64, 4) - emb_grad


def test_exact_ce_fits_a_million_items():
    # neither exact CE holds the [12,800, 1M] float32 logits (51 GB): ce one block of positions at
    # a time, ce_chunked one chunk of items
    ce = predict_memory(1_000_000, 64, 200, 64, 2, 1, "ce")
    ch = predict_memory(1_000_000, 64, 200, 64, 2, 1, "ce_chunked")
    assert ce["loss"] < 2**30 and ch["loss"] < 2**30
    assert ce["activations"] == ch["activations"]


def test_plan_command_prints_components_and_every_loss():
    res = CliRunner().invoke(plan, ["--catalog", "50000", "--loss", "sampled_softmax",
                                    "--set", "train.batch_size=32", "--set", "loss.n_negatives=500"])
    assert res.exit_code == 0, res.output
    for word in ("parameters", "optimizer_state", "activations", "| ce |", "| ce_chunked |",
                 "sampled_softmax (configured)"):
        assert word in res.output
    assert "N=" in res.output and "n_negatives" in res.output
