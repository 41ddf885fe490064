"""seqrec export (issue #24): a run -> a bundle whose torch-free answers equal the run's own.

Parity on every user of a small synthetic set for SASRec and BERT4Rec: the bundle's user vectors
against ``seqrec.evaluation.user_vectors`` (1e-5) and its top-10 against ``SeqRec.recommend`` (exact
backend); the manifest; atomic output; the approximate index; the CLI."""

import json
import os

import numpy as np
import polars as pl
import pytest
from conftest import TINY

from seqrec import SeqRec
from seqrec.cli import main
from seqrec.errors import SeqrecError

pytest.importorskip("onnxruntime", reason="export/serving tests need onnxruntime (pip install 'seqrec[serve]')")
pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install 'seqrec[export]')")

from seqrec.export import export_bundle  # noqa: E402
from seqrec.serving import Recommender  # noqa: E402
from seqrec.serving.layout import sha256_file  # noqa: E402

DATA = {"synthetic": {**TINY["synthetic"], "n_users": 300}}
OVERRIDES = {"data.options": DATA, "model.d": 16, "model.max_len": 20, "model.n_blocks": 2,
             "train.epochs": 2, "train.batch_size": 64, "train.max_time_s": None, "train.num_threads": 1}


_FITTED: dict = {}


def _fit(name, tmp_path_factory):
    """(SeqRec, run dir, ONNX bundle dir) of a briefly trained ``name`` model, once per module."""
    if name not in _FITTED:
        base = tmp_path_factory.mktemp(name)
        extra = {"model.n_heads": 2} if name == "bert4rec" else {}
        rec = SeqRec(model=name, loss="ce", overrides={**OVERRIDES, **extra}).fit(
            run_dir=base / "run", log=lambda s: None)
        _FITTED[name] = rec, base / "run", export_bundle(base / "run", base / "bundle")
    return _FITTED[name]


@pytest.fixture(scope="module", params=["sasrec", "bert4rec"])
def fitted(request, tmp_path_factory):
    return _fit(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def sas(tmp_path_factory):
    return _fit("sasrec", tmp_path_factory)


def _histories(rec):
    """Every user's whole history as raw ids, keyed by raw user id."""
    d = rec.data_
    return {u: d.item_ids[d.full.items[d.full.offsets[i]:d.full.offsets[i + 1]]].tolist()
            for i, u in enumerate(d.user_ids.tolist())}


def test_user_vectors_match_torch(fitted):
    from seqrec.evaluation import user_vectors

    rec, _, bundle = fitted
    d = rec.data_
    rows = np.flatnonzero(d.full.lengths > 0)
    want = user_vectors(rec.model_, d.full.subset(rows), rec.model_.max_len).numpy()
    seqs = [d.full.items[d.full.offsets[i]:d.full.offsets[i + 1]] for i in rows]
    got = Recommender.from_bundle(bundle).user_vectors(seqs)
    assert got.shape == want.shape and len(rows) >= 250
    assert np.abs(got - want).max() <= 1e-5


def test_top10_equals_seqrec_recommend(fitted):
    rec, _, bundle = fitted
    hist = _histories(rec)
    want = rec.recommend(histories=hist, k=10, retrieval="torch")
    got = Recommender.from_bundle(bundle).recommend(hist, k=10)
    assert got.columns == ["user", "item", "score", "rank"] and got.height == want.height == 10 * len(hist)
    assert got["user"].to_list() == want["user"].to_list()
    assert got["item"].to_list() == want["item"].to_list()
    assert got["rank"].to_list() == want["rank"].to_list()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-5)


def test_filters_and_fallbacks_equal_seqrec_recommend(fitted):
    rec, _, bundle = fitted
    ids = rec.data_.item_ids[1:].tolist()
    hist = {"a": ids[:5] + [99999991], "cold": [99999992], "empty": [], "rep": [ids[3]] * 4 + [ids[7]]}
    kw = {"items": ids[:30], "exclude_items": ids[10:14]}
    with pytest.warns(UserWarning):
        want = rec.recommend(histories=hist, k=8, filter_seen=False, **kw)
    with pytest.warns(UserWarning, match="not in the trained catalog"):
        got = Recommender.from_bundle(bundle).recommend(hist, k=8, exclude_seen=False, **kw)
    assert got.select("user", "item", "rank").equals(want.select("user", "item", "rank"))
    assert set(got["item"].to_list()) <= set(ids[:10] + ids[14:30])


