"""``seqrec bench scale / serve / peers / distributed / finetune``: the systems benchmarks (training
as the catalog grows, serving latency, other libraries side by side, 1 vs N processes, fine-tuning).
Registered lazily on the ``bench`` group of ``cli/bench.py``, whose helpers (``OUT``, ``_finish``,
``_log``) they share.
"""

from __future__ import annotations

from pathlib import Path

import click

from seqrec.cli.bench import OUT, _finish, _log
from seqrec.cli.options import overrides, set_option
from seqrec.errors import ConfigError
from seqrec.registry import LOSSES


@click.command("scale")
@click.option("--items", default="10000,100000,1000000", show_default=True, help="Catalog sizes, comma-separated.")
@click.option("--loss", "losses_", default="sce,rece,ce_chunked,sampled_softmax,ce", show_default=True,
              help="Losses, comma-separated, of: " + ", ".join(LOSSES.names()) + ".")
@click.option("--users", default=200_000, show_default=True, type=click.IntRange(min=100), help="Users per data set.")
@click.option("--budget", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Training seconds per case before validation.")
@click.option("--steps", default=5, show_default=True, type=click.IntRange(min=1), help="Timed steps per case.")
@click.option("--valid-users", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Validation users (fixed seeded sample).")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch threads per case (default: torch's).")
@click.option("--cache", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where the prepared data sets are kept (default: OUT/data).")
@click.option("--device", default="auto", show_default=True, help="train.device of every case (auto, cpu, cuda).")
@OUT
def scale(items: str, losses_: str, users: int, budget: float, steps: int, valid_users: int, threads: int | None,
          cache: Path | None, device: str, out: Path) -> int:
    """Step time, epoch time, peak RSS and validation NDCG@10 after a budget, as the catalog grows."""
    from seqrec.bench import scale as bench_scale
    from seqrec.bench.common import int_list, names_list
    from seqrec.bench.plot import scale_figure

    sizes, names = int_list(items, "--items"), names_list(losses_, LOSSES, "--loss")
    records = bench_scale.run_all(sizes, names, users, budget, steps, valid_users, cache or out / "data", threads,
                                  log=_log, device=device)
    path = _finish(out, records, bench_scale.COLUMNS, "Training at growing catalogs", scale_figure(records),
                   "scale.png")
    click.echo((path / "table.md").read_text())
    return 0


@click.command("serve")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where ml-1m lives.")
@click.option("--items", "n_items", default=1_000_000, show_default=True, type=click.IntRange(min=0),
              help="Synthetic catalog size for the exact vs faiss-ivf rows (0: ML-1M only).")
@click.option("--requests", default=300, show_default=True, type=click.IntRange(min=10), help="Single requests timed.")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(min=1), help="Users per batch call.")
@click.option("--train-s", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Training budget of the ML-1M model (latency does not depend on its quality).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=0), help="Encoder threads.")
@OUT
def serve(data_dir, n_items, requests, batch, train_s, threads, out: Path) -> int:
    """Serving latency (p50/p99, single user) and batch throughput: ML-1M exact, NUM items exact vs IVF."""
    import tempfile

    from seqrec.bench import serve as bench_serve

    with tempfile.TemporaryDirectory(prefix="seqrec-bench-serve-") as work:
        rows = bench_serve.run_all(Path(work), data_dir, n_items, requests, batch, train_s, threads, log=_log)
    path = _finish(out, rows, bench_serve.COLUMNS, "Serving latency and throughput (seqrec.serving, CPU)",
                   bench_serve.figure(rows), "serve.png")
    click.echo((path / "table.md").read_text())
    return 0


@click.command("peers")
@click.option("--dataset", default="ml-1m", show_default=True,
              help="ml-1m, amazon-beauty, ml-100k, another dataset name, a file or a prepared dir (leave-one-out); "
                   "several, comma-separated, make one table.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--budgets", default="300,900,2700", show_default=True, help="Training wall-time budgets (s).")
@click.option("--libraries", default="seqrec,recbole,rectools,replay", show_default=True)
@click.option("--models", default="sasrec", show_default=True, help="sasrec and/or bert4rec, comma-separated.")
@click.option("--losses", "losses_", default=None,
              help="Only these losses, comma-separated (default: ce for all; sce, gbce where the library has them; "
                   "ce_chunked, seqrec's exact CE in catalog chunks, only when named).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Torch threads, all libraries.")
@click.option("--cache-dir", default=None,
              help="Peer environments (default $SEQREC_PEERS_CACHE or ~/.cache/seqrec/peers).")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False), help="Keep the export and run logs here.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Cases run at once (jobs x threads should not exceed the cores).")
@click.option("--max-rss", "max_rss_gb", default=None, type=click.FloatRange(min=0.1),
              help="Kill a case whose processes pass this resident memory (GB) and record it as out of memory "
                   "[default: 90% of the machine's memory / --jobs].")
@click.option("--resume", is_flag=True, default=None,
              help="Keep the cases already finished in --work-dir (same settings); run the rest.")
@click.option("--report", is_flag=True, default=None,
              help="Run nothing: the table of the cases finished in --work-dir, the others marked not run.")
# flags default to None (not False) so that table.md's command line shows only the flags given
@click.option("--setup", is_flag=True, default=None,
              help="Only create the peer environments (pinned versions), then exit.")
