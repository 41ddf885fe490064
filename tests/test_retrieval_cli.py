"""``seqrec index build/info`` and ``seqrec bench retrieval`` on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from seqrec import SeqRec
from seqrec.cli import main
from seqrec.errors import ConfigError
from seqrec.retrieval import load_retriever

pytest.importorskip("faiss", reason="the index and bench commands are exercised with faiss backends")

SMALL = {"data.options": {"synthetic": {"n_users": 200, "n_items": 300, "n_clusters": 6, "mean_len": 10.0,
                                        "max_len": 20}},
         "model.d": 8, "model.max_len": 20, "model.n_blocks": 1, "train.epochs": 1, "train.num_threads": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "run"
    SeqRec(overrides=SMALL).fit(log=lambda s: None).save(path)
    return path


def test_build_index_saves_under_run_dir(run):
    rec = SeqRec.load(run)
    out, info = rec.build_index("faiss-hnsw", {"ef_search": 40, "M": 8})
    assert out == run / "index" / "faiss-hnsw" and (out / "retriever.json").is_file()
    assert info["items"] == rec.data_.n_items and info["params"]["ef_search"] == 40
    e = rec.item_embeddings()
    _, ids = load_retriever(out).search(e[:5], 3)
    exact = np.argsort(-(e[:5] @ e.T), axis=1, kind="stable")[:, :3]
    assert (ids == exact).mean() >= 0.9


def test_index_build_and_info_commands(run, capsys):
    assert main(["index", "build", str(run), "--retrieval", "faiss-ivf", "--set", "eval.retrieval_params.nprobe=3",
                 "--set", "eval.retrieval_params.nlist=6"]) == 0
    out = capsys.readouterr().out
    n = SeqRec.load(run).data_.n_items
    assert f"faiss-ivf index over {n} items (d=8)" in out and "nprobe=3" in out
    r = load_retriever(run / "index" / "faiss-ivf")
    assert r.params["nprobe"] == 3 and r.params["nlist"] == 6
    assert main(["index", "info", str(run / "index" / "faiss-ivf")]) == 0
    assert f"faiss-ivf: {n} items, d=8" in capsys.readouterr().out


def test_bad_set_values_are_config_errors(run, capsys):
    assert main(["index", "build", str(run), "--set", "nprobe=3"]) == 2
    assert "only takes eval.retrieval_params.* keys" in capsys.readouterr().err
    assert main(["index", "build", str(run), "--backend", "faiss-ivf"]) == 2
    assert "--backend was renamed to --retrieval" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown key retrieval.nprobe"):
        SeqRec.load(run).build_index("faiss-hnsw", {"nprobe": 3})


def test_bench_retrieval_tiny(tmp_path):
    from seqrec.cli.bench import bench

    res = CliRunner().invoke(bench, ["retrieval", "--catalog", "3000", "--dim", "8", "--queries", "60",
                                     "--repeats", "1", "--embeddings", "clustered,gaussian", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    recs = json.loads((tmp_path / "results.json").read_text())
    keys = {"backend", "embeddings", "catalog", "dim", "queries", "build_s", "qps", "recall@10", "memory_mb",
            "params"}
    assert all(keys <= set(r) for r in recs)
    assert {r["backend"] for r in recs} == {"torch", "faiss-flat", "faiss-ivf", "faiss-hnsw"}
    assert {r["embeddings"] for r in recs} == {"clustered", "gaussian"}
    for r in recs:
        if r["backend"] in ("torch", "faiss-flat"):
            assert r["recall@10"] == 1.0
        assert r["qps"] > 0 and r["memory_mb"] > 0
    # several settings per approximate backend, exactly one of them the default
    for b in ("faiss-ivf", "faiss-hnsw"):
        mine = [r for r in recs if r["backend"] == b and r["embeddings"] == "clustered"]
        assert len(mine) >= 3 and sum(r["default"] for r in mine) == 1
    assert (tmp_path / "table.md").read_text().count("\n| clustered") >= 4
    assert (tmp_path / "recall_vs_qps.png").stat().st_size > 1000


def test_saved_index_is_reused_while_it_matches_the_model(tmp_path, tiny_overrides, monkeypatch):
    import torch

    import seqrec.retrieval as retrieval

    run = tmp_path / "run"
    SeqRec(model="sasrec", loss="ce", overrides=tiny_overrides).fit(log=lambda s: None).save(run)
    SeqRec.load(run).build_index("faiss-hnsw", {"M": 8, "ef_search": 64})
    rec = SeqRec.load(run)
    expected = rec.evaluate(retrieval="torch")

    def no_build(*a, **k):
        raise AssertionError("built a fresh index instead of reusing the saved one")

    monkeypatch.setattr(retrieval, "build_retriever", no_build)
    got = rec._retriever("faiss-hnsw", {"ef_search": 80})  # search-time parameter: applied to the saved one
    assert got.params["ef_search"] == 80 and got.params["M"] == 8
    assert rec.evaluate(retrieval="faiss-hnsw")["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=0.05)
    with pytest.raises(AssertionError, match="fresh index"):  # another build-time parameter: rebuild
        rec._retriever("faiss-hnsw", {"M": 16})
    with torch.no_grad():  # the model changed since the index was built: warn and rebuild
        rec.model_.item_emb.weight.mul_(1.5)
    with pytest.warns(RuntimeWarning, match="other item embeddings"), pytest.raises(AssertionError):
        rec._retriever("faiss-hnsw", {})
