"""``seqrec bench fidelity``: how closely each approximate loss follows full CE on a trained model.

For the first ``--batches`` training batches of a run (built as ``fit`` builds them, dropout on),
each loss's value and its gradients with respect to the hidden states X [N, d] and the item table
W [C, d] are compared with full CE's on the same inputs: value / CE value, cosine of dX and of dW
with CE's, SCE's bucket coverage, and the loss step's time relative to CE's. It takes seconds where
a training run takes an hour, so it is the first tool for choosing SCE/RECE knobs on a dataset. A
cosine near 1 is necessary for CE-level quality, not sufficient (docs/losses.md, docs/benchmarks.md).
``bce``/``gbce`` are different objectives: their cosines say how far their direction is from CE's.

Output: ``DIR/results.json`` (one record per loss spec: loss, params, batches, positions,
value_ratio, cos_dx, cos_dw, coverage, time_ratio), ``DIR/table.md``. No plot: one number per row.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import click
import yaml

from seqrec.errors import ConfigError

COLUMNS = ["loss", "params", "batches", "positions", "value_ratio", "cos_dx", "cos_dw", "coverage", "time_ratio"]
DEFAULT_SPECS = ("ce_chunked", "sce", "rece", "sampled_softmax", "gbce", "bce")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, params); values parsed as YAML scalars."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--loss {spec}: expected NAME:key=value,key=value, got {item!r}")
        params[key.strip()] = yaml.safe_load(value)
    return name.strip(), params


def _value_grads(loss, hidden, targets, item_emb, ctx):
    """(value, dX flat, dW flat, seconds) of one forward+backward on fresh leaf copies."""
    x = hidden.detach().clone().requires_grad_()
    w = item_emb.detach().clone().requires_grad_()
    t0 = time.perf_counter()
    value = loss(x, targets, w, ctx)
    value.backward()
    return float(value.detach()), x.grad.flatten(), w.grad.flatten(), time.perf_counter() - t0


def _cos(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


@click.command("fidelity")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A trained run directory (its model, data and config).")
@click.option("--loss", "specs", multiple=True,
              help="NAME or NAME:key=value,... (repeatable). Default: " + ", ".join(DEFAULT_SPECS) + ".")
@click.option("--batches", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def command(run_dir, specs, batches, seed, out) -> int:
    """Value and gradient agreement of each loss with full CE on a run's own training batches."""
    import torch

    from seqrec.api import SeqRec
    from seqrec.bench.common import write_results
    from seqrec.registry import LOSSES
    from seqrec.training.trainer import Trainer

    parsed = [(spec, *parse_spec(spec)) for spec in (specs or DEFAULT_SPECS)]
    losses = [LOSSES.build(name, **params) for _, name, params in parsed]  # bad names fail before any work
    rec = SeqRec.load(run_dir)
    model = rec.model_
    ce = LOSSES.build("ce")
    trainer = Trainer(rec.cfg_, model, ce, rec.data_, log=lambda m: None)
    acc: list[list[tuple[float, ...]]] = [[] for _ in parsed]
    positions = 0
    torch.manual_seed(seed)
    for b, (inputs, targets, has, ctx) in enumerate(trainer.sample_batches(batches)):
        model.train()  # dropout as in training
        with torch.no_grad():
            hidden = model(inputs)[has]  # [N, d]
            item_emb = model.item_embeddings()
        y = targets[has] - 1
        positions += int(y.numel())
        v0, gx0, gw0, t_ce = _value_grads(ce, hidden, y, item_emb, ctx)
        for i, loss in enumerate(losses):
            gen = torch.Generator(device=hidden.device).manual_seed(seed * 1000 + b)
            c = dataclasses.replace(ctx, generator=gen, stats={})
            v, gx, gw, t = _value_grads(loss, hidden, y, item_emb, c)
            acc[i].append((v / v0, _cos(gx, gx0), _cos(gw, gw0), c.stats.get("sce_coverage", float("nan")),
                           t / max(t_ce, 1e-9)))
    records = []
    for (spec, name, params), rows in zip(parsed, acc, strict=True):
        mean = [sum(col) / len(col) for col in zip(*rows, strict=True)]
        records.append({"loss": name, "params": params, "batches": len(rows), "positions": positions,
                        "value_ratio": mean[0], "cos_dx": mean[1], "cos_dw": mean[2],
                        "coverage": None if mean[3] != mean[3] else mean[3], "time_ratio": mean[4]})
        click.echo(f"{spec}: cos dX {mean[1]:.3f}  cos dW {mean[2]:.3f}  value/CE {mean[0]:.3f}", err=True)
    cmd = f"seqrec bench fidelity --run {run_dir} " + " ".join(f"--loss {s}" for s, _, _ in parsed) + \
        f" --batches {batches} --out {out}"
    write_results(out, records, COLUMNS, f"Gradient fidelity to full CE ({rec.data_.name})", cmd)
    click.echo((__import__("pathlib").Path(out) / "table.md").read_text())
    return 0
