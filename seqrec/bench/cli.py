"""``seqrec bench`` group. Each benchmark module exposes a click command named ``command``."""

from __future__ import annotations

import click

from seqrec.cli import LazyGroup


@click.group(cls=LazyGroup, lazy={name: f"seqrec.bench.{name}:command"
                                  for name in ("data", "evaluation", "fidelity", "losses", "quality", "retrieval")})
def bench() -> None:
    """Benchmarks: every command takes --out DIR and writes table.md, a PNG plot and results.json."""
