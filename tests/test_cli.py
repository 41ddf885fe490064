"""The `seqrec` command end to end on tiny data: fit, evaluate --json, recommend, and clean errors."""

import json
import subprocess
import sys

import polars as pl
import pytest

from seqrec.cli import main

TINY = ('data.options={"synthetic": {"n_users": 150, "n_items": 50, "n_clusters": 4, "mean_len": 12.0,'
        ' "max_len": 30}}')
FAST = ["--set", TINY, "--set", "model.d=16", "--set", "model.max_len=20", "--set", "train.epochs=2",
        "--set", "train.batch_size=32", "--set", "train.num_threads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["fit", "--out", str(out), *FAST]) == 0
    return out


def test_fit_writes_run_directory(run):
    for f in ("config.yaml", "metrics.jsonl", "results.json", "train_info.json", "model.pt", "baseline_pop.json"):
        assert (run / f).exists(), f
    res = json.loads((run / "results.json").read_text())
    assert set(res) == {"valid", "test"}
    assert all("@" in k for k in res["test"])  # metrics only; timings live in train_info.json
    assert "epoch_s" in json.loads((run / "train_info.json").read_text())


def test_evaluate_json_matches_results(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    res = json.loads((run / "results.json").read_text())
    assert ev["test"]["ndcg@10"] == pytest.approx(res["test"]["ndcg@10"], abs=1e-9)
    assert main(["evaluate", str(run), "--split", "valid", "--json"]) == 0
    valid = json.loads(capsys.readouterr().out)
    assert set(valid) == {"valid"}
    # results.json's valid row is the best epoch's validation, not scored again: the same numbers
    info = json.loads((run / "train_info.json").read_text())
    best = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][info["best_epoch"] - 1]
    assert res["valid"] == {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_") and "@" in k}
    assert valid["valid"]["ndcg@10"] == pytest.approx(res["valid"]["ndcg@10"], abs=1e-9)


def test_recommend_all_users_and_file_formats(run, tmp_path):
    out = tmp_path / "recs.csv"
    assert main(["recommend", str(run), "--all", "--k", "5", "--out", str(out)]) == 0
    df = pl.read_csv(out)
    assert df.columns == ["user", "item", "score", "rank"]
    assert df.height == 5 * df["user"].n_unique()
    users = tmp_path / "users.txt"
    users.write_text("\n".join(str(u) for u in df["user"].unique().to_list()[:3]) + "\n")
    pq = tmp_path / "recs.parquet"
    assert main(["recommend", str(run), "--users", str(users), "--k", "4", "--out", str(pq)]) == 0
    assert pl.read_parquet(pq).height == 12
    hist = tmp_path / "hist.csv"
    items = df["item"].unique().to_list()[:4]
    hist.write_text("user,item\n" + "".join(f"newbie,{i}\n" for i in items))
    assert main(["recommend", str(run), "--histories", str(hist), "--k", "3", "--out", str(tmp_path / "h.csv")]) == 0
    h = pl.read_csv(tmp_path / "h.csv")
    assert h["user"].unique().to_list() == ["newbie"] and not set(h["item"].to_list()) & set(items)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "seqrec.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["fit", "--set", "train.lrr=1"], "did you mean 'lr'"),
    (["fit", "--model", "nope"], "unknown model"),
    (["fit", "--loss", "nope"], "unknown loss"),
    (["fit", "--config", "no-such-config"], "packaged"),
    (["evaluate", "/nonexistent/run"], "not a run"),
    (["recommend", "/nonexistent/run", "--all", "--out", "x.csv"], "not a run"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert message in r.stderr


def test_existing_run_dir_not_overwritten(run):
    before = (run / "model.pt").read_bytes()
    r = _cli("fit", "--out", str(run), *FAST)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (run / "model.pt").read_bytes() == before


def test_unwritable_run_dir_fails_early(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _cli("fit", "--out", str(blocker / "run"), *FAST)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_recommend_needs_exactly_one_source(run, tmp_path):
    r = _cli("recommend", str(run), "--all", "--users", "u.txt", "--out", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "exactly one" in r.stderr
    r = _cli("recommend", str(run), "--all", "--out", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and ".parquet or .csv" in r.stderr


def test_version_and_help():
    r = _cli("--version")
    assert r.returncode == 0 and "seqrec" in r.stdout
    r = _cli("--help")
    for cmd in ("fit", "evaluate", "recommend", "data", "bench"):
        assert cmd in r.stdout


@pytest.mark.parametrize("args, hint", [
    (["--set", "eval.retrieval=faiss-ivff"], "did you mean 'faiss-ivf'"),
    (["--device", "gpu"], "did you mean 'cuda'"),
    (["--device", "cdua"], "did you mean 'cuda'"),
    (["--set", "train.device=cdua"], "did you mean 'cuda'"),
    (["--set", "train.devise=cpu"], "did you mean 'device'"),
    (["--loss", "sce_union"], "did you mean 'sce'"),
    (["--model", "sasrek"], "did you mean 'sasrec'"),
    (["--dataset", "synthetik"], "did you mean 'synthetic'"),
    (["--dataset", "ml-1n"], "did you mean 'ml-1m'"),
    # a union option names its members, not pydantic's tag for one of them
    (["--loss", "sce", "--set", "loss.scan_items=al"],
     "loss.scan_items: expected an integer or 'all', got 'al' (did you mean 'all'?)"),
    (["--loss", "sce", "--set", "loss.n_buckets=1.5"], "loss.n_buckets: expected an integer or 'auto', got 1.5"),
    (["--set", "train.lr=x", "--set", "train.batch_size=y"], "train.batch_size: input should be a valid integer"),
])
def test_mistakes_refused_before_loading_and_leave_nothing(tmp_path, args, hint):
    import time

    out = tmp_path / "run"
    t0 = time.monotonic()
    r = _cli("fit", "--out", str(out), *args)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert hint in r.stderr
    assert not out.exists()
    assert took < 10, f"refusal took {took:.1f}s"  # the bar is 3 s; 10 leaves room on a busy CI box


def test_cuda_asked_on_a_machine_without_it_leaves_nothing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    r = _cli("fit", "--out", str(tmp_path / "run"), "--device", "cuda")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr and not (tmp_path / "run").exists()


def test_failure_after_validation_leaves_no_directory(tmp_path):
    bad = tmp_path / "interactions.csv"
    bad.write_text("user,item\n1,2\n")  # too little data to train on
    r = _cli("fit", "--out", str(tmp_path / "run"), "--dataset", str(bad), "--format", "csv", *FAST)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_command_help_lists_registry_names():
    r = _cli("fit", "--help")
    for name in ("sasrec", "bert4rec", "gru4rec", "ce_chunked", "sampled_softmax", "rece", "--plugin"):
        assert name in r.stdout


def test_old_backend_flag_names_the_new_one(run):
    r = _cli("evaluate", str(run), "--backend", "torch")
    assert r.returncode == 2 and "--backend was renamed to --retrieval" in r.stderr
