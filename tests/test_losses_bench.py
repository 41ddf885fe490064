"""The loss benchmark end to end on small cases: records, skip rule, predictions vs measured RSS."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from seqrec.bench.losses import run_cases
from seqrec.cli.bench import bench

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS is read from /proc (Linux)")
KEYS = {"loss", "catalog", "tokens", "dim", "peak_mb", "baseline_mb", "step_s", "predicted_mb", "params",
        "status"}


@linux
@pytest.mark.slow
def test_predictions_match_measured_net_peak():
    # sizes where the loss's buffers (tens of MB) dominate allocator noise
    recs = run_cases(["ce_chunked", "sampled_softmax"], [20000], tokens=2560, dim=64, seq_len=256,
                     device="cpu", repeats=1, log=lambda m: None)
    for r in recs:
        assert r["status"] == "ok", r
        net = r["peak_mb"] - r["baseline_mb"]
        assert abs(r["predicted_mb"] - net) <= 0.25 * net, r


@linux
@pytest.mark.slow
def test_command_writes_records_and_skips_what_cannot_fit(tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(bench, ["losses", "--catalog", "300,10000000000", "--tokens", "64", "--dim", "8",
                                       "--losses", "ce,bce", "--seq-len", "16", "--repeats", "1",
                                       "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = json.loads((out / "results.json").read_text())
    assert len(recs) == 4 and all(KEYS <= set(r) for r in recs)
    by = {(r["loss"], r["catalog"]): r for r in recs}
    assert by["ce", 300]["status"] == "ok" and by["bce", 300]["status"] == "ok"
    assert by["ce", 300]["params"] == {} and by["bce", 300]["params"]["n_negatives"] == 1
    big = by["ce", 10**10]
    assert big["status"] == "skipped" and "predicted" in big["note"] and big["peak_mb"] is None
    assert (out / "table.md").exists() and (out / "losses.png").stat().st_size > 0


def test_command_rejects_unknown_loss(tmp_path):
    res = CliRunner().invoke(bench, ["losses", "--losses", "ce,nope", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "nope" in str(res.exception or res.output)
