"""The cases x budgets loop of ``seqrec bench peers`` -> flat records (one per library, model,
loss and budget), every top-k scored by ``seqrec.bench.peers.score``."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from seqrec.bench.common import cpu_name, source_version
from seqrec.bench.peers import envs
from seqrec.errors import ConfigError, SeqrecError
from seqrec.io import write_json

HERE = Path(__file__).resolve().parent
LIBRARIES = ("seqrec", "recbole", "rectools", "replay")
MODELS = ("sasrec", "bert4rec")
# the losses each library runs for SASRec (BERT4Rec: ce only): full CE for all, plus the direct
# peers of our SCE (RePlay's SCE) and of our gBCE (RecTools' gBCE)
LOSSES = {"seqrec": ("ce", "sce", "gbce", "ce_chunked"), "recbole": ("ce",), "rectools": ("ce", "gbce"),
          "replay": ("ce", "sce")}
# run only when --losses names them: exact CE in catalog chunks (the same loss as ce), for catalogs
# where the [positions, catalog] logits of ce do not fit
OPT_IN = ("ce_chunked",)
# one model and training setup for everyone (protocol.md's reference SASRec); the
# per-dataset changes follow seqrec/configs (Beauty: dropout 0.6)
SETTINGS: dict[str, Any] = {"d": 64, "n_blocks": 2, "n_heads": 1, "max_len": 200, "dropout": 0.2, "batch_size": 128,
                            "lr": 1e-3, "k": 20, "seed": 0, "n_negatives": 256, "gbce_t": 0.75, "mask_prob": 0.2,
                            # seqrec only (the peers do not validate): epochs without a validation
                            # gain before it stops, as configs/sasrec-ml-1m-ce.yaml; on ML-1M gBCE sat
                            # on a plateau until epoch ~25, and the default of 3 stopped it at 11
                            "patience": 20}
DATASET_SETTINGS: dict[str, dict[str, Any]] = {"amazon-beauty": {"dropout": 0.6}}
COLUMNS = ["library", "version", "dataset", "model", "loss", "budget_s", "ndcg@10", "hr@10", "peer_ndcg@10",
           "epochs", "train_s", "eval_s", "peak_rss_mb", "error"]


def check_names(text: str, known: tuple[str, ...], opt: str) -> list[str]:
    """Comma-separated names, each one of ``known`` (ConfigError naming ``opt`` otherwise)."""
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(f"{opt}: unknown {', '.join(bad) or 'empty list'}; choose from {', '.join(known)}")
    return names


ALL_LOSSES = tuple(dict.fromkeys(loss for names in LOSSES.values() for loss in names))


def cases(libraries: list[str], models: list[str], losses: list[str] | None = None) -> Iterator[tuple[str, str, str]]:
    """(library, model, loss) in run order; ``losses`` keeps only those losses (None: every one but
    the opt-in ``OPT_IN``)."""
    for model in models:
        for lib in libraries:
            for loss in LOSSES[lib] if model == "sasrec" else ("ce",):
                wanted = loss in losses if losses is not None else loss not in OPT_IN
                if wanted:
                    yield lib, model, loss


def default_max_rss_mb(jobs: int) -> float:
    """Each case's memory limit when none is given: 90% of the machine's memory shared by ``jobs``."""
    return 0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 / max(1, jobs)


def setup(libraries: list[str], cache_dir: str | None, log: Callable[[str], None]) -> dict[str, dict]:
    """Create (or check) the environment of every peer in ``libraries`` -> {lib: versions}."""
    out = {}
    for lib in libraries:
        if lib in envs.PEERS:
            envs.ensure_env(lib, cache_dir, log)
            out[lib] = envs.versions(lib, cache_dir)
            log(f"{lib}: ready in {envs.cache_root(cache_dir) / lib}: {out[lib]}")
    return out


def runner_for(lib: str, cache_dir: str | None, install: bool, log: Callable[[str], None]) -> tuple:
    """(python, runner script, PYTHONPATH, version) of ``lib``; SeqrecError when its environment is
    missing and ``install`` is off, or when creating it fails."""
    if lib == "seqrec":
        import seqrec

        root = str(Path(seqrec.__file__).resolve().parents[1])
        return sys.executable, HERE / "run_seqrec.py", root, seqrec.__version__
    if not envs.is_ready(lib, cache_dir) and not install:
        raise SeqrecError(f"no {lib} environment in {envs.cache_root(cache_dir) / lib}: "
                          "run `seqrec bench peers --setup` first")
    python = envs.ensure_env(lib, cache_dir, log)
    version = envs.versions(lib, cache_dir).get(envs.PEERS[lib].dists[0])
    return python, HERE / envs.PEERS[lib].runner, None, version


def run_case(case: tuple[str, str, str], budget: int, data: Any, export_dir: Path, work: Path, threads: int,
             cache_dir: str | None, install: bool, log: Callable[[str], None],
             max_rss_mb: float | None = None) -> dict[str, Any]:
    """One library / model / loss at one budget -> its flat record (``error`` set when it failed;
    past ``max_rss_mb`` of resident memory the runner is killed and the record says out of memory)."""
    from seqrec.bench.peers.harness import run_runner
    from seqrec.bench.peers.score import score_topk

    lib, model, loss = case
    rec = _blank(case, budget, data.name, threads)
    try:
        python, script, pythonpath, rec["version"] = runner_for(lib, cache_dir, install, log)
    except SeqrecError as e:
        return {**rec, "error": str(e)}
    settings = {**SETTINGS, **DATASET_SETTINGS.get(data.name, {}), "export": str(export_dir), "model": model,
                "loss": loss, "budget_s": budget, "threads": threads, "recbole_dataset": "seqrec"}
    res = run_runner(python, script, settings, work, timeout_s=2 * budget + 1200, threads=threads,
                     pythonpath=pythonpath, max_rss_mb=max_rss_mb)
    rec["max_rss_mb"] = max_rss_mb
    for key in ("epochs", "steps", "train_s", "eval_s", "peak_rss_mb", "wall_s", "error"):
        rec[key] = res.get(key)
    peer = res.get("peer_metrics") or {}
    rec["peer_ndcg@10"] = peer.get("ndcg@10")
    rec["peer_hr@10"] = peer.get("hr@10", peer.get("hit@10", peer.get("hitrate@10")))
    if rec["error"] is None:
        m = score_topk(work / "topk.parquet", data.test, data.n_items, 10)
        rec.update({"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"], "users": m["users"],
                    "missing_users": m["missing_users"], "seen_removed": m["seen_removed"]})
    return rec


def _blank(case: tuple[str, str, str], budget: int, dataset: str, threads: int) -> dict[str, Any]:
    """A case's record before it runs: every column empty."""
    lib, model, loss = case
    return {"library": lib, "version": None, "dataset": dataset, "model": model, "loss": loss, "budget_s": budget,
            "threads": threads, "ndcg@10": None, "hr@10": None, "peer_ndcg@10": None, "peer_hr@10": None,
            "epochs": None, "steps": None, "train_s": None, "eval_s": None, "peak_rss_mb": None, "wall_s": None,
            "max_rss_mb": None, "error": None}


