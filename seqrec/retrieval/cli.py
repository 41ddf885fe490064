"""``seqrec index …``: build a retrieval index next to a trained model and save it.

    seqrec index build RUN_DIR --backend faiss-hnsw --set ef_search=256
    seqrec index info RUN_DIR/index/faiss-hnsw

The index lands in RUN_DIR/index/<backend>/ (written atomically) and is reloaded with
``seqrec.retrieval.load_retriever``; ``seqrec evaluate/recommend RUN_DIR --retrieval <backend>``
(``SeqRec.load(RUN_DIR)``) reuse it while it matches the model's item embeddings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from seqrec.errors import ConfigError
from seqrec.registry import RETRIEVERS
from seqrec.retrieval import build_retriever, load_retriever
from seqrec.retrieval.base import embedding_digest, load_meta


def index_dir(run_dir: str | os.PathLike, backend: str) -> Path:
    """Where ``seqrec index build`` saves the ``backend`` index of the model in ``run_dir``."""
    return Path(run_dir) / "index" / backend


def parse_sets(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["nprobe=32", "gpu=false"]`` -> {"nprobe": 32, "gpu": False} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected param=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: cannot parse the value") from None
    return out


def _model_item_embeddings(run_dir: Path) -> np.ndarray:
    from seqrec.api import SeqRec  # the trained model: item_embeddings() -> float32 [C, d], catalog space

    return np.asarray(SeqRec.load(run_dir).item_embeddings(), dtype=np.float32)


def build_index(run_dir: str | os.PathLike, backend: str, params: dict[str, Any] | None = None,
                item_emb: np.ndarray | None = None) -> tuple[Path, dict[str, Any]]:
    """Build the ``backend`` index over the model's item embeddings (or ``item_emb`` [C, d]) and save
    it to RUN_DIR/index/<backend>/. Returns (directory, summary)."""
    run_dir = Path(run_dir)
    if item_emb is None:
        item_emb = _model_item_embeddings(run_dir)
    retriever = build_retriever(backend, **(params or {}))
    t0 = time.perf_counter()
    retriever.build(item_emb)
    build_s = time.perf_counter() - t0
    # a fallback (faiss missing) saves under the backend actually built, so the name never lies
    out = retriever.save(index_dir(run_dir, retriever.name), source=embedding_digest(item_emb))
    return out, {"backend": retriever.name, "items": retriever.n_items, "dim": retriever.dim,
                 "build_s": round(build_s, 3), "params": retriever.params}


@click.group()
def index() -> None:
    """Retrieval indexes saved next to a trained model (RUN_DIR/index/<backend>/)."""


@index.command("build")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(RETRIEVERS.names()), default="faiss-hnsw", show_default=True,
              help="Retrieval backend to build.")
@click.option("--set", "sets", multiple=True, metavar="PARAM=VALUE",
              help="Backend parameter, e.g. --set nprobe=32 (repeatable).")
def build_cmd(run_dir: Path, backend: str, sets: tuple[str, ...]) -> None:
    """Build a BACKEND index over the item embeddings of the model in RUN_DIR and save it."""
    out, info = build_index(run_dir, backend, parse_sets(sets))
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    click.echo(f"{info['backend']} index over {info['items']} items (d={info['dim']}) built in "
               f"{info['build_s']:.1f}s -> {out}  [{params}]")


@index.command("info")
@click.argument("index_path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def info_cmd(index_path: Path) -> None:
    """Show a saved index's backend, size and parameters (and check that it loads)."""
    meta = load_meta(index_path)
    load_retriever(index_path)
    params = ", ".join(f"{k}={v}" for k, v in meta["params"].items())
    click.echo(f"{meta['backend']}: {meta['n_items']} items, d={meta['dim']}  [{params}]")