@click.option("--no-install", is_flag=True, default=None,
              help="A missing peer environment is an error row, not installed.")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def peers(dataset: str, data_dir: str | None, budgets: str, libraries: str, models: str, losses_: str | None,
          threads: int, cache_dir: str | None, work_dir: str | None, jobs: int, max_rss_gb: float | None,
          resume: bool | None, report: bool | None,
          setup: bool | None, no_install: bool | None, out: Path | None) -> int:
    """seqrec next to RecBole, RecTools and RePlay: same split, budgets and threads, one evaluator."""
    from seqrec.bench.common import int_list
    from seqrec.bench.peers import measure as bench_peers
    from seqrec.bench.peers.plot import time_to_quality

    libs = bench_peers.check_names(libraries, bench_peers.LIBRARIES, "--libraries")
    if setup:
        bench_peers.setup(libs, cache_dir, _log)
        return 0
    if out is None:
        raise ConfigError("--out is required (unless --setup)")
    names = list(dict.fromkeys(d.strip() for d in dataset.split(",") if d.strip()))  # each once
    if not names:
        raise ConfigError("--dataset: give at least one dataset")
    records = bench_peers.measure(names, data_dir, int_list(budgets, "--budgets"), libs,
                                  bench_peers.check_names(models, bench_peers.MODELS, "--models"), threads,
                                  cache_dir, work_dir, not no_install, _log, jobs=jobs, resume=bool(resume),
                                  report=bool(report),
                                  losses=bench_peers.check_names(losses_, bench_peers.ALL_LOSSES, "--losses")
                                  if losses_ is not None else None,
                                  max_rss_mb=max_rss_gb * 1024 if max_rss_gb else None)
    path = _finish(out, records, bench_peers.COLUMNS, "Side by side: seqrec, RecBole, RecTools, RePlay",
                   time_to_quality(records), "time_to_quality.png")
    click.echo((path / "table.md").read_text())
    return 0


@click.command("distributed")
@click.option("--procs", default=2, show_default=True, type=click.IntRange(min=2), help="Processes to compare with 1.")
@click.option("--seeds", default="0,1", show_default=True, help="Seeds of the scaling runs, comma-separated.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1),
              help="Effective batch (per rank: this / --procs).")
@click.option("--loss", "losses_", multiple=True,
              help="Loss of the traffic part (repeatable). Default: ce, sce, rece, sampled_softmax.")
@click.option("--steps", default=3, show_default=True, type=click.IntRange(min=1), help="Steps per loss (traffic).")
@click.option("--items", default=20_000, show_default=True, type=click.IntRange(min=2),
              help="Synthetic catalog size of the traffic part.")
@set_option("Config override of every run, e.g. model.d=32 (repeatable).")
@OUT
def distributed(procs: int, seeds: str, epochs: int, batch_size: int, losses_: tuple[str, ...], steps: int,
                items: int, sets: tuple[str, ...], out: Path) -> int:
    """1 vs N training processes (torchrun, gloo) and the gradient all-reduce volume per step per loss."""
    from seqrec.bench import distributed as bench_distributed

    names = [LOSSES.check_name(n, "--loss") for n in losses_ or ("ce", "sce", "rece", "sampled_softmax")]
    seed_list = bench_distributed.seed_list(seeds)
    records = bench_distributed.scaling(procs, seed_list, epochs, batch_size, list(sets), log=_log)
    records += bench_distributed.traffic(None, names, procs, steps, overrides(sets), items, log=_log)
    path = _finish(out, records, bench_distributed.COLUMNS, f"Distributed training: 1 vs {procs} processes",
                   bench_distributed.figure(records), "distributed.png")
    click.echo((path / "table.md").read_text())
    return 0


@click.command("finetune")
@click.option("--dataset", "datasets", default="synthetic,ml-100k", show_default=True,
              help="Datasets, comma-separated (a time split where they have timestamps, else a position split).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--split", default="auto", show_default=True, type=click.Choice(["auto", "time", "position"]),
              help="Period split: global time cut, each user's first 60%, or time where there are timestamps.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--methods", default="full,sparsegrad,topk,lora,meprop", show_default=True,
              help="Fine-tuning methods, comma-separated.")
@click.option("--budget", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--pre-epochs", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--ft-epochs", default=3, show_default=True, type=click.IntRange(min=1))
@set_option("Config override for pretraining, e.g. model.d=32 (repeatable).")
@click.option("--ft-set", "ft_sets", multiple=True, metavar="KEY=VALUE",
              help="Config override for fine-tuning, e.g. train.lr=0.01 (repeatable).")
@OUT
def finetune(datasets: str, data_dir: str | None, split: str, seeds: int, methods: str, budget: float,
             pre_epochs: int, ft_epochs: int, sets: tuple[str, ...], ft_sets: tuple[str, ...], out: Path) -> int:
    """Fine-tuning methods at one budget: pretrain on the older part, fine-tune on the newer, test on the newest."""
    from seqrec.bench import finetune as bench_finetune
    from seqrec.bench.common import markdown_table, names_list
    from seqrec.peft import PEFT

    names = names_list(methods, PEFT, "--methods")
    records = bench_finetune.run_all([d.strip() for d in datasets.split(",") if d.strip()], data_dir, seeds,
                                     names, budget, pre_epochs, ft_epochs, overrides(sets), log=_log, split=split,
                                     ft_overrides=overrides(ft_sets))
    rows = bench_finetune.summary(records)
    path = _finish(out, records, bench_finetune.COLUMNS, "Fine-tuning methods on a period split",
                   bench_finetune.figure(records), "finetune.png", markdown_table(rows, bench_finetune.COLUMNS))
    click.echo((path / "table.md").read_text())
    return 0
