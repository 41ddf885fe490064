"""``seqrec bench``: the click commands of every benchmark (the computation is in seqrec/bench/X.py).

Every command takes ``--out DIR`` and writes ``DIR/table.md``, ``DIR/results.json`` (a list of flat
records) and a PNG through ``seqrec.bench.common.write_results``; the figures are made in
``seqrec.bench.plot``. Heavy imports (torch, faiss, matplotlib) happen inside the commands, so
``seqrec bench --help`` stays fast. Lists of names in the help come from the registry.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from seqrec.bench.fidelity import DEFAULT_SPECS
from seqrec.cli import LazyGroup
from seqrec.cli.options import overrides, set_option
from seqrec.errors import ConfigError
from seqrec.registry import LOSSES, RETRIEVERS

OUT = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                   help="Output directory.")


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def command_line() -> str:
    """The running command as ``seqrec bench NAME --opt value ...`` (every option that has a value),
    for the header of table.md."""
    ctx = click.get_current_context()
    words = ["seqrec", "bench", ctx.info_name or ""]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        for v in value if p.multiple else [value]:
            if getattr(p, "is_flag", False):
                words += [p.opts[0]] if v else []  # a flag given shows as itself, not "--flag True"
            elif v is not None:
                words += [p.opts[0], str(v)]
    return shlex.join(words)


def _finish(out: Path, records: list[dict], columns: list[str], title: str, figure, png: str,
            body: str | None = None) -> Path:
    """Write the bench's outputs (``write_results``) and tell where they are."""
    from seqrec.bench.common import write_results

    path = write_results(out, records, columns, title, command_line(), figure, png, body)
    _log(f"wrote {path}/table.md, {path}/results.json, {path}/{png}")
    return path


# the systems benchmarks live in cli/bench_systems.py (imported only when one of them runs)
SYSTEMS = ("scale", "serve", "peers", "distributed", "finetune")


@click.group(cls=LazyGroup, lazy={name: f"seqrec.cli.bench_systems:{name}" for name in SYSTEMS})
def bench() -> None:
    """Benchmarks: every command takes --out DIR and writes table.md, a PNG plot and results.json."""


@bench.command("data")
@OUT
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where ml-1m lives (default $SEQREC_DATA / ~/.cache/seqrec); ml-1m is skipped if absent.")
@click.option("--users", "n_users", type=click.IntRange(min=100), default=138_493, show_default=True,
              help="Users of the ML-20M-shaped synthetic set (138,493 ~ 20M interactions).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Scratch space for the ~0.6 GB ratings.csv and prepared dirs (default: a temp dir).")
@click.option("--timeout", "timeout_s", type=float, default=900, show_default=True, help="Per-case limit (s).")
def data(out: Path, data_dir: Path | None, n_users: int, work_dir: Path | None, timeout_s: float) -> None:
    """Time and peak RSS to prepare ML-1M and a 20M-interaction synthetic set (fresh process per case)."""
    from seqrec.bench import data as bench_data
    from seqrec.bench.plot import data_figure

    records = bench_data.run_all(data_dir, n_users, work_dir, timeout_s, log=click.echo)
    _finish(out, records, bench_data.COLUMNS, "Data preparation: wall time and peak RSS",
            data_figure(records, bench_data.TARGET), "data.png")


@bench.command("losses")
@click.option("--catalog", default="10000,100000,1000000", show_default=True,
              help="Catalog sizes, comma-separated.")
@click.option("--tokens", default=12800, show_default=True, type=click.IntRange(1), help="Positions N per step.")
@click.option("--dim", default=64, show_default=True, type=click.IntRange(1), help="Hidden size d.")
@click.option("--losses", "losses_", default="ce,ce_chunked,bce,gbce,sampled_softmax", show_default=True,
              help="Losses, comma-separated, of: " + ", ".join(LOSSES.names()) + ".")
