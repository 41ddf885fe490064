"""`seqrec bench fidelity`: agreement of each loss with full CE on a run's own batches."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from seqrec.api import SeqRec
from seqrec.bench.fidelity import parse_spec
from seqrec.cli.bench import bench
from seqrec.errors import ConfigError


def test_parse_spec():
    assert parse_spec("sce") == ("sce", {})
    assert parse_spec("sce:n_buckets=8, mix_x=false") == ("sce", {"n_buckets": 8, "mix_x": False})
    with pytest.raises(ConfigError):
        parse_spec("sce:n_buckets")


def test_fidelity_exact_losses_agree_and_sampled_do_not(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    SeqRec(overrides=tiny_overrides).fit(run_dir=run, log=lambda s: None)
    out = tmp_path / "fid"
    res = CliRunner().invoke(bench, ["fidelity", "--run", str(run), "--batches", "2", "--out", str(out),
                                       "--loss", "ce_chunked:chunk_size=7",
                                       "--loss", "sce:n_buckets=1,bucket_size_x=100000,bucket_size_y=100000",
                                       "--loss", "bce"])
    assert res.exit_code == 0, res.output
    recs = {r["loss"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(recs) == {"ce_chunked", "sce", "bce"}
    for exact in ("ce_chunked", "sce"):  # chunked CE and SCE with one covering bucket are CE
        r = recs[exact]
        assert r["value_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert r["cos_dx"] == pytest.approx(1.0, abs=1e-5) and r["cos_dw"] == pytest.approx(1.0, abs=1e-5)
    assert recs["sce"]["coverage"] == 1.0
    assert recs["bce"]["cos_dw"] < 0.99  # one negative per position is a different gradient
    assert (out / "table.md").exists()
    assert (out / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
