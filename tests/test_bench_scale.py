"""`seqrec bench scale`: a record per (catalog, loss), each case in a fresh process."""

from __future__ import annotations

import json

from click.testing import CliRunner

from seqrec.cli.bench import bench


def test_scale_trains_each_case_and_reports_popularity(tmp_path):
    out = tmp_path / "scale"
    res = CliRunner().invoke(bench, ["scale", "--items", "400", "--loss", "sce,ce", "--users", "300",
                                     "--budget", "2", "--steps", "1", "--valid-users", "100", "--threads", "1",
                                     "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in recs] == ["sce", "ce"]
    for r in recs:
        assert r["note"] == "", r["note"]
        assert 300 <= r["items"] <= 400  # the catalog is the items that occur
        assert r["step_s"] > 0 and r["epoch_s_projected"] > 0 and r["peak_rss_mb"] > 50
        assert 0 <= r["valid_ndcg@10"] <= 1 and 0 < r["pop_ndcg@10"] <= 1
    assert (out / "scale.png").stat().st_size > 1000
    assert (out / "data").is_dir()  # the prepared data set, reused by a second run


def test_a_loss_that_cannot_fit_is_reported_not_run(tmp_path, monkeypatch):
    from seqrec.bench import scale
    from seqrec.training import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: (10 * 2**20, "RAM"))
    monkeypatch.setattr(scale, "prepare", lambda items, users, cache, log: tmp_path)
    recs = scale.run_all([1_000_000], ["ce"], 300, 1, 1, 10, tmp_path, 1, log=lambda s: None)
    assert recs[0]["note"].startswith("does not fit (predicted") and recs[0]["predicted_mb"] > 1000
    assert "step_s" not in recs[0]