@click.option("--seq-len", default=200, show_default=True, type=click.IntRange(1), help="Positions per sequence.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--repeats", default=3, show_default=True, help="Timed steps after warm-up.")
@click.option("--timeout", "timeout_s", default=1800.0, show_default=True, help="Seconds per case.")
@OUT
def losses(catalog: str, tokens: int, dim: int, losses_: str, seq_len: int, device: str, repeats: int,
           timeout_s: float, out: Path) -> None:
    """Peak memory (net of the process baseline) and step time of each loss vs catalog size."""
    from seqrec.bench import losses as bench_losses
    from seqrec.bench.common import int_list, names_list
    from seqrec.bench.plot import losses_figure

    names = names_list(losses_, LOSSES, "--losses")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available")
    records = bench_losses.run_cases(names, int_list(catalog, "--catalog"), tokens, dim, seq_len, device,
                                     repeats, timeout_s, log=_log)
    cuda = device == "cuda"
    path = _finish(out, records, bench_losses.CUDA_COLUMNS if cuda else bench_losses.COLUMNS,
                   "Loss memory and time", losses_figure(records, "cuda_net_mb" if cuda else "net_mb"),
                   "losses.png")
    click.echo((path / "table.md").read_text())


@bench.command("quality")
@click.option("--dataset", required=True, help="Dataset name, prepared directory or file path.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--format", "fmt", default=None, help="Reader for a file path.")
@click.option("--losses", "losses_", default="ce,sce,rece,sampled_softmax,gbce,bce", show_default=True,
              help="Losses, comma-separated, of: " + ", ".join(LOSSES.names()) + ".")
@click.option("--seeds", default=1, show_default=True, help="Seeds per loss (train.seed = 0 .. N-1).")
@click.option("--config", default=None, help="Packaged config name or YAML file shared by every run.")
@click.option("--set", "sets", multiple=True, metavar="[LOSS:]KEY=VALUE",
              help="Config override for every run, or with a LOSS: prefix for that loss's runs only "
                   "(e.g. sce:loss.bucket_size_y=512).")
@click.option("--timeout", "timeout_s", default=None, type=float, help="Seconds per run (default: none).")
@OUT
def quality(dataset: str, data_dir: str | None, fmt: str | None, losses_: str, seeds: int, config: str | None,
            sets: tuple[str, ...], timeout_s: float | None, out: Path) -> int:
    """Test NDCG@10 / HR@10 (mean ± std over seeds), peak memory and time per epoch of each loss."""
    from seqrec.bench import quality as bench_quality
    from seqrec.bench.common import names_list
    from seqrec.bench.plot import quality_figure
    from seqrec.io import write_json

    names = names_list(losses_, LOSSES, "--losses")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    records = bench_quality.run_all(out, dataset, names, list(range(seeds)), data_dir, fmt, config, sets,
                                    timeout_s, log=_log)
    bench_quality.paired_with_ce(records)
    rows = bench_quality.summarize(records)
    write_json(out / "summary.json", rows)
    _finish(out, records, bench_quality.COLUMNS, f"Quality of each loss on {dataset}",
            quality_figure(rows, dataset), "quality.png", bench_quality.table_body(records, rows))
    click.echo(bench_quality.summary_markdown(rows))
    failed = [f"{r['loss']}-seed{r['seed']}" for r in records if r["status"] != "ok"]
    if failed:
        _log(f"failed runs: {', '.join(failed)} (logs in {out / 'runs'})")
        return 1
    return 0


@bench.command("retrieval")
@click.option("--catalog", default="100000,1000000", show_default=True, help="Catalog sizes (comma-separated).")
@click.option("--dim", default=64, show_default=True, type=click.IntRange(1))
@click.option("--queries", default=10000, show_default=True, type=click.IntRange(1))
@click.option("--embeddings", default="clustered,gaussian", show_default=True,
              help="Embedding kinds: clustered, gaussian.")
@click.option("--backends", default=",".join(sorted(RETRIEVERS.names(), key=lambda n: n != "torch")),
              show_default=True,
              help="Retrieval backends, comma-separated (exact torch is always run: it is the reference).")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--exact-queries", type=click.IntRange(1), default=None,
              help="Queries for exact timing and ground truth [default: all if C·M ≤ 2e9, else 2e9/C].")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1), help="Timing: best of N.")
