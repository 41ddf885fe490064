"""``seqrec bench retrieval``: build time, memory, queries/s and recall@k vs exact for every backend.

Synthetic item and query embeddings of two kinds:
- ``clustered``: 1,024 centres drawn from N(0, I); every item and every query is a random centre
  plus N(0, I) noise (the structure real embeddings have; IVF's good case);
- ``gaussian``: items and queries i.i.d. N(0, I) (no structure: IVF's worst case).

Ground truth is exact torch search on the first R queries (R = all queries when C·M <= 2e9 score
entries, else max(1000, 2e9 / C); ``--exact-queries`` overrides). Exact backends (torch, faiss-flat)
are timed on those R queries; approximate backends on all queries; recall@k is measured on the R
queries. qps is always queries per second of wall time for ``Retriever.search`` (k = 10, no
filters), best of ``--repeats``. Memory is the index size (serialised FAISS index; torch: the
float32 embedding matrix), not RSS.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from seqrec.bench.common import write_results
from seqrec.errors import ConfigError
from seqrec.registry import RETRIEVERS
from seqrec.retrieval import build_retriever, recall_at_k
from seqrec.retrieval.base import Retriever

N_CENTRES = 1024
EXACT_BUDGET = 2_000_000_000  # score entries (queries × items) for the exact ground truth

COLUMNS = ["embeddings", "catalog", "backend", "params", "default", "build_s", "qps", "speedup",
           "recall@10", "memory_mb"]


def make_embeddings(kind: str, n_items: int, n_queries: int, dim: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(items float32 [C, d], queries float32 [M, d]) of ``kind`` 'clustered' or 'gaussian'."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    if kind == "clustered":
        centres = rng.standard_normal((N_CENTRES, dim), dtype=np.float32)
        items += centres[rng.integers(0, N_CENTRES, n_items)]
        queries += centres[rng.integers(0, N_CENTRES, n_queries)]
    elif kind != "gaussian":
        raise ConfigError(f"--embeddings: unknown kind {kind!r}; choose clustered or gaussian")
    return items, queries


def index_mb(r: Retriever) -> float:
    """Size of the index in MiB (serialised FAISS index, or the torch embedding matrix)."""
    if r.name == "torch":
        return r.n_items * r.dim * 4 / 2**20
    return r._faiss.serialize_index(r._cpu_index()).size / 2**20


def timed_search(r: Retriever, q: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """(best queries/s over ``repeats`` runs, ids [M, k])."""
    best, ids = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = r.search(q, k)
        best = min(best, time.perf_counter() - t0)
    return len(q) / best, ids


def settings(backend: str, r: Retriever) -> list[dict[str, Any]]:
    """Search-time settings to sweep for a built index; the default one is included."""
    p = r.params
    if backend == "faiss-ivf":
        d = p["nprobe"]
        grid = sorted(v for v in {max(1, d // 4), max(1, d // 2), d, 2 * d, 4 * d, 16 * d} if v <= p["nlist"])
        return [{"nprobe": v} for v in grid]
    if backend == "faiss-hnsw":
        d = p["ef_search"]
        return [{"ef_search": v} for v in sorted({16, 32, 64, d, 2 * d, 4 * d})]
    return [{}]


def run_case(kind: str, n_items: int, dim: int, n_queries: int, backends: list[str], k: int,
             exact_queries: int | None, repeats: int, seed: int, log: Any) -> list[dict[str, Any]]:
    items, queries = make_embeddings(kind, n_items, n_queries, dim, seed)
    n_exact = exact_queries or (n_queries if n_items * n_queries <= EXACT_BUDGET
                                else max(1000, EXACT_BUDGET // n_items))
    n_exact = min(n_exact, n_queries)
    q_exact = queries[:n_exact]
    base = {"embeddings": kind, "catalog": n_items, "dim": dim, "queries": n_queries}
    records: list[dict[str, Any]] = []

    t0 = time.perf_counter()
    torch_r = build_retriever("torch").build(items)
    torch_build = time.perf_counter() - t0
    torch_qps, truth = timed_search(torch_r, q_exact, k, repeats)
    for backend in backends:
        t0 = time.perf_counter()
        r = torch_r if backend == "torch" else build_retriever(backend).build(items)
        build_s = torch_build if backend == "torch" else time.perf_counter() - t0
        if r.name != backend:
            log(f"skip {backend}: not available (fell back to {r.name})")
            continue
        defaults = dict(r.params)
        mem = index_mb(r)
        for setting in settings(backend, r):
            r.set_params(**setting)
            if backend == "torch":
                qps, ids = torch_qps, truth
            elif r.exact:  # faiss-flat: alternate with torch so that both see the same machine load
                qps = 0.0
                for _ in range(repeats):
                    torch_qps = max(torch_qps, timed_search(torch_r, q_exact, k, 1)[0])
                    one, ids = timed_search(r, q_exact, k, 1)
                    qps = max(qps, one)
            else:
                qps, ids = timed_search(r, queries, k, repeats)
                ids = ids[:n_exact]
            shown = {key: v for key, v in r.params.items()
                     if key in ("nlist", "nprobe", "train_size", "M", "ef_construction", "ef_search")}
            rec = {**base, "backend": backend, "params": shown,
                   "default": all(defaults.get(key) == v for key, v in setting.items()),
                   "build_s": round(build_s, 3), "qps": round(qps, 1),
                   f"recall@{k}": round(recall_at_k(ids, truth), 4), "memory_mb": round(mem, 1),
                   "qps_queries": n_exact if r.exact else n_queries, "recall_queries": n_exact}
            records.append(rec)
            log(f"{kind:9s} C={n_items:>8d} {backend:10s} {shown} build {build_s:6.1f}s "
                f"{qps:9.0f} q/s recall@{k} {rec[f'recall@{k}']:.4f} {mem:7.1f} MB")
        if r is not torch_r:
            del r
    for rec in records:
        if rec["backend"] == "torch":
            rec["qps"] = round(torch_qps, 1)  # best of all its interleaved timings
    for rec in records:
        rec["speedup"] = round(rec["qps"] / torch_qps, 2) if torch_qps else None
    return records


def plot(records: list[dict[str, Any]], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["embeddings"], r["catalog"]) for r in records})
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
    for ax, (kind, n) in zip(axes[0], cases, strict=True):
        for backend in RETRIEVERS.names():
            # in sweep order (nprobe / ef_search increasing): timing noise must not reorder the curve
            rs = [r for r in records if r["embeddings"] == kind and r["catalog"] == n and r["backend"] == backend]
            if not rs:
                continue
            line = ax.plot([r["qps"] for r in rs], [r[f"recall@{k}"] for r in rs], "o-", label=backend)[0]
            for r in rs:
                if r["default"]:
                    ax.plot(r["qps"], r[f"recall@{k}"], "*", ms=14, color=line.get_color(), mec="black")
        ax.set_xscale("log")
        ax.set_xlabel("queries / s (log)")
        ax.set_ylabel(f"recall@{k} vs exact")
        ax.set_title(f"{kind}, {n:,} items")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(title="★ = default settings", fontsize=8)
    fig.tight_layout()
    from seqrec.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(float(v)) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise ConfigError(f"{name}: expected positive integers, got {value!r}")
    return out


@click.command("retrieval")
@click.option("--catalog", default="100000,1000000", show_default=True,
              help="Catalog sizes (comma-separated).")
@click.option("--dim", default=64, show_default=True, type=click.IntRange(1))
@click.option("--queries", default=10000, show_default=True, type=click.IntRange(1))
@click.option("--embeddings", default="clustered,gaussian", show_default=True,
              help="Embedding kinds: clustered, gaussian.")
@click.option("--backends", default=",".join(RETRIEVERS.names()), show_default=True)
@click.option("--k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--exact-queries", type=click.IntRange(1), default=None,
              help="Queries for exact timing and ground truth [default: all if C·M ≤ 2e9, else 2e9/C].")
@click.option("--repeats", default=2, show_default=True, type=click.IntRange(1), help="Timing: best of N.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def command(catalog: str, dim: int, queries: int, embeddings: str, backends: str, k: int,
            exact_queries: int | None, repeats: int, seed: int, out: Path) -> None:
    """Exact vs approximate retrieval: build time, index size, queries/s and recall@k (table, PNG, JSON)."""
    sizes = _int_list(catalog, "--catalog")
    kinds = [x.strip() for x in embeddings.split(",") if x.strip()]
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    for b in chosen:
        RETRIEVERS.check_name(b, "--backends")
    chosen = ["torch"] + [b for b in chosen if b != "torch"]  # exact torch is the reference

    def log(msg: str) -> None:
        click.echo(msg)
        sys.stdout.flush()

    records: list[dict[str, Any]] = []
    for kind in kinds:
        for n in sizes:
            records += run_case(kind, n, dim, queries, chosen, k, exact_queries, repeats, seed, log)
    cols = [c if c != "recall@10" else f"recall@{k}" for c in COLUMNS]
    cmd = (f"seqrec bench retrieval --catalog {catalog} --dim {dim} --queries {queries} --embeddings "
           f"{embeddings} --backends {backends} --k {k} --repeats {repeats} --seed {seed} --out {out}"
           + (f" --exact-queries {exact_queries}" if exact_queries else ""))
    write_results(out, records, cols, "Retrieval: exact vs approximate top-k (memory = index size)", cmd)
    plot(records, out / "recall_vs_qps.png", k)
    log(f"wrote {out}/table.md, {out}/results.json, {out}/recall_vs_qps.png")


__all__ = ["command", "make_embeddings"]
