"""``seqrec index build/info`` and ``seqrec bench retrieval`` on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from seqrec.errors import ConfigError
from seqrec.retrieval import cli as rcli
from seqrec.retrieval import load_retriever

pytest.importorskip("faiss", reason="the index and bench commands are exercised with faiss backends")


def emb(n: int = 300, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_build_index_saves_under_run_dir(tmp_path):
    e = emb()
    out, info = rcli.build_index(tmp_path, "faiss-hnsw", {"ef_search": 40, "M": 8}, item_emb=e)
    assert out == tmp_path / "index" / "faiss-hnsw" and (out / "retriever.json").is_file()
    assert info["items"] == 300 and info["params"]["ef_search"] == 40
    r = load_retriever(out)
    _, ids = r.search(e[:5], 3)
    exact = np.argsort(-(e[:5] @ e.T), axis=1, kind="stable")[:, :3]
    assert (ids == exact).mean() >= 0.9


def test_index_build_and_info_commands(tmp_path, monkeypatch):
    e = emb()
    monkeypatch.setattr(rcli, "_model_item_embeddings", lambda run_dir: e)
    runner = CliRunner()
    res = runner.invoke(rcli.index, ["build", str(tmp_path), "--backend", "faiss-ivf", "--set", "nprobe=3",
                                     "--set", "nlist=6"])
    assert res.exit_code == 0, res.output
    assert "faiss-ivf index over 300 items (d=8)" in res.output and "nprobe=3" in res.output
    r = load_retriever(tmp_path / "index" / "faiss-ivf")
    assert r.params["nprobe"] == 3 and r.params["nlist"] == 6
    res = runner.invoke(rcli.index, ["info", str(tmp_path / "index" / "faiss-ivf")])
    assert res.exit_code == 0 and "faiss-ivf: 300 items, d=8" in res.output


def test_bad_set_values_are_config_errors():
    assert rcli.parse_sets(["nprobe=32", "gpu=false", "device=cpu"]) == {"nprobe": 32, "gpu": False,
                                                                          "device": "cpu"}
    with pytest.raises(ConfigError, match="expected param=value"):
        rcli.parse_sets(["nprobe"])
    with pytest.raises(ConfigError, match="unknown key retrieval.nprobe"):
        rcli.build_index(".", "faiss-hnsw", {"nprobe": 3}, item_emb=emb())


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
    from seqrec import SeqRec

    run = tmp_path / "run"
    SeqRec(model="sasrec", loss="ce", overrides=tiny_overrides).fit(log=lambda s: None).save(run)
    rcli.build_index(run, "faiss-hnsw", {"M": 8, "ef_search": 64})
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
