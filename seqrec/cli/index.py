"""``seqrec index …``: build a retrieval index next to a trained model and save it.

    seqrec index build RUN_DIR --retrieval faiss-hnsw --set eval.retrieval_params.ef_search=256
    seqrec index info RUN_DIR/index/faiss-hnsw

The index lands in RUN_DIR/index/<backend>/ (written atomically) and is reloaded with
``seqrec.retrieval.load_retriever``; ``seqrec evaluate/recommend RUN_DIR --retrieval <backend>``
(``SeqRec.load(RUN_DIR)``) reuse it while it matches the model's item embeddings.
"""

from __future__ import annotations

from pathlib import Path

import click

from seqrec.cli.options import overrides, plugin_option, retrieval_option, set_option


@click.group()
def index() -> None:
    """Retrieval indexes saved next to a trained model (RUN_DIR/index/<backend>/)."""


@index.command("build")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@retrieval_option
@set_option("Backend parameter, e.g. --set eval.retrieval_params.nprobe=32 (repeatable).")
@plugin_option
def build_cmd(run_dir: Path, retrieval: str | None, sets: tuple[str, ...]) -> None:
    """Build an index (default faiss-hnsw) over the item embeddings of the model in RUN_DIR and save it."""
    from seqrec.api import SeqRec

    ov = overrides(sets, allowed=("eval.retrieval_params.",))
    params = {k.removeprefix("eval.retrieval_params."): v for k, v in ov.items()}
    out, info = SeqRec.load(run_dir).build_index(retrieval or "faiss-hnsw", params)
    shown = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    click.echo(f"{info['backend']} index over {info['items']} items (d={info['dim']}) built in "
               f"{info['build_s']:.1f}s -> {out}  [{shown}]")


@index.command("info")
@click.argument("index_path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@plugin_option
def info_cmd(index_path: Path) -> None:
    """Show a saved index's backend, size and parameters (and check that it loads)."""
    from seqrec.retrieval import load_retriever
    from seqrec.retrieval.base import load_meta

    meta = load_meta(index_path)
    load_retriever(index_path)
    shown = ", ".join(f"{k}={v}" for k, v in meta["params"].items())
    click.echo(f"{meta['backend']}: {meta['n_items']} items, d={meta['dim']}  [{shown}]")
