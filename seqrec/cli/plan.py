"""``seqrec plan``: predicted peak memory of one training step (the model in seqrec/plan.py)."""

from __future__ import annotations

import click

from seqrec.cli.options import overrides, plugin_option, set_option
from seqrec.errors import ConfigError
from seqrec.plan import catalog_size, fmt_bytes, predict_memory


@click.command("plan")
@click.option("--config", "config", default=None, help="Packaged config name or YAML file.")
@click.option("--dataset", default=None, help="Dataset name or path (to read the catalog size).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--catalog", type=int, default=None, help="Catalog size C (skips loading the dataset).")
@click.option("--tokens", type=int, default=None, help="Loss positions per step (default batch x max_len).")
@set_option("Config override, e.g. train.batch_size=256 (repeatable).")
@click.option("--loss", "loss_name", default=None, help="Loss to plan for (default: the config's).")
@plugin_option
def plan(config: str | None, dataset: str | None, data_dir: str | None, catalog: int | None,
         tokens: int | None, sets: tuple[str, ...], loss_name: str | None) -> None:
    """Predicted peak memory of one training step, per component and for every loss."""
    from seqrec.config import load_config
    from seqrec.registry import LOSSES

    # --loss first: switching loss.name drops the old loss's parameters, not the --set ones
    flags = {"loss.name": loss_name, "data.dataset": dataset, "data.data_dir": data_dir}
    cfg = load_config(config, {k: v for k, v in flags.items() if v is not None} | overrides(sets))
    if catalog is None:
        catalog = catalog_size(cfg)
    if catalog < 1 or (tokens is not None and tokens < 1):
        raise ConfigError("--catalog and --tokens must be positive")
    from seqrec.registry import MODELS

    m, b = {**MODELS.schema(cfg.model.name)().model_dump(), **cfg.model.params}, cfg.train.batch_size
    for key in ("d", "n_blocks", "n_heads", "max_len"):
        if key not in m:
            raise ConfigError(f"model.{key} is not set for model {cfg.model.name!r}; seqrec plan models transformers")
    loss_params = cfg.loss.params
    shape = dict(n_items=catalog, batch_size=b, max_len=m['max_len'], d=m['d'], n_blocks=m['n_blocks'],
                 n_heads=m['n_heads'], tokens=tokens, model=cfg.model.name, ffn_mult=m.get('ffn_mult'))
    mem = predict_memory(loss_name=cfg.loss.name, loss_params=loss_params, **shape)
    n = tokens or b * m['max_len']
    click.echo(f"{cfg.model.name}: C={catalog:,} items, batch {b} x max_len {m['max_len']} (N={n:,} loss positions), "
               f"d={m['d']}, {m['n_blocks']} blocks, {m['n_heads']} heads; loss {cfg.loss.name} {loss_params or ''}")
    click.echo("\n| component | predicted peak |\n|---|---|")
    for k, v in mem.items():
        click.echo(f"| {k} | {fmt_bytes(v)} |")
    click.echo("\n| loss | loss step | total step |\n|---|---|---|")
    for name in LOSSES.names():
        params = loss_params if name == cfg.loss.name else {}
        try:
            row = predict_memory(loss_name=name, loss_params=params, **shape)
        except NotImplementedError:
            click.echo(f"| {name} | (no prediction) | |")
            continue
        click.echo(f"| {name}{' (configured)' if name == cfg.loss.name else ''} | {fmt_bytes(row['loss'])} | "
                   f"{fmt_bytes(row['total'])} |")
    click.echo("\nLosses with default parameters except the configured one; measured against "
               "`seqrec bench losses` (see docs/losses.md).")
