"""``seqrec finetune`` / ``SeqRec.finetune``: every method end to end, the catalog rules, the mistakes."""

import json

import numpy as np
import pytest
import torch

from seqrec.api import SeqRec
from seqrec.cli import main
from tests.conftest import TINY

FAST = ["--set", f"data.options={json.dumps(TINY)}", "--set", "model.d=16", "--set", "model.max_len=20",
        "--set", "model.n_blocks=1", "--set", "model.ffn_mult=4", "--set", "train.batch_size=32",
        "--set", "train.num_threads=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "base"
    assert main(["fit", "--out", str(out), "--no-baseline", "--set", "train.epochs=2", *FAST]) == 0
    return out


@pytest.mark.parametrize("peft", ["sparsegrad", "lora", "meprop", "topk", "full"])
def test_each_method_gives_an_ordinary_run(base, tmp_path, peft, capsys):
    out = tmp_path / peft
    assert main(["finetune", str(base), "--dataset", "synthetic", "--peft", peft, "--set", "train.epochs=1",
                 "--out", str(out)]) == 0
    for f in ("config.yaml", "model.pt", "data/meta.json", "results.json", "train_info.json"):
        assert (out / f).exists(), f
    rec, b = SeqRec.load(out), SeqRec.load(base)
    # plain linears exported: the same state-dict layout as the base model, other weights
    assert rec.model_.state_dict().keys() == b.model_.state_dict().keys()
    changed = {k for k, v in rec.model_.state_dict().items() if not torch.equal(v, b.model_.state_dict()[k])}
    assert changed and ("blocks.0.up.weight" in changed or "blocks.0.down.weight" in changed)
    if peft != "full":  # the item table is frozen unless --train-embeddings
        assert "item_emb.weight" not in changed and "blocks.0.qkv.weight" not in changed
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"]["ndcg@10"] == pytest.approx(rec.evaluate(split="test", metrics_only=True)["ndcg@10"])
    assert json.loads((out / "train_info.json").read_text())["finetune"]["peft"] == peft
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    assert "ndcg@10" in json.loads(capsys.readouterr().out)["test"]
    if peft == "lora":  # its checkpoint holds the method's layers: a resume is refused in one line
        assert main(["fit", "--resume", str(out), "--set", "train.epochs=3"]) == 2
        assert "fine-tuned run" in capsys.readouterr().err


def _new_items_file(base, path, n_new=3):
    """The base's interactions of 60 users in 'user item' lines, plus n_new items never seen."""
    data = SeqRec.load(base).data_
    lines = []
    for u in range(60):
        row = data.full.items[data.full.offsets[u]:data.full.offsets[u + 1]]
        lines += [f"{data.user_ids[u]} {data.item_ids[i]}" for i in row]
        lines += [f"{data.user_ids[u]} {10_000 + (u % n_new)}"] if u < 30 else []
    path.write_text("\n".join(lines) + "\n")
    return path


def test_new_items_refused_or_appended_with_train_embeddings(base, tmp_path, capsys):
    f = _new_items_file(base, tmp_path / "new.txt")
    args = ["finetune", str(base), "--dataset", str(f), "--format", "sasrec", "--set", "train.epochs=1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 of the" in err and "--train-embeddings" in err
    assert not (tmp_path / "a").exists()
    out = tmp_path / "b"
    assert main([*args, "--train-embeddings", "--peft", "lora", "--out", str(out)]) == 0
    rec, b = SeqRec.load(out), SeqRec.load(base)
    C = b.data_.n_items
    assert rec.data_.n_items == C + 3 and list(rec.data_.item_ids[C + 1:]) == [10_000, 10_001, 10_002]
    assert np.array_equal(rec.data_.item_ids[:C + 1], b.data_.item_ids)
    assert not torch.equal(rec.model_.item_emb.weight[:C], b.model_.item_emb.weight)  # trained
    assert len(rec.recommend(k=3)) > 0


def test_api_in_memory(base):
    rec = SeqRec.load(base).finetune("synthetic", peft="topk", budget=0.05, overrides={"train.epochs": 1},
                                     log=lambda s: None)
    assert rec.path_ is None and rec.fit_info_["finetune"]["budget"] == 0.05
    assert rec.evaluate(metrics_only=True)["ndcg@10"] > 0


@pytest.mark.parametrize("args, hint", [
    (["--peft", "sparsgrad"], "did you mean 'sparsegrad'"),
    (["--budget", "0"], "--budget must be in (0, 1]"),
    (["--budget", "1.5"], "--budget must be in (0, 1]"),
    (["--set", "model.d=32"], "cannot change model.*"),
    (["--dataset", "synthetik"], "did you mean 'synthetic'"),
])
def test_mistakes_are_one_line_and_leave_nothing(base, tmp_path, capsys, args, hint):
    argv = ["finetune", str(base), "--dataset", "synthetic", "--out", str(tmp_path / "x")]
    if "--dataset" in args:
        argv[3] = args[1]
        args = []
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0 and hint in err
    assert not (tmp_path / "x").exists()


def test_missing_or_unfinished_base_run(base, tmp_path, capsys):
    assert main(["finetune", str(tmp_path / "nope"), "--dataset", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.yaml").write_text((base / "config.yaml").read_text())
    assert main(["finetune", str(half), "--dataset", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "missing model.pt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_failure_after_checkpoints_leaves_nothing(base, tmp_path):
    from seqrec.training import Callback

    class Boom(Callback):
        def on_fit_end(self, trainer, state):
            assert trainer.run.last.exists()  # a checkpoint was written: still removed below
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        SeqRec.load(base).finetune("synthetic", peft="lora", out=tmp_path / "x", overrides={"train.epochs": 1},
                                   callbacks=[Boom()], log=lambda s: None)
    assert not (tmp_path / "x").exists()


def test_used_out_dir_refused(base, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("x")
    assert main(["finetune", str(base), "--dataset", "synthetic", "--out", str(tmp_path / "used")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "used" / "keep.txt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
@pytest.mark.parametrize("peft", ["sparsegrad", "topk", "lora", "meprop", "full"])
def test_finetune_on_cuda(base, tmp_path, peft):
    out = tmp_path / peft
    assert main(["finetune", str(base), "--dataset", "synthetic", "--peft", peft, "--set", "train.epochs=1",
                 "--set", "train.device=cuda", "--out", str(out)]) == 0
    rec = SeqRec.load(out)  # the exported weights load on the CPU
    assert next(rec.model_.parameters()).device.type == "cpu"
    assert json.loads((out / "results.json").read_text())["test"]["ndcg@10"] > 0


def test_bench_period_split_and_one_seed():
    from seqrec.bench.finetune import periods, run_seed, summary
    from seqrec.data import load_interactions

    n = len(load_interactions("synthetic", **TINY)[1].items)
    for how in ("time", "position"):
        old, new, got = periods("synthetic", None, how, **TINY)
        assert got == how and np.array_equal(old.item_ids, new.item_ids)
        assert len(old.full.items) + len(new.full.items) == n and len(new.test) > 0
        if how == "time":  # everything in the older part comes before everything in the newer part
            assert old.timestamps.max() < new.timestamps.min()
    ov = {"model.d": 16, "model.max_len": 20, "model.n_blocks": 1, "train.batch_size": 16}
    records = run_seed("synthetic", old, new, "position", 0, ["topk", "lora"], 0.05, 1, 1, ov, log=lambda s: None)
    rows = summary(records)
    assert [r["peft"] for r in rows] == ["none", "topk", "lora"] and all(r["seeds"] == 1 for r in rows)
    topk, lora = records[1], records[2]
    # top-k: at most k = 5% of each 64x16 weight per step (2 linears) + the 64 + 16 biases
    assert 0 < topk["updated_per_step"] <= 2 * round(0.05 * 1024) + 80
    assert 0 < lora["updated_per_step"] <= lora["trainable_values"] and lora["optimizer_state_kb"] > 0
    assert topk["forgetting"] == pytest.approx(topk["base_old_ndcg@10"] - topk["old_ndcg@10"])


def test_bert4rec_sparsegrad_with_new_items_keeps_the_mask_row(tiny_overrides):
    import polars as pl

    base = SeqRec(model="bert4rec", overrides={**tiny_overrides, "train.epochs": 1}).fit(log=lambda s: None)
    d, C = base.data_, base.data_.n_items
    users = np.repeat(d.user_ids, d.full.lengths)
    frame = pl.DataFrame({"user": np.concatenate([users, d.user_ids[:20]]),
                          "item": np.concatenate([d.item_ids[d.full.items], np.full(20, 777)]),
                          "timestamp": np.arange(len(users) + 20)})
    tuned = base.finetune(frame, peft="sparsegrad", train_embeddings=True, overrides={"train.epochs": 1},
                          log=lambda s: None)
    m, b = tuned.model_, base.model_
    assert tuned.data_.n_items == C + 1 and m.mask_token == C + 2
    assert m.item_emb.weight.shape[0] == C + 1 and m.item_emb.num_embeddings == C + 3
    assert not torch.equal(m.item_emb.extra, b.item_emb.extra)  # the mask token's row trains with the table
    assert m.item_emb(torch.zeros(1, 1, dtype=torch.long)).abs().sum() == 0  # padding reads zero
    assert type(m.blocks[0].up) is torch.nn.Linear and m.blocks[0].up.out_features == 4 * m.d
    assert not torch.equal(m.blocks[0].up.weight, b.blocks[0].up.weight)


def test_bench_finetune_command_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "finetune", "--dataset", "synthetic", "--seeds", "1", "--methods", "topk",
                 "--pre-epochs", "1", "--ft-epochs", "1", "--split", "position", *FAST, "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["peft"] for r in records} == {"none", "topk"} and all(r["split"] == "position" for r in records)
    assert (out / "finetune.png").stat().st_size > 0 and "| topk |" in (out / "table.md").read_text()
