"""``seqrec plan``: predicted peak memory of one training step, per component and per loss.

Pick a loss that fits before training: parameters, their gradients, Adam's two moments, the
transformer's saved activations and the loss's own extra memory (``Loss.predict_bytes``, checked
against ``seqrec bench losses``), for the configured loss and for every registered loss.
"""

from __future__ import annotations

from typing import Any

import click

from seqrec.errors import ConfigError

F32 = 4


def _model_shape(model: str) -> tuple[int, int]:
    """(extra item-table rows, FFN width multiplier) of a transformer model, from its class."""
    try:
        from seqrec.registry import MODELS

        cls = MODELS.get(model)
        return int(getattr(cls, "n_special", 1)), int(getattr(cls, "ff_mult", 1))
    except (ImportError, ConfigError):
        return 1, 1


def predict_memory(n_items: int, batch_size: int, max_len: int, d: int, n_blocks: int, n_heads: int,
                   loss_name: str, loss_params: dict[str, Any] | None = None, tokens: int | None = None,
                   model: str = "sasrec", optimizer_states: int = 2) -> dict[str, int]:
    """Predicted peak bytes of one float32 training step of a pre-LN transformer encoder.

    n_items: catalog size C; batch_size x max_len: the padded batch the encoder sees; tokens: the
    number N of positions with a target that reach the loss (default batch_size * max_len, the upper
    bound); optimizer_states: float32 tensors per parameter (Adam: 2).
    Returns bytes per component: parameters, gradients, optimizer_state, activations, loss, total.
    """
    from seqrec.losses import build_loss

    n_special, ff_mult = _model_shape(model)
    d_ff = ff_mult * d
    per_block = (4 * d * d + 4 * d) + (2 * d * d_ff + d_ff + d) + 4 * d  # attention, FFN, 2 LayerNorms
    n_params = (n_items + n_special) * d + max_len * d + n_blocks * per_block + 2 * d
    t = batch_size * max_len
    n = t if tokens is None else tokens
    # saved for backward per block (float32 unless noted): LN1 in/out, q, k, v, attention output,
    # projection input, LN2 in/out, residual (10 [T, d]); FFN up output, activation output, dropout
    # mask (3 [T, d_ff]); attention probabilities, their dropped copy and the dropout mask
    # (≈ 2.25 [B, h, L, L]); plus the embedding lookup, its dropout and the final LayerNorm (4 [T, d])
    block = (10 * t * d + 3 * t * d_ff) * F32 + int(2.25 * batch_size * n_heads * max_len * max_len * F32)
    # + the [N, d] hidden states gathered for the loss
    activations = n_blocks * block + 4 * t * d * F32 + n * d * F32
    loss = build_loss(loss_name, **(loss_params or {})).predict_bytes(n, n_items, d, F32)
    # predict_bytes (what `seqrec bench losses` measures) includes the [C, d] gradient of the item
    # embeddings, which "gradients" already counts here
    loss = max(loss - n_items * d * F32, 0)
    out = {"parameters": n_params * F32, "gradients": n_params * F32,
           "optimizer_state": optimizer_states * n_params * F32, "activations": activations,
           "loss": int(loss)}
    out["total"] = sum(out.values())
    return out


def _fmt(b: float) -> str:
    for unit, k in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if b >= k:
            return f"{b / k:,.1f} {unit}"
    return f"{int(b)} B"


def _catalog(cfg: Any) -> int:
    from seqrec.data import load_dataset

    data = load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir, fmt=cfg.data.format,
                        split=cfg.data.split, **(cfg.data.options or {}))
    return data.n_items


@click.command("plan")
@click.option("--config", "config", default=None, help="Packaged config name or YAML file.")
@click.option("--dataset", default=None, help="Dataset name or path (to read the catalog size).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where named datasets live.")
@click.option("--catalog", type=int, default=None, help="Catalog size C (skips loading the dataset).")
@click.option("--tokens", type=int, default=None, help="Loss positions per step (default batch x max_len).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override, e.g. train.batch_size=256.")
@click.option("--loss", "loss_name", default=None, help="Loss to plan for (default: the config's).")
def plan(config: str | None, dataset: str | None, data_dir: str | None, catalog: int | None,
         tokens: int | None, overrides: tuple[str, ...], loss_name: str | None) -> None:
    """Predicted peak memory of one training step, per component and for every loss."""
    from seqrec.config import load_config
    from seqrec.losses import LOSSES

    # --loss first: switching loss.name drops the old loss's parameters, not the --set ones
    ov = [f"loss.name={loss_name}"] if loss_name else []
    if dataset:
        ov.append(f"data.dataset={dataset}")
    if data_dir:
        ov.append(f"data.data_dir={data_dir}")
    ov += list(overrides)
    cfg = load_config(config, ov)
    if catalog is None:
        catalog = _catalog(cfg)
    if catalog < 1 or (tokens is not None and tokens < 1):
        raise ConfigError("--catalog and --tokens must be positive")
    m, b = cfg.model, cfg.train.batch_size
    for key in ("d", "n_blocks", "n_heads", "max_len"):
        if key not in m:
            raise ConfigError(f"model.{key} is not set for model {m.name!r}; seqrec plan models transformers")
    loss_params = {k: v for k, v in cfg.loss.to_dict().items() if k != "name"}
    shape = dict(n_items=catalog, batch_size=b, max_len=m.max_len, d=m.d, n_blocks=m.n_blocks,
                 n_heads=m.n_heads, tokens=tokens, model=m.name)
    mem = predict_memory(loss_name=cfg.loss.name, loss_params=loss_params, **shape)
    n = tokens or b * m.max_len
    click.echo(f"{m.name}: C={catalog:,} items, batch {b} x max_len {m.max_len} (N={n:,} loss positions), "
               f"d={m.d}, {m.n_blocks} blocks, {m.n_heads} heads; loss {cfg.loss.name} {loss_params or ''}")
    click.echo("\n| component | predicted peak |\n|---|---|")
    for k, v in mem.items():
        click.echo(f"| {k} | {_fmt(v)} |")
    click.echo("\n| loss | loss step | total step |\n|---|---|---|")
    for name in sorted(LOSSES):
        params = loss_params if name == cfg.loss.name else {}
        try:
            row = predict_memory(loss_name=name, loss_params=params, **shape)
        except NotImplementedError:
            click.echo(f"| {name} | (no prediction) | |")
            continue
        click.echo(f"| {name}{' (configured)' if name == cfg.loss.name else ''} | {_fmt(row['loss'])} | "
                   f"{_fmt(row['total'])} |")
    click.echo("\nLosses with default parameters except the configured one; measured against "
               "`seqrec bench losses` (see docs/losses.md).")
