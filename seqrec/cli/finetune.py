"""``seqrec finetune``: continue a trained run on new interactions with a fine-tuning method."""

from __future__ import annotations

from pathlib import Path

import click

from seqrec.cli.options import overrides, plugin_option, set_option

PEFT_HELP = "sparsegrad | lora | meprop | topk | full"


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--dataset", required=True, help="New interactions: dataset name, prepared directory or file path.")
@click.option("--format", "fmt", default=None, help="Reader for a file path (see `seqrec data --help`).")
@click.option("--peft", default="sparsegrad", show_default=True, help=f"Fine-tuning method: {PEFT_HELP}.")
@click.option("--budget", default=None, type=float,
              help="Share in (0, 1] of each feed-forward weight's entries updated per step (default 0.01).")
@click.option("--train-embeddings", is_flag=True,
              help="Train the item table too; items new to the catalog are then appended with fresh embeddings.")
@set_option("Config override for the fine-tuning run, e.g. train.epochs=2 (not model.*; repeatable).")
@click.option("--out", "out", required=True, type=click.Path(), help="New run directory for the result.")
@click.option("--force", is_flag=True, help="Train even if one step is predicted not to fit the free memory.")
@plugin_option
def finetune(run_dir, dataset, fmt, peft, budget, train_embeddings, sets, out, force) -> int:
    """Fine-tune the trained run RUN_DIR on new interactions of the same catalog; the result in --out
    is an ordinary run directory (evaluate / recommend / compare take it)."""
    from seqrec.api import SeqRec
    from seqrec.cli.fit import metrics_table
    from seqrec.data import check_spec
    from seqrec.errors import SeqrecError
    from seqrec.peft import PEFT
    from seqrec.training import TrainingInterrupted

    PEFT.check_name(peft, "--peft")
    if budget is not None and not 0.0 < budget <= 1.0:
        raise SeqrecError(f"--budget must be in (0, 1] (the share of each feed-forward weight's entries "
                          f"updated per step), got {budget}")
    if not Path(run_dir).is_dir():
        raise SeqrecError(f"{run_dir}: no such run directory")
    check_spec(dataset, fmt)
    ov = overrides(sets) | ({"data.format": fmt} if fmt is not None else {})
    base = SeqRec.load(run_dir)
    try:
        rec = base.finetune(dataset, peft=peft, out=out, budget=budget, train_embeddings=train_embeddings,
                            overrides=ov, log=lambda s: click.echo(s, err=True), force=force)
    except TrainingInterrupted as e:
        click.echo(f"interrupted: {out} removed (a fine-tuning run does not resume; run it again)", err=True)
        return 128 + e.signum
    results = {f"{peft} {s}": rec.evaluate(split=s, metrics_only=True) for s in ("valid", "test")}
    click.echo(metrics_table(results, [k for k in rec.cfg_.eval.ks if k in (10, 20, 50)] or rec.cfg_.eval.ks))
    f = rec.fit_info_["finetune"]
    click.echo(f"fine-tuned {run_dir} with {peft}: {f['trainable_values']:,} trainable values, "
               f"{rec.fit_info_.get('wall_s', 0):.1f}s training; run saved in {out}")
    return 0
