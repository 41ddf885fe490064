"""seqrec bench peers: the export reproduces our split, the one evaluator scores a top-k file, a
failing or missing peer is a record with its error, and (where their environments exist) the real
peers run end to end."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import polars as pl
import pytest

from seqrec.bench.peers import envs
from seqrec.bench.peers.export import export, read_split, recbole_split
from seqrec.bench.peers.harness import last_error_line, run_runner
from seqrec.bench.peers.measure import run_case
from seqrec.bench.peers.score import score_topk
from seqrec.data import load_frame


@pytest.fixture(scope="module")
def data():
    """Users of 2 to 9 items (short users are all training), equal timestamps inside a user (ties must
    keep the input order), items 1..25 as raw ids 100.."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        n = 2 + u % 8
        for j in range(n):
            rows.append((f"u{u}", 100 + int(rng.integers(0, 25)), 1000 + j // 2))  # pairs of equal times
    df = pl.DataFrame(rows, schema=["user", "item", "timestamp"], orient="row")
    return load_frame(df, dedup=False, min_user=1, min_item=1)


def test_export_round_trip(tmp_path, data):
    out = export(data, tmp_path / "x")
    got = read_split(out)
    train_rows = {u: data.train.items[data.train.offsets[u]:data.train.offsets[u + 1]].tolist()
                  for u in range(data.n_users)}
    assert got["train"] == {u: s for u, s in train_rows.items() if s}
    assert got["valid"] == {int(u): [int(t)] for u, t in zip(data.valid.users, data.valid.targets, strict=True)}
    assert got["test"] == {int(u): [int(t)] for u, t in zip(data.test.users, data.test.targets, strict=True)}
    # a test user's history (what the peers are asked with) is training + validation items
    for row, u in enumerate(data.test.users.tolist()):
        hist = data.test.history.items[data.test.history.offsets[row]:data.test.history.offsets[row + 1]]
        assert hist.tolist() == got["train"][u] + got["valid"][u]
    # RecBole's own leave-one-out on the atomic file gives our split wherever a user has >= 4 items
    rb = recbole_split(out)
    lengths = np.diff(data.full.offsets)
    for u in range(data.n_users):
        if lengths[u] >= 4:
            assert (rb["train"][u], rb["valid"][u], rb["test"][u]) == (got["train"][u], got["valid"][u],
                                                                          got["test"][u])
    assert json.loads((out / "data.json").read_text())["users"] == data.n_users


def _topk(path, rows):
    pl.DataFrame(rows, schema=["user_id", "item_id", "rank"], orient="row").write_parquet(path)


def test_score_topk_one_evaluator(tmp_path, data):
    test = data.test
    users, targets = test.users.tolist(), test.targets.tolist()
    off, hist = test.history.offsets, test.history.items
    seen = [set(hist[off[r]:off[r + 1]].tolist()) for r in range(3)]
    others = [i for i in range(1, data.n_items + 1) if i not in set(targets[:3]) | seen[0] | seen[2]]
    seen0 = int(hist[off[1] - 1])  # user 0's last known item
    rows = [(users[0], seen0, 0), (users[0], others[0], 1), (users[0], targets[0], 2),  # seen dropped: rank 1
            (users[1], targets[1], 0),                                                   # rank 0
            *[(users[2], others[j], j) for j in range(12)], (users[2], targets[2], 12)]  # beyond 10: miss
    _topk(tmp_path / "topk.parquet", rows)
    m = score_topk(tmp_path / "topk.parquet", test, data.n_items, 10)
    assert m["missing_users"] == len(users) - 3 and m["seen_removed"] == 1
    assert m["hr@10"] == pytest.approx(2 / len(users))
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / len(users))


def test_runner_failure_is_one_line(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("import warnings\nwarnings.warn('noise')\nraise ValueError('the peer broke')\n")
    rec = run_runner(sys.executable, script, {}, tmp_path / "w", timeout_s=60, threads=1)
    assert rec["error"] == "ValueError: the peer broke" and rec["peak_rss_mb"] > 1
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    rec = run_runner(sys.executable, slow, {}, tmp_path / "s", timeout_s=0.5, threads=1)
    assert rec["error"].startswith("timed out")
    assert last_error_line("Traceback:\n  File x\nKeyError: 'a'\nUserWarning: late\n") == "KeyError: 'a'"


def test_runner_past_its_memory_limit_is_a_measured_row(tmp_path):
    hog = tmp_path / "hog.py"
    hog.write_text("import time\nb = b'x' * (400 * 2**20)\ntime.sleep(30)\n")  # 400 MB, every page written
    rec = run_runner(sys.executable, hog, {}, tmp_path / "h", timeout_s=60, threads=1, max_rss_mb=200)
    assert rec["error"].startswith("out of memory: its processes passed the 0.2 GB limit"), rec["error"]
    assert rec["wall_s"] < 20 and rec["peak_rss_mb"] > 200
    forked = tmp_path / "forked.py"  # two processes sharing 300 MB hold 300 MB, not 600
    forked.write_text("import os, time\nb = b'x' * (300 * 2**20)\nos.fork()\ntime.sleep(2)\n")
    rec = run_runner(sys.executable, forked, {}, tmp_path / "f", timeout_s=60, threads=1, max_rss_mb=450)
    assert rec["error"] == "the runner wrote no result.json / topk.parquet"
    killed = tmp_path / "killed.py"
    killed.write_text("import os, signal\nprint('last words')\nos.kill(os.getpid(), signal.SIGKILL)\n")
    rec = run_runner(sys.executable, killed, {}, tmp_path / "k", timeout_s=60, threads=1, max_rss_mb=10_000)
    assert rec["error"].startswith("killed by signal 9") and "out-of-memory killer" in rec["error"]


def test_missing_environment_is_an_error_record(tmp_path, data):
    rec = run_case(("recbole", "sasrec", "ce"), 5, data, tmp_path / "export", tmp_path / "w", 1,
                   str(tmp_path / "no-cache"), install=False, log=print)
    assert rec["ndcg@10"] is None and "no recbole environment" in rec["error"]
    assert not envs.is_ready("recbole", tmp_path / "no-cache")


def test_cli_writes_error_rows_not_a_crash(tmp_path, capsys):
    from seqrec.cli import main

    assert main(["bench", "peers", "--dataset", "synthetic", "--budgets", "1", "--libraries", "rectools,replay",
                 "--no-install", "--cache-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 0
    recs = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["library"], r["loss"]) for r in recs] == [("rectools", "ce"), ("rectools", "gbce"),
                                                         ("replay", "ce"), ("replay", "sce")]
    assert all(r["error"] and r["ndcg@10"] is None for r in recs)
    assert (tmp_path / "out" / "time_to_quality.png").exists()
    assert main(["bench", "peers", "--dataset", "synthetic", "--budgets", "1", "--libraries", "rectools,replay",
                 "--losses", "sce", "--no-install", "--cache-dir", str(tmp_path / "none"), "--max-rss", "2",
                 "--out", str(tmp_path / "o1")]) == 0
    assert [(r["library"], r["loss"]) for r in json.loads((tmp_path / "o1" / "results.json").read_text())] == [
        ("replay", "sce")]
    capsys.readouterr()
    assert main(["bench", "peers", "--libraries", "recbole", "--losses", "sce", "--out", str(tmp_path / "o4")]) == 2
    assert "recbole: ce" in capsys.readouterr().err and not (tmp_path / "o4").exists()
    assert main(["bench", "peers", "--losses", "bpr", "--out", str(tmp_path / "o5")]) == 2
    assert "bpr" in capsys.readouterr().err and not (tmp_path / "o5").exists()
    assert main(["bench", "peers", "--libraries", "lightfm", "--out", str(tmp_path / "o2")]) == 2
    assert "lightfm" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["bench", "peers", "--dataset", " , ", "--out", str(tmp_path / "o3")]) == 2
    assert "--dataset" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_cases_follow_losses_and_opt_in():
    from seqrec.bench.peers.measure import cases

    assert list(cases(["seqrec", "recbole"], ["sasrec"])) == [
        ("seqrec", "sasrec", "ce"), ("seqrec", "sasrec", "sce"), ("seqrec", "sasrec", "gbce"),
        ("recbole", "sasrec", "ce")]
    assert list(cases(["seqrec", "replay"], ["sasrec"], ["ce_chunked", "sce"])) == [
        ("seqrec", "sasrec", "sce"), ("seqrec", "sasrec", "ce_chunked"), ("replay", "sasrec", "sce")]


def test_time_to_quality_has_one_panel_per_dataset():
    from seqrec.bench.peers.plot import time_to_quality

    rec = {"library": "seqrec", "model": "sasrec", "loss": "ce", "ndcg@10": 0.1, "train_s": 300.0}
    fig = time_to_quality([{**rec, "dataset": "ml-1m"}, {**rec, "dataset": "amazon-beauty"},
                           {**rec, "dataset": "ml-1m", "train_s": 900.0, "ndcg@10": 0.2}])
    assert [ax.get_title() for ax in fig.axes] == ["Time to quality: amazon-beauty", "Time to quality: ml-1m"]
    assert [len(ax.lines[0].get_xdata()) for ax in fig.axes] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("lib", ["recbole", "rectools", "replay"])
def test_real_peer_runs_and_is_scored(tmp_path, data, lib):
    if not envs.is_ready(lib):
        pytest.skip(f"no {lib} environment in {envs.cache_root()} (seqrec bench peers --setup makes it)")
    export(data, tmp_path / "export")
    rec = run_case((lib, "sasrec", "ce"), 2, data, tmp_path / "export", tmp_path / "w", 1, None, install=False,
                   log=print)
    assert rec["error"] is None, rec["error"]
    assert 0.0 <= rec["ndcg@10"] <= rec["hr@10"] <= 1.0 and rec["peak_rss_mb"] > 50
    assert rec["version"] == envs.versions(lib)[envs.PEERS[lib].dists[0]]


def test_setup_reuses_a_ready_environment_and_reinstalls_on_changed_pins(tmp_path, monkeypatch):
    from seqrec.bench.peers import measure

    root = tmp_path / "cache" / "replay"
    root.mkdir(parents=True)
    pinned = {"replay-rec": "0.22.0", "torch": "2.13.0+cpu", "requirements": list(envs.PEERS["replay"].requirements)}
    (root / "versions.json").write_text(json.dumps(pinned))
    calls = []
    monkeypatch.setattr(envs, "_pip", lambda *a, **k: calls.append(a))  # no registry in tests
    assert measure.setup(["seqrec", "replay"], str(tmp_path / "cache"), log=lambda m: None) == {"replay": pinned}
    assert calls == []
    (root / "versions.json").write_text(json.dumps({**pinned, "requirements": ["replay-rec==0.21.0"]}))
    monkeypatch.setattr(envs.subprocess, "run", lambda *a, **k: None)  # no venv creation either
    monkeypatch.setattr(envs, "versions_of", lambda python, dists: {"torch": "2.13.0+cpu"})
    envs.ensure_env("replay", tmp_path / "cache", log=lambda m: None)
    assert [c[1][0] for c in calls] == [envs.TORCH, "-c"]  # torch first, then the peer under the constraint
    assert (root / "constraints.txt").read_text().strip() == envs.TORCH


def test_resume_keeps_finished_cases_and_jobs_run_together(tmp_path, capsys):
    from seqrec.cli import main

    # two of seqrec's losses: each case is a subprocess of several seconds, and two show what a third would
    args = ["bench", "peers", "--dataset", "synthetic", "--budgets", "1", "--libraries", "seqrec",
            "--losses", "ce,gbce", "--work-dir", str(tmp_path / "w")]
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [r["loss"] for r in first] == ["ce", "gbce"] and all(r["error"] is None for r in first)
    assert all(r["jobs"] == 2 and r["cpu"] for r in first)
    ce = tmp_path / "w" / "synthetic" / "1s" / "seqrec-sasrec-ce" / "record.json"
    marked = {**json.loads(ce.read_text()), "ndcg@10": 0.123}  # a kept record is read, not re-run
    ce.write_text(json.dumps(marked))
    gbce = tmp_path / "w" / "synthetic" / "1s" / "seqrec-sasrec-gbce" / "record.json"
    gbce.write_text(json.dumps({**json.loads(gbce.read_text()), "error": "killed"}))  # a failed case runs again
    capsys.readouterr()
    assert main([*args, "--resume", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again[0]["ndcg@10"] == 0.123
    assert again[1]["error"] is None and "sasrec gbce: kept" not in err and "sasrec ce: kept" in err
    command = (tmp_path / "b" / "table.md").read_text().split("`")[1]
    assert " --resume " in command and "True" not in command  # a flag is shown as given
    assert main([*args, "--threads", "2", "--resume", "--out", str(tmp_path / "c")]) == 0  # other settings: re-run
    assert json.loads((tmp_path / "c" / "results.json").read_text())[0]["ndcg@10"] != 0.123
    assert main(["bench", "peers", "--resume", "--libraries", "seqrec", "--out", str(tmp_path / "d")]) == 2
    assert "--work-dir" in capsys.readouterr().err
    # --report runs nothing: the kept records (a failed one with its error), and a "not run" row for a
    # budget never run
    gbce.write_text(json.dumps({**json.loads(gbce.read_text()), "error": "out of memory: 1.0 GB"}))
    args[args.index("--budgets") + 1] = "1,2"
    assert main([*args, "--threads", "2", "--report", "--out", str(tmp_path / "e")]) == 0  # as the last run
    table = json.loads((tmp_path / "e" / "results.json").read_text())
    kept = json.loads((tmp_path / "c" / "results.json").read_text())
    assert [r["budget_s"] for r in table] == [1] * 2 + [2] * 2 and table[0] == kept[0]
    assert table[1] == {**kept[1], "error": "out of memory: 1.0 GB"}
    assert all(r["error"].startswith("not run") and r["ndcg@10"] is None for r in table[2:])
    assert not (tmp_path / "w" / "synthetic" / "2s").exists()
    assert main(["bench", "peers", "--report", "--out", str(tmp_path / "f")]) == 2
    assert main(["bench", "peers", "--report", "--work-dir", str(tmp_path / "typo"), "--out", str(tmp_path / "f")]) == 2
    assert "no such directory" in capsys.readouterr().err and not (tmp_path / "f").exists()