def measure(datasets: list[str], data_dir: str | None, budgets: list[int], libraries: list[str],
            models: list[str], threads: int, cache_dir: str | None, work_dir: str | None, install: bool,
            log: Callable[[str], None], jobs: int = 1, resume: bool = False,
            report: bool = False, losses: list[str] | None = None,
            max_rss_mb: float | None = None) -> list[dict[str, Any]]:
    """Export each dataset's leave-one-out split once, run every case at every budget -> records.

    ``jobs`` cases run at once (each with ``threads`` threads: give every case its own cores).
    Each finished case leaves ``record.json`` in ``work_dir/<dataset>/<budget>s/<case>/``; with
    ``resume`` a case whose record is there (same settings, no error) is read back instead of run
    again, so a long comparison continues where it stopped. ``report`` runs nothing: the records
    kept in ``work_dir``, and a row saying "not run" for each case without one. ``losses``: only
    these losses (None: each library's all but ``OPT_IN``). ``max_rss_mb``: each case's memory limit (None:
    ``default_max_rss_mb(jobs)``).
    """
    if (resume or report) and not work_dir:
        raise ConfigError(f"{'--report reads' if report else '--resume continues'} the cases kept in --work-dir: "
                          "give the same --work-dir")
    if not any(cases(libraries, models, losses)):
        raise ConfigError(f"--losses {','.join(losses or [])}: none of these libraries runs it "
                          f"({'; '.join(f'{lib}: ' + ', '.join(LOSSES[lib]) for lib in libraries)})")
    if report and not Path(work_dir).is_dir():
        raise ConfigError(f"--work-dir {work_dir}: no such directory, so no records to report")
    with tempfile.TemporaryDirectory(prefix="seqrec-peers-") as tmp:
        work = (Path(work_dir) if work_dir else Path(tmp)).resolve()  # runners run in their own cwd
        limit = max_rss_mb or default_max_rss_mb(jobs)
        return [rec for name in datasets for rec in _measure_one(name, data_dir, budgets, libraries, models, threads,
                                                                 cache_dir, work, install, log, jobs, resume,
                                                                 report, losses, limit)]


