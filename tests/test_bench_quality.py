"""``seqrec bench quality`` with a fake ``seqrec fit`` (the subprocess runner is replaced)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqrec.bench import quality
from seqrec.cli import main

NDCG = {"ce": 0.05, "sce": 0.052, "bce": 0.03}


class FakeFit:
    """Writes what ``seqrec fit`` writes; metrics depend on loss and seed so the summary is checkable."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, cmd, timeout_s, log):
        rc, out = self._fit(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(cmd) + "\n\n" + out)
        return rc, out

    def _fit(self, cmd):
        self.calls.append(cmd)
        if "--resume" in cmd:
            run = Path(cmd[cmd.index("--resume") + 1])
            loss, seed = json.loads((run / "config.yaml").read_text())
        else:
            run = Path(cmd[cmd.index("--out") + 1])
            loss = cmd[cmd.index("--loss") + 1]
            seed = int(next(c for c in cmd if c.startswith("train.seed=")).split("=")[1])
        if loss in self.fail:
            return 2, "error: loss.bucket_size_y must be a positive integer\n"
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(json.dumps([loss, seed]))
        ndcg = NDCG[loss] + 0.002 * seed
        (run / "results.json").write_text(json.dumps(
            {"valid": {"ndcg@10": ndcg}, "test": {"ndcg@10": ndcg, "hr@10": 2 * ndcg}}))
        (run / "train_info.json").write_text(json.dumps(
            {"best_epoch": 3 + seed, "epochs": 8, "epoch_s": 1.5, "peak_rss_mb": 100.0 * (1 + (loss == "ce")),
             "wall_s": 12.0}))
        return 0, "best epoch ...\n"


@pytest.fixture
def fake(monkeypatch):
    f = FakeFit()
    monkeypatch.setattr(quality, "run_process", f)
    return f


def _run(tmp_path, *extra):
    return main(["bench", "quality", "--dataset", "synthetic", "--losses", "ce,sce,bce", "--seeds", "2",
                 "--out", str(tmp_path), *extra])