def test_manifest_checksums_ids_and_popularity(fitted):
    rec, run, bundle = fitted
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["catalog"]["fingerprint"] == rec.data_.meta["fingerprint"]
    assert m["model"]["max_len"] == rec.model_.max_len and m["model"]["causal"] == rec.model_.causal
    assert m["retrieval"] == {"backend": "torch", "exact": True, "params": {}}
    assert m["encoder"]["check"]["max_abs_diff"] <= 1e-5
    assert m["versions"]["torch"] and m["versions"]["onnx"]
    assert sorted(m["files"]) == sorted(p.name for p in bundle.iterdir() if p.name != "manifest.json")
    assert all(sha256_file(bundle / f) == h for f, h in m["files"].items())
    assert pl.read_parquet(bundle / "item_ids.parquet")["item"].to_list() == rec.data_.item_ids[1:].tolist()
    assert np.array_equal(np.load(bundle / "popularity.npy"), rec.data_.item_pop[1:])
    assert np.array_equal(np.load(bundle / "item_emb.npy"), rec.item_embeddings())


def test_torchscript_bundle_agrees(sas, tmp_path):
    rec, run, _ = sas
    b = export_bundle(run, tmp_path / "ts", format="torchscript")
    hist = dict(list(_histories(rec).items())[:50])
    got = Recommender.from_bundle(b).recommend(hist, k=10)
    assert got["item"].to_list() == rec.recommend(histories=hist, k=10)["item"].to_list()


def test_approximate_index_is_shipped_and_respects_filters(sas, tmp_path):
    pytest.importorskip("faiss", reason="the faiss-ivf backend needs faiss")
    rec, run, _ = sas
    b = export_bundle(run, tmp_path / "ivf", retrieval="faiss-ivf",
                      retrieval_params={"nlist": 2, "target_recall": None})
    m = json.loads((b / "manifest.json").read_text())
    assert m["retrieval"]["backend"] == "faiss-ivf" and not m["retrieval"]["exact"]
    assert (b / "index" / "index.faiss").is_file()
    r = Recommender.from_bundle(b)
    assert r.backend == "faiss-ivf"
    hist = dict(list(_histories(rec).items())[:40])
    got = r.recommend(hist, k=10)
    for u, g in got.group_by("user", maintain_order=True):
        assert not set(g["item"].to_list()) & set(hist[u[0]]) and g.height == 10
    exact_rec = Recommender.from_bundle(b, exact=True)
    exact = exact_rec.recommend(hist, k=10)
    with pytest.raises(SeqrecError, match="searches exactly"):
        exact_rec.set_params(nprobe=2)
    assert r.set_params(nprobe=2).recommend(hist, k=10)["item"].to_list() == exact["item"].to_list()  # every cell
    overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(
        got.group_by("user", maintain_order=True).agg("item")["item"].to_list(),
        exact.group_by("user", maintain_order=True).agg("item")["item"].to_list(), strict=True)])
    assert overlap >= 0.9


def test_export_is_atomic_and_refuses_a_used_directory(sas, tmp_path, monkeypatch):
    _, run, _ = sas
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep")
    with pytest.raises(SeqrecError, match="not an empty directory"):
        export_bundle(run, tmp_path / "used")
    import seqrec.export.bundle as eb

    def broken(*a, **k):
        raise SeqrecError("boom")

    monkeypatch.setattr(eb, "check_encoder", broken)
    with pytest.raises(SeqrecError, match="boom"):
        export_bundle(run, tmp_path / "new" / "deeper" / "b")
    assert sorted(os.listdir(tmp_path)) == ["used"]  # no bundle, no temporary directory


def test_cli_export(sas, tmp_path, capsys):
    _, run, _ = sas
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "encoder.onnx").is_file()
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 2
    assert main(["export", str(run), "--retrieval", "faiss-ivf", "--set", "eval.retrieval_params.nlist=2",
                 "--set", "eval.retrieval_params.target_recall=null", "--out", str(tmp_path / "ivf")]) == 0
    params = json.loads((tmp_path / "ivf" / "manifest.json").read_text())["retrieval"]["params"]
    assert params["nlist"] == 2 and params["target_recall"] is None
    assert main(["export", str(run), "--retrieval", "nope", "--out", str(tmp_path / "c")]) == 2
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and not (tmp_path / "c").exists()
