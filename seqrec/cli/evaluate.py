"""``seqrec evaluate`` and ``seqrec compare``: metrics of trained runs, alone or paired."""

from __future__ import annotations

import json
from typing import Any

import click

from seqrec.cli.options import overrides, plugin_option, retrieval_option, set_option

EVAL_SET_HELP = ("Evaluation override, e.g. eval.retrieval_params.nprobe=32 or eval.filter_seen=false "
                 "(eval.* keys; repeatable).")


def load_for_eval(run_dir: str, retrieval: str | None, sets: tuple[str, ...]) -> Any:
    """``SeqRec.load(run_dir)`` with ``--retrieval`` / ``--set eval.*`` applied (validated)."""
    from seqrec.api import SeqRec

    rec = SeqRec.load(run_dir)
    ov = overrides(sets, allowed=("eval.",))
    if retrieval is not None and retrieval != rec.cfg_.eval.retrieval:  # another backend: not its params
        ov = {"eval.retrieval": retrieval, "eval.retrieval_params": {}} | ov
    return rec.set_config(ov) if ov else rec


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["valid", "test"]), default=None,
              help="One split (default: both); valid: the users training validated on (train.valid_users).")
@click.option("--json", "as_json", is_flag=True, help='Print {"valid": {...}, "test": {...}} as JSON.')
@retrieval_option
@set_option(EVAL_SET_HELP)
@plugin_option
def evaluate(run_dir, split, as_json, retrieval, sets) -> int:
    """Evaluate a trained run on its validation and/or test split (full-catalog ranking)."""
    from seqrec.cli.fit import metrics_table

    rec = load_for_eval(run_dir, retrieval, sets)
    out, extra = {}, {}
    for sp in ([split] if split else ["valid", "test"]):
        m = rec.evaluate(split=sp)
        out[sp] = {k: v for k, v in m.items() if "@" in k and not k.startswith("retrieval")}
        extra[sp] = {k: v for k, v in m.items() if k.startswith("retrieval")}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return 0
    click.echo(metrics_table(out, [k for k in rec.cfg_.eval.ks if k in (10, 20, 50)]))
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
@plugin_option
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
