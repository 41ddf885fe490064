"""``seqrec tune``: hyper-parameter search with Optuna (``seqrec/tune.py`` does the work)."""

from __future__ import annotations

import click

from seqrec.cli.options import overrides, plugin_option, set_option


@click.command("tune", epilog="Space file: a YAML mapping of config keys to {low, high[, log, step]} or "
                              "{choices: [...]}, e.g. `train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}`. "
                              "See docs/workflow.md.")
@click.option("--config", "config", default=None, help="Packaged config name or YAML file to start from.")
@click.option("--space", "space", required=True, type=click.Path(dir_okay=False), help="Search space (YAML).")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1),
              help="Trials to finish (complete or pruned), counting those already in DIR.")
@click.option("--budget-per-trial", "budget", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Seconds of training per trial (stops at an epoch end; default: train.epochs only).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Study directory: study.db, trials/NNN run directories, table.md, best.yaml.")
@set_option("Config override applied to every trial, e.g. train.epochs=10 (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the Optuna sampler.")
@click.option("--quiet", is_flag=True, help="Only the trial lines and the summary (no epoch lines, no bars).")
@plugin_option
def tune(config, space, trials, budget, out, sets, seed, quiet) -> int:
    """Search hyper-parameters with Optuna: TPE sampling, median pruning on validation NDCG@10,
    resumable (run the same command again to continue), the best config written as DIR/best.yaml."""
    from seqrec.progress import set_quiet
    from seqrec.tune import check_optuna, run_tune

    check_optuna()
    if quiet:
        set_quiet()

    def log(line: str) -> None:
        if not (quiet and line.startswith("  [")):
            click.echo(line, err=True)

    s = run_tune(config, space, trials, budget, out, overrides(sets), seed=seed, log=log)
    click.echo((open(f"{out}/table.md").read().split("\n\n", 2)[-1]).rstrip())
    click.echo(f"{s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed; table: {out}/table.md, "
               f"importance: {out}/importance.png")
    if "best_trial" in s:
        click.echo(f"best: trial {s['best_trial']}, validation NDCG@10 {s['best_valid_ndcg@10']:.4f}: "
                   + ", ".join(f"{k}={v}" for k, v in s["best_params"].items()))
        click.echo(f"next: seqrec fit --config {s['best_config']} --out RUN")
    return 0