def _measure_one(dataset: str, data_dir: str | None, budgets: list[int], libraries: list[str], models: list[str],
                 threads: int, cache_dir: str | None, work_root: Path, install: bool, log: Callable[[str], None],
                 jobs: int, resume: bool, report: bool, losses: list[str] | None,
                 max_rss_mb: float) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    from seqrec.bench.peers.export import export
    from seqrec.data import load_dataset

    data = load_dataset(dataset, data_dir=data_dir)
    work = work_root / data.name.replace(":", "-")  # synthetic:ml-20m: no colon in a path (Windows)
    export_dir = None if report else export(data, work / "export")
    log(f"{data.name}: {data.n_users:,} users, {data.n_items:,} items; "
        + (f"records read from {work}" if report else f"split exported to {export_dir}"))
    todo = [(budget, case) for budget in budgets for case in cases(libraries, models, losses)]

    def one(item: tuple[int, tuple[str, str, str]]) -> dict[str, Any]:
        budget, case = item
        where = work / f"{budget}s" / "-".join(case)
        # --report shows a failed case's record (its error is a result); --resume runs it again
        done = _finished(where, case, budget, data.name, threads, failed_too=report) if resume or report else None
        if done is not None:
            log(f"[{data.name} {budget} s] {' '.join(case)}: kept from {where}")
            return done
        if report:
            return {**_blank(case, budget, data.name, threads), "error": "not run (no record in --work-dir)"}
        log(f"[{data.name} {budget} s] {' '.join(case)} ...")
        rec = run_case(case, budget, data, export_dir, where, threads, cache_dir, install, log, max_rss_mb)
        # how crowded the machine was, and which one: a table kept across sessions mixes machines, and
        # a --report's header names only the machine that assembled it
        rec.update(jobs=jobs, load_avg_5min=round(os.getloadavg()[1], 2), seqrec_code=source_version(),
                   cpu=cpu_name())
        write_json(where / "record.json", rec)
        shown = f"NDCG@10 {rec['ndcg@10']:.4f}" if rec["ndcg@10"] is not None else f"error: {rec['error']}"
        log(f"[{data.name} {budget} s] {' '.join(case)}: {shown}")
        return rec

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # each case is a subprocess: threads suffice
        return list(pool.map(one, todo))


def _finished(where: Path, case: tuple[str, str, str], budget: int, dataset: str, threads: int,
              failed_too: bool = False) -> dict | None:
    """The record a previous run left in ``where`` for this case, or None (absent, other settings, or
    failed unless ``failed_too``)."""
    import json

    try:
        rec = json.loads((where / "record.json").read_text())
    except (OSError, ValueError):
        return None
    same = (rec.get("library"), rec.get("model"), rec.get("loss"), rec.get("budget_s"), rec.get("dataset"),
            rec.get("threads")) == (*case, budget, dataset, threads)
    return rec if same and (failed_too or rec.get("error") is None) else None