@click.option("--seed", default=0, show_default=True)
@OUT
def retrieval(catalog: str, dim: int, queries: int, embeddings: str, backends: str, k: int,
              exact_queries: int | None, repeats: int, seed: int, out: Path) -> None:
    """Exact vs approximate retrieval: build time, index size, queries/s and recall@k (table, PNG, JSON)."""
    from seqrec.bench import retrieval as bench_retrieval
    from seqrec.bench.common import int_list, names_list
    from seqrec.bench.plot import retrieval_figure

    def log(msg: str) -> None:
        click.echo(msg)
        sys.stdout.flush()

    kinds = [x.strip() for x in embeddings.split(",") if x.strip()]
    records = bench_retrieval.run_all(kinds, int_list(catalog, "--catalog"), dim, queries,
                                      names_list(backends, RETRIEVERS, "--backends"), k, exact_queries,
                                      repeats, seed, log)
    cols = [c if c != "recall@10" else f"recall@{k}" for c in bench_retrieval.COLUMNS]
    _finish(out, records, cols, "Retrieval: exact vs approximate top-k (memory = index size)",
            retrieval_figure(records, k), "recall_vs_qps.png")


@bench.command("fidelity")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A trained run directory (its model, data and config).")
@click.option("--loss", "specs", multiple=True,
              help="NAME or NAME:key=value,... (repeatable), NAME one of " + ", ".join(LOSSES.names())
                   + ". Default: " + ", ".join(DEFAULT_SPECS) + ".")
@click.option("--batches", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@OUT
def fidelity(run_dir: str, specs: tuple[str, ...], batches: int, seed: int, out: Path) -> int:
    """Value and gradient agreement of each loss with full CE on a run's own training batches."""
    from seqrec.bench import fidelity as bench_fidelity
    from seqrec.bench.plot import fidelity_figure

    records, dataset = bench_fidelity.measure(run_dir, list(specs or DEFAULT_SPECS), batches,
                                              seed, log=_log)
    path = _finish(out, records, bench_fidelity.COLUMNS, f"Gradient fidelity to full CE ({dataset})",
                   fidelity_figure(records), "fidelity.png")
    click.echo((path / "table.md").read_text())
    return 0


@bench.command("evaluation")
@click.option("--dataset", default="ml-1m", show_default=True)
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--format", "fmt", default=None)
@click.option("--run", "run_dir", default=None, type=click.Path(), help="A trained run to evaluate instead.")
@click.option("--backends", default="torch,faiss-flat", show_default=True,
              help="Retrieval backends, comma-separated, of: " + ", ".join(RETRIEVERS.names()) + ".")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@OUT
def evaluation(dataset: str, data_dir: str | None, fmt: str | None, run_dir: str | None, backends: str,
               repeats: int, out: Path) -> int:
    """Full-catalog evaluation speed (median of --repeats) for each retrieval backend."""
    from seqrec.bench import evaluation as bench_evaluation
    from seqrec.bench.common import names_list
    from seqrec.bench.plot import evaluation_figure

    records = bench_evaluation.measure(dataset, data_dir, fmt, run_dir,
                                       names_list(backends, RETRIEVERS, "--backends"), repeats, log=_log)
    path = _finish(out, records, bench_evaluation.COLUMNS, "Full-catalog evaluation speed",
                   evaluation_figure(records), "evaluation.png")
    click.echo((path / "table.md").read_text())
    return 0


@bench.command("throughput")
@click.option("--config", default="sasrec-ml-1m-ce", show_default=True, help="Packaged config name or YAML file.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--loss", "losses_", multiple=True,
              help="Loss to time (repeatable), of: " + ", ".join(LOSSES.names()) + ". Default: ce, ce_chunked.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1), help="Timed steps per loss.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="Untimed steps first.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="train.batch_size (default: config's).")
@set_option("Config override for every loss, e.g. train.num_threads=1 or train.autocast=bf16 (repeatable).")
@OUT
def throughput(config: str, data_dir: str | None, losses_: tuple[str, ...], steps: int, warmup: int,
               batch_size: int | None, sets: tuple[str, ...], out: Path) -> int:
    """Tokens/s of training steps and the share of data, encoder, loss, backward and optimizer in each."""
    from seqrec.bench import throughput as bench_throughput
    from seqrec.bench.plot import throughput_figure

    names = [LOSSES.check_name(n, "--loss") for n in losses_ or ("ce", "ce_chunked")]
    records = bench_throughput.run_all(config, names, data_dir, steps, batch_size, warmup, overrides(sets), log=_log)
    path = _finish(out, records, bench_throughput.COLUMNS, "Training step throughput by part",
                   throughput_figure(records, bench_throughput.PARTS), "throughput.png")
    click.echo((path / "table.md").read_text())
    return 0
