"""``seqrec fit``, ``evaluate``, ``compare`` and ``recommend``: thin CLI wrappers over ``seqrec.api``."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from seqrec.errors import SeqrecError
from seqrec.io import run_lock

# what may change when a run is resumed: its budget and where it runs, never what it computes
RESUME_KEYS = {"train.epochs", "train.max_time", "train.patience", "train.num_threads",
               "train.checkpoint_every_s", "train.checkpoint_every_steps"}


def _metrics_table(rows: dict[str, dict[str, float]], ks: list[int]) -> str:
    names = ["hr", "ndcg", "mrr", "coverage"]
    cols = [f"{n}@{k}" for n in names for k in ks if f"{n}@{k}" in next(iter(rows.values()))]
    width = max(len(r) for r in rows) + 2
    head = " " * width + "".join(f"{c:>12}" for c in cols)
    lines = [head] + [f"{r:<{width}}" + "".join(f"{v.get(c, float('nan')):>12.4f}" for c in cols)
                      for r, v in rows.items()]
    return "\n".join(lines)


def _only_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in m.items() if "@" in k and not k.startswith("retrieval")}


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(c.name != ".lock" for c in out.iterdir()):
        if not overwrite:
            raise SeqrecError(f"run directory {out} already exists and is not empty; pass --overwrite to replace it "
                              f"or --resume {out} to continue it")
        for child in out.iterdir():  # everything but the lock this process holds
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise SeqrecError(f"run directory {out} is not writable: {e.strerror or e}") from None
    free_mb = shutil.disk_usage(out).free / 2**20
    if free_mb < 50:
        raise SeqrecError(f"only {free_mb:.0f} MB free on the disk of {out}; need at least 50 MB for checkpoints")


@click.command()
@click.option("--config", "config", default=None, help="Packaged config name (e.g. sasrec-ml-1m-ce) or YAML file.")
@click.option("--dataset", default=None, help="Dataset name, prepared directory or file path.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--format", "fmt", default=None, help="Reader for a file path (see `seqrec data --help`).")
@click.option("--model", default=None, help="sasrec | bert4rec | gru4rec | pop (or a registered name).")
@click.option("--loss", default=None, help="Objective: ce, ce_chunked, bce, gbce, sampled_softmax, sce, rece.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override, e.g. train.lr=1e-3.")
@click.option("--device", default=None, help="auto | cpu | cuda (same as --set train.device=...).")
@click.option("--out", "out", default=None, type=click.Path(), help="Run dir (default runs/MODEL-LOSS-DATA-TIME).")
@click.option("--resume", "resume", default=None, type=click.Path(), help="Continue the run in this directory.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--baseline/--no-baseline", default=True, help="Also report the most-popular baseline.")
def fit(config, dataset, data_dir, fmt, model, loss, sets, device, out, resume, overwrite, baseline) -> int:
    """Train a model, evaluate it on validation and test, and save the run.

    With no arguments: SASRec + full CE on the embedded synthetic data (under a minute on 2 cores).
    """
    from seqrec.config import Config, load_config, read_yaml

    if resume:
        run = Path(resume)
        if not (run / "config.yaml").exists():
            raise SeqrecError(f"--resume {run}: no config.yaml there (not a seqrec run directory)")
        budget = [s for s in sets if s.split("=", 1)[0].strip() in RESUME_KEYS]
        if any(x is not None for x in (config, dataset, data_dir, fmt, model, loss, out)) or overwrite or \
                len(budget) != len(sets):
            raise SeqrecError("--resume continues a run with its saved config; only --device and --set "
                              f"{'/'.join(sorted(RESUME_KEYS))} may change")
        if (run / "results.json").exists() and not budget:
            click.echo(f"run {run} is already finished (extend it with --set train.epochs=... or train.max_time=...)")
            _print_results(json.loads((run / "results.json").read_text()))
            return 0
        cfg = Config(read_yaml(run / "config.yaml"))
        extra = budget + ([f"train.device={device}"] if device is not None else [])
        if extra:  # e.g. a longer budget, or continue a CUDA run on a CPU-only machine
            cfg = cfg.with_overrides(extra)
    else:
        overrides = list(sets)
        for key, val in (("data.dataset", dataset), ("data.data_dir", data_dir), ("data.format", fmt),
                         ("model.name", model), ("loss.name", loss), ("train.device", device)):
            if val is not None:
                overrides.insert(0, f"{key}={val}")
        cfg = load_config(config, overrides)
        run = Path(out) if out else Path("runs") / (
            f"{cfg.model.name}-{cfg.loss.name}-{Path(str(cfg.data.dataset)).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        if run.exists() and not run.is_dir():
            raise SeqrecError(f"--out {run} exists and is not a directory")
    with run_lock(run):  # one process per run directory (a second --resume/--overwrite fails at once)
        if not resume:
            _check_out_dir(run, overwrite)
        return _fit_run(cfg, run, bool(resume), baseline)


def _fit_run(cfg: Any, run: Path, resume: bool, baseline: bool) -> int:
    from seqrec.api import SeqRec

    rec = SeqRec.from_config(cfg)

    def hook(trainer):
        def handler(signum, _frame):
            trainer.stop_signal = signum
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    from seqrec.training.trainer import TrainingInterrupted

    log = lambda s: click.echo(s, err=True)  # noqa: E731
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rec.fit(None, run_dir=run, resume=resume, log=log, trainer_hook=hook)
    except TrainingInterrupted as e:
        click.echo(f"interrupted: checkpoint saved in {run / 'checkpoints'}; resume with: seqrec fit --resume {run}",
                   err=True)
        return 128 + e.signum
    finally:  # the caller's handlers (Python's KeyboardInterrupt for SIGINT), also after an error
        for s, h in saved.items():
            signal.signal(s, h)
    results = {"valid": _only_metrics(rec.evaluate(split="valid")), "test": _only_metrics(rec.evaluate(split="test"))}
    from seqrec.io import write_json

    write_json(run / "results.json", results)
    rows = {f"{cfg.model.name} valid": results["valid"], f"{cfg.model.name} test": results["test"]}
    if baseline and cfg.model.name != "pop":
        pop = SeqRec.from_config({**rec.get_config(), "model": {"name": "pop"}})
        pop.fit(rec.data_, log=lambda s: None)
        pop_test = _only_metrics(pop.evaluate(split="test"))
        write_json(run / "baseline_pop.json", {"test": pop_test})
        rows["pop test"] = pop_test
    click.echo(_metrics_table(rows, [k for k in cfg.eval.ks if k in (10, 20, 50)] or cfg.eval.ks))
    info = rec.fit_info_
    click.echo(f"best epoch {info.get('best_epoch')} of {info.get('epochs')}, {info.get('wall_s', 0):.1f}s training; "
               f"run saved in {run}")
    return 0


def _print_results(results: dict[str, dict[str, float]]) -> None:
    click.echo(_metrics_table(results, [10, 20, 50]))


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["valid", "test"]), default=None, help="One split (default: both).")
@click.option("--json", "as_json", is_flag=True, help='Print {"valid": {...}, "test": {...}} as JSON.')
@click.option("--retrieval", default=None, help="torch | faiss-flat | faiss-ivf | faiss-hnsw")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Retrieval parameter, e.g. nprobe=32.")
def evaluate(run_dir, split, as_json, retrieval, sets) -> int:
    """Evaluate a trained run on its validation and/or test split (full-catalog ranking)."""
    from seqrec.api import SeqRec
    from seqrec.config import _parse_override

    rec = SeqRec.load(run_dir)
    params = dict(_parse_override(s) for s in sets) if sets else None
    out, extra = {}, {}
    for sp in ([split] if split else ["valid", "test"]):
        m = rec.evaluate(split=sp, retrieval=retrieval, retrieval_params=params)
        out[sp] = _only_metrics(m)
        extra[sp] = {k: v for k, v in m.items() if k.startswith("retrieval")}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(_metrics_table(out, [k for k in rec.cfg_.eval.ks if k in (10, 20, 50)]))
        for sp, e in extra.items():
            for k, v in e.items():
                click.echo(f"{sp} {k}: {v:.4f}")
    return 0


@click.command()
@click.argument("base_run", type=click.Path())
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--metric", "metrics", multiple=True, default=("ndcg@10", "hr@10"), show_default=True,
              help="ndcg@K, hr@K or mrr@K; repeat for several.")
@click.option("--resamples", default=2000, show_default=True, type=click.IntRange(min=100),
              help="Paired bootstrap resamples of the users.")
@click.option("--level", default=0.95, show_default=True, type=click.FloatRange(0.5, 0.999), help="Interval level.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as a JSON list.")
def compare(base_run, runs, split, metrics, resamples, level, as_json) -> int:
    """Compare RUNS with BASE_RUN on the same users: ratio and difference with paired-bootstrap
    intervals and a paired t-test p-value (is a gap real, or within run-to-run noise?)."""
    from seqrec.api import SeqRec

    base = SeqRec.load(base_run)
    df = base.compare(*(SeqRec.load(r) for r in runs), split=split, metrics=tuple(metrics), resamples=resamples,
                      level=level)
    if as_json:
        click.echo(json.dumps(df.to_dicts(), indent=2))
        return 0
    pct = f"{level:.0%}"
    click.echo(f"{split}, {df['users'][0]} users; base: {base_run}")
    click.echo(f"{'run':<40} {'metric':<9} {'base':>8} {'run':>8} {'ratio':>7}  {pct + ' interval':<17} {'p':>8}")
    for r in df.iter_rows(named=True):
        name = r["run"] if len(r["run"]) <= 40 else "…" + r["run"][-39:]
        click.echo(f"{name:<40} {r['metric']:<9} {r['base']:>8.4f} {r['value']:>8.4f} "
                   f"{r['ratio']:>7.4f}  [{r['ratio_lo']:.4f}, {r['ratio_hi']:.4f}] {r['p_value']:>8.2g}")
    return 0


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise SeqrecError(f"{p}: no such file")
    return p


def _read_frame(p: Path, what: str) -> Any:
    """A Parquet or CSV file (all columns as strings for CSV) as a polars DataFrame."""
    import polars as pl

    try:
        return pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema_length=0)
    except Exception as e:  # polars raises several error types for unreadable files
        raise SeqrecError(f"{p}: cannot read {what} ({str(e).splitlines()[0][:120]})") from None


def _read_id_file(path: str, dtype_like: Any) -> list:
    import polars as pl

    p = _existing(path)
    if p.suffix == ".parquet":
        s = _read_frame(p, "ids").to_series(0)
    else:
        try:
            lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        except UnicodeDecodeError:
            raise SeqrecError(f"{p}: not valid UTF-8 text") from None
        if lines and lines[0].lower() in ("user", "item", "user_id", "item_id"):
            lines = lines[1:]
        s = pl.Series(lines)
    return _cast_like(s.to_list(), dtype_like, p)


def _cast_like(values: list, dtype_like: Any, source: Any) -> list:
    if getattr(getattr(dtype_like, "dtype", None), "kind", "O") in "iu":
        try:
            return [int(v) for v in values]
        except (TypeError, ValueError):
            raise SeqrecError(f"{source}: ids must be integers for this dataset") from None
    return [str(v) for v in values]


def _read_histories(path: str, rec: Any) -> dict:
    p = _existing(path)
    if p.suffix == ".json":
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise SeqrecError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise SeqrecError(f'{p}: expected {{"user": [item, ...], ...}}')
        return {u: _cast_like(v, rec.data_.item_ids[1:], p) for u, v in raw.items()}
    df = _read_frame(p, "histories")
    if not {"user", "item"} <= set(df.columns):
        raise SeqrecError(f"{p}: histories need columns user,item (one row per interaction, in time order)")
    items = _cast_like(df["item"].to_list(), rec.data_.item_ids[1:], p)
    out: dict = {}
    for u, i in zip(df["user"].to_list(), items, strict=True):
        out.setdefault(u, []).append(i)
    return out


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--users", "users_file", default=None, help="File of raw user ids (one per line, or .parquet).")
@click.option("--all", "all_users", is_flag=True, help="Recommend for every user known at training time.")
@click.option("--histories", default=None, help="New users' histories: CSV/Parquet (user,item rows) or JSON.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="FILE.parquet or FILE.csv")
@click.option("--retrieval", default=None, help="torch | faiss-flat | faiss-ivf | faiss-hnsw")
@click.option("--filter-seen/--keep-seen", default=True, help="Exclude items already in the history.")
@click.option("--items", "allow_file", default=None, help="Allow-list: recommend only these raw item ids.")
@click.option("--exclude-items", "deny_file", default=None, help="Deny-list of raw item ids.")
def recommend(run_dir, users_file, all_users, histories, k, out, retrieval, filter_seen, allow_file, deny_file) -> int:
    """Write the top-k items per user (raw ids: user, item, score, rank) to a Parquet or CSV file."""
    from seqrec.api import SeqRec
    from seqrec.io import atomic_path

    if sum(x is not None and x is not False for x in (users_file, all_users or None, histories)) != 1:
        raise SeqrecError("give exactly one of --users FILE, --all, --histories FILE")
    outp = Path(out)
    if outp.suffix not in (".parquet", ".csv"):
        raise SeqrecError(f"--out {out}: use a .parquet or .csv file name")
    rec = SeqRec.load(run_dir)
    kw: dict[str, Any] = {}
    if allow_file:
        kw["items"] = _read_id_file(allow_file, rec.data_.item_ids[1:])
    if deny_file:
        kw["exclude_items"] = _read_id_file(deny_file, rec.data_.item_ids[1:])
    if histories:
        df = rec.recommend(histories=_read_histories(histories, rec), k=k, filter_seen=filter_seen,
                           retrieval=retrieval, **kw)
    else:
        users = None if all_users else _read_id_file(users_file, rec.data_.user_ids)
        df = rec.recommend(users=users, k=k, filter_seen=filter_seen, retrieval=retrieval, **kw)
    with atomic_path(outp) as tmp:
        (df.write_parquet if outp.suffix == ".parquet" else df.write_csv)(tmp)
    click.echo(f"wrote {df.height} rows for {df['user'].n_unique()} users to {outp}", err=True)
    return 0


COMMANDS = [fit, evaluate, compare, recommend]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(fit())
