"""``seqrec bench`` group. Each benchmark module exposes a click command named ``command``."""

from __future__ import annotations

import importlib

import click

# module -> sub-command; each module is owned by the benchmark it implements
_MODULES = ["seqrec.bench.losses", "seqrec.bench.retrieval", "seqrec.bench.quality", "seqrec.bench.data"]


@click.group()
def bench() -> None:
    """Benchmarks: every command takes --out DIR and writes table.md, a PNG plot and results.json."""


for _m in _MODULES:
    try:
        bench.add_command(importlib.import_module(_m).command)
    except ModuleNotFoundError as _e:  # a benchmark not written yet
        if _e.name != _m:
            raise