def test_records_table_and_plot(tmp_path, fake):
    assert _run(tmp_path) == 0
    assert len(fake.calls) == 6
    recs = json.loads((tmp_path / "results.json").read_text())
    assert [(r["loss"], r["seed"]) for r in recs] == [(loss, s) for loss in ("ce", "sce", "bce") for s in (0, 1)]
    for r in recs:
        assert {"loss", "dataset", "seed", "ndcg@10", "hr@10", "peak_mb", "epoch_s", "best_epoch"} <= set(r)
        assert r["dataset"] == "synthetic" and r["status"] == "ok"
    sce = [r for r in recs if r["loss"] == "sce"]
    assert [r["ndcg@10"] for r in sce] == pytest.approx([0.052, 0.054])
    assert [r["best_epoch"] for r in sce] == [3, 4] and sce[0]["peak_mb"] == 100.0
    summary = {r["loss"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert summary["sce"]["ndcg@10"] == pytest.approx(0.053)
    assert summary["sce"]["ndcg@10_std"] == pytest.approx(0.002 / 2**0.5)  # sample std of 2 seeds
    assert summary["ce"]["peak_mb"] == 200.0 and summary["sce"]["runs"] == 2
    table = (tmp_path / "table.md").read_text()
    assert "0.0530 ± 0.0014" in table and "| bce |" in table
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"
    # every run trains with the same command apart from loss and seed
    assert all("--no-baseline" in c and "synthetic" in c for c in fake.calls)


def test_rerun_reuses_and_resumes(tmp_path, fake):
    assert _run(tmp_path) == 0
    # an interrupted run: checkpointed (config.yaml) but never finished (no results.json)
    (tmp_path / "runs" / "bce-seed1" / "results.json").unlink()
    fake.calls.clear()
    assert _run(tmp_path) == 0
    assert len(fake.calls) == 1 and "--resume" in fake.calls[0]
    assert fake.calls[0][fake.calls[0].index("--resume") + 1] == str(tmp_path / "runs" / "bce-seed1")
    recs = json.loads((tmp_path / "results.json").read_text())
    assert len(recs) == 6 and sum("reused" in r["note"] for r in recs) == 5
    # a resumed run gets the budget settings of this invocation (the rest is fixed by its config)
    from seqrec.bench.quality import fit_command

    cmd = fit_command(tmp_path / "runs" / "bce-seed1", "bce", 1, "synthetic", None, None, None,
                      ["train.max_time_s=99", "model.d=8", "train.epochs=5"])
    assert cmd[cmd.index("--resume") + 1:] == [str(tmp_path / "runs" / "bce-seed1"), "--set", "train.max_time_s=99",
                                               "--set", "train.epochs=5"]


def test_per_loss_overrides(tmp_path, fake):
    assert _run(tmp_path, "--set", "train.epochs=3", "--set", "sce:loss.bucket_size_y=512") == 0
    for cmd in fake.calls:
        sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
        assert "train.epochs=3" in sets
        assert ("loss.bucket_size_y=512" in sets) == (cmd[cmd.index("--loss") + 1] == "sce")


def test_failed_run_is_reported_and_others_continue(tmp_path, monkeypatch):
    fake = FakeFit(fail={"sce"})
    monkeypatch.setattr(quality, "run_process", fake)
    assert _run(tmp_path) == 1
    recs = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in recs] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    assert "bucket_size_y" in recs[2]["note"]
    assert "bucket_size_y" in (tmp_path / "runs" / "sce-seed0.log").read_text()
    summary = {r["loss"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert summary["sce"]["runs"] == 0 and "ndcg@10" not in summary["sce"]


@pytest.mark.parametrize("args", [["--losses", "ce,nope"], ["--seeds", "0"], ["--set", "nope:train.lr=1"]])
def test_bad_options_exit_2(tmp_path, fake, args):
    argv = ["bench", "quality", "--dataset", "synthetic", "--out", str(tmp_path)]
    if "--losses" not in args:
        argv += ["--losses", "ce"]
    assert main(argv + args) == 2
    assert not fake.calls


def test_real_fit_command_line(tmp_path):
    cmd = quality.fit_command(tmp_path / "r", "sce", 2, "amazon-beauty", "/data", None, "sasrec-beauty-ce",
                              ["loss.bucket_size_y=512"])
    assert cmd[1:4] == ["-m", "seqrec.cli", "fit"]
    joined = " ".join(cmd)
    for part in ("--dataset amazon-beauty", "--loss sce", "--set train.seed=2", "--data-dir /data",
                 "--config sasrec-beauty-ce", "--set loss.bucket_size_y=512", f"--out {tmp_path / 'r'}"):
        assert part in joined


def test_real_runs_are_paired_with_ce(tmp_path):
    """Two real tiny fits: the bce run gets its NDCG@10 ratio to ce with a paired interval."""
    tiny = ('data.options={"synthetic": {"n_users": 150, "n_items": 50, "n_clusters": 4, "mean_len": 12.0, '
            '"max_len": 30}}')
    assert main(["bench", "quality", "--dataset", "synthetic", "--losses", "ce,bce", "--seeds", "1",
                 "--set", tiny, "--set", "model.d=16", "--set", "model.max_len=20", "--set", "train.epochs=2",
                 "--set", "train.batch_size=32", "--set", "train.num_threads=1", "--out", str(tmp_path)]) == 0
    ce, bce = json.loads((tmp_path / "results.json").read_text())
    assert "x_ce" not in ce or ce["x_ce"] is None
    assert bce["x_ce"] == pytest.approx(bce["ndcg@10"] / ce["ndcg@10"], rel=1e-9)
    assert bce["x_ce_lo"] <= bce["x_ce"] <= bce["x_ce_hi"] and 0 <= bce["p_vs_ce"] <= 1
    assert "| x_ce |" in (tmp_path / "table.md").read_text()


def test_fake_runs_without_models_keep_their_table(tmp_path, fake):
    assert _run(tmp_path) == 0
    recs = json.loads((tmp_path / "results.json").read_text())
    assert all("x_ce" not in r for r in recs) and "no ce comparison" in recs[2]["note"]
