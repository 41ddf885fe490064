"""``seqrec bench serve``: latency and throughput of a served bundle (``seqrec.serving``) on CPU.

Two catalogs, the same encoder:
- **ML-1M** (3,416 items): SASRec of the ``sasrec-ml-1m-ce`` config (max_len 200, d 64, 2 blocks),
  trained for at most ``train_s`` seconds (latency does not depend on how well it is trained),
  exported to an ONNX bundle; searched exactly (numpy);
- **a synthetic catalog of ``n_items`` items** (default 1M): the ML-1M bundle widened -- its first
  3,416 rows are ML-1M's item table, the others clustered random vectors
  (``bench.retrieval.make_embeddings``) scaled to the same mean norm -- searched exactly and
  through the project's ``faiss-ivf`` backend (built and tuned to recall@10 0.99 on 1,000 of the
  users' vectors, saved in the bundle's ``index/``).

Requests are real ML-1M users' whole histories (the encoder reads the last 200 items), seen items
excluded, k = 10. Single-request latency: ``Recommender.recommend`` for one user, one call after
another (p50 / p99 / mean in ms, after warm-up calls); ``http`` rows time the same through
``seqrec serve``'s server on localhost (one keep-alive connection). Batch throughput: users per
second with ``batch`` users per call. IVF rows report their recall@10 against the exact rows.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqrec.serving import Recommender, layout

COLUMNS = ["catalog", "items", "backend", "params", "path", "requests", "p50_ms", "p99_ms", "mean_ms",
           "target_p99_ms", "batch", "batch_users_per_s", "recall@10"]
K = 10
HARD_NPROBE = 16  # recall@10 0.994 on clustered 1M queries (docs/retrieval.md), whatever the tuning chose


def ml1m_bundle(work: Path, data_dir: str | None, train_s: float, log: Callable[[str], None]) -> Path:
    """Train SASRec on ML-1M for at most ``train_s`` s (one epoch at most) and export it -> bundle."""
    from seqrec import SeqRec
    from seqrec.export import export_bundle

    ov = {"train.epochs": 1, "train.max_time_s": float(train_s), "train.valid_users": 500}
    if data_dir:
        ov["data.data_dir"] = str(data_dir)
    SeqRec(config="sasrec-ml-1m-ce", overrides=ov).fit(run_dir=work / "run", log=log)
    return export_bundle(work / "run", work / "bundle")


def widen_bundle(src: Path, dst: Path, n_items: int, queries: np.ndarray, seed: int = 0) -> Path:
    """``src``'s bundle with its item table widened to ``n_items`` rows and a faiss-ivf index tuned
    on ``queries`` [M, d] -> ``dst`` (manifest and checksums rewritten)."""
    from seqrec.bench.retrieval import make_embeddings
    from seqrec.retrieval import build_retriever
    from seqrec.retrieval.base import embedding_digest

    base = np.load(src / layout.ITEM_EMB)
    extra, _ = make_embeddings("clustered", n_items - len(base), 0, base.shape[1], seed)
    extra *= np.linalg.norm(base, axis=1).mean() / np.linalg.norm(extra, axis=1).mean()
    emb = np.concatenate([base, extra])
    del extra
    dst.mkdir(parents=True)
    shutil.copy(src / layout.ENCODER_FILES["onnx"], dst / layout.ENCODER_FILES["onnx"])
    np.save(dst / layout.ITEM_EMB, emb)
    ids = pl.read_parquet(src / layout.ITEM_IDS)["item"].to_list()
    start = max(ids) + 1
    pl.DataFrame({"item": ids + list(range(start, start + n_items - len(ids)))}).write_parquet(dst / layout.ITEM_IDS)
    pop = np.load(src / layout.POPULARITY)
    np.save(dst / layout.POPULARITY, np.concatenate([pop, np.zeros(n_items - len(pop), np.int64)]))
    r = build_retriever("faiss-ivf").build(emb, queries=queries)
    r.save(dst / layout.INDEX_DIR, source=embedding_digest(emb))
    m = json.loads((src / layout.MANIFEST).read_text())
    m["catalog"] = {**m["catalog"], "n_items": n_items, "dataset": f"{m['catalog']['dataset']} + synthetic",
                    "fingerprint": None}
    m["retrieval"] = {"backend": r.name, "exact": False, "params": r.params}
    m["files"] = {f: layout.sha256_file(dst / f) for f in layout.bundle_files(dst)}
    (dst / layout.MANIFEST).write_text(json.dumps(m, indent=2, default=str))
    return dst


def user_histories(bundle: Path, n: int, seed: int = 0) -> list[list]:
    """``n`` random training users' whole histories as raw ids (from the run beside the bundle)."""
    from seqrec.data import load_dataset

    d = load_dataset(str(bundle.parent / "run" / "data"))
    rows = np.random.default_rng(seed).choice(d.n_users, size=min(n, d.n_users), replace=False)
    return [d.item_ids[d.full.items[d.full.offsets[r]:d.full.offsets[r + 1]]].tolist() for r in rows]


def _percentiles(times: list[float]) -> dict[str, float]:
    t = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean())}


def single_latency(rec: Recommender, hists: list[list], warmup: int = 10) -> tuple[dict[str, float], list]:
    """One user per ``recommend`` call -> (percentiles, each request's top-k item list)."""
    for h in hists[:warmup]:
        rec.recommend({"u": h}, K)
    times, tops = [], []
    for h in hists:
        t0 = time.perf_counter()
        df = rec.recommend({"u": h}, K)
        times.append(time.perf_counter() - t0)
        tops.append(df["item"].to_list())
    return _percentiles(times), tops


def http_latency(rec: Recommender, hists: list[list], warmup: int = 10) -> dict[str, float]:
    """As ``single_latency``, through ``seqrec serve``'s server on localhost (keep-alive)."""
    from seqrec.serving.http import make_server

    server = make_server(rec, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    times = []
    try:
        for i, h in enumerate(hists[:warmup] + hists):
            body = json.dumps({"histories": {"u": h}, "k": K}).encode()  # bytes: one send with the headers
            t0 = time.perf_counter()
            conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"server answered {resp.status}")
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        conn.close()
        server.shutdown()
        server.server_close()
    return _percentiles(times)


def batch_throughput(rec: Recommender, hists: list[list], batch: int) -> float:
    """Users per second with ``batch`` users per ``recommend`` call (all of ``hists``, after one warm-up)."""
    rec.recommend({str(i): h for i, h in enumerate(hists[:batch])}, K)
    t0 = time.perf_counter()
    for lo in range(0, len(hists), batch):
        rec.recommend({str(i): h for i, h in enumerate(hists[lo:lo + batch])}, K)
    return len(hists) / (time.perf_counter() - t0)


def recall(tops: list, exact: list) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(tops, exact, strict=True)]))


def run_all(work: Path, data_dir: str | None, n_items: int, requests: int, batch: int, train_s: float,
            threads: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every row of the bench (see the module doc); bundles are built under ``work``."""
    bundle = ml1m_bundle(work / "ml-1m", data_dir, train_s, log)
    hists = user_histories(bundle, max(requests, batch * 4))
    reqs, rows = hists[:requests], []
    rec = Recommender.from_bundle(bundle, threads=threads)
    log(f"ml-1m: {rec.n_items} items, {len(reqs)} single requests, batches of {batch}")
    lat, _ = single_latency(rec, reqs)
    common = {"requests": len(reqs), "batch": batch}
    rows.append({"catalog": "ml-1m", "items": rec.n_items, "backend": "exact", "path": "python", **lat,
                 "target_p99_ms": 20.0, **common, "batch_users_per_s": batch_throughput(rec, hists, batch)})
    rows.append({"catalog": "ml-1m", "items": rec.n_items, "backend": "exact", "path": "http",
                 **http_latency(rec, reqs), "target_p99_ms": 20.0, "requests": len(reqs)})
    if n_items > rec.n_items:
        queries = rec.user_vectors([np.asarray([rec.catalog_ids([x])[0] + 1 for x in h]) for h in hists[:1000]])
        log(f"widening the catalog to {n_items:,} items and building the faiss-ivf index")
        big = widen_bundle(bundle, work / "wide", n_items, queries)
        rows += wide_rows(big, reqs, hists[:batch * 2], batch, threads, max(requests // 3, 50), log)
    return rows


def wide_rows(big: Path, reqs: list[list], hists: list[list], batch: int, threads: int, n_exact: int,
              log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The widened catalog's rows: exact search on ``n_exact`` requests (it costs ~10x an ML-1M
    request), then faiss-ivf as tuned and at ``nprobe`` = ``HARD_NPROBE`` on all of ``reqs``, with
    recall@10 against exact on the first ones."""
    rows, exact_tops = [], None
    for backend, params in (("exact", None), ("faiss-ivf", None), ("faiss-ivf", {"nprobe": HARD_NPROBE})):
        r = Recommender.from_bundle(big, threads=threads, exact=backend == "exact", check=False)
        if params:
            r.set_params(**params)
        lat, tops = single_latency(r, reqs[:n_exact] if backend == "exact" else reqs)
        p = {**r.manifest["retrieval"]["params"], **(params or {}), **({"exact_fallback": False} if params else {})}
        rows.append({"catalog": "synthetic", "items": r.n_items, "backend": r.backend, "path": "python", **lat,
                     "params": None if backend == "exact" else {k: p.get(k) for k in ("nlist", "nprobe",
                                                                                      "exact_fallback")},
                     "target_p99_ms": None if backend == "exact" else 50.0, "requests": len(tops), "batch": batch,
                     "batch_users_per_s": batch_throughput(r, hists, batch),
                     "recall@10": None if exact_tops is None else recall(tops[:n_exact], exact_tops)})
        exact_tops = tops if exact_tops is None else exact_tops
        log(f"{rows[-1]['items']:,} items, {r.backend} {params or ''}: p99 {lat['p99_ms']:.1f} ms")
    return rows


def figure(rows: list[dict[str, Any]]) -> Any:
    """Bars of p50 and p99 per case, with each case's p99 target as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [f"{r['catalog']}\n{r['items']:,} items\n{r['backend']} ({r['path']})"
              + (f"\nnprobe {r['params']['nprobe']}" if r.get("params") else "") for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["p50_ms"] for r in rows], 0.4, label="p50")
    ax.bar(x + 0.2, [r["p99_ms"] for r in rows], 0.4, label="p99")
    for i, r in enumerate(rows):
        if r.get("target_p99_ms"):
            ax.hlines(r["target_p99_ms"], i - 0.45, i + 0.45, colors="k", linestyles="dashed")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("ms per single-user request (k=10)")
    ax.set_yscale("log")
    ax.legend(title="dashed: p99 target", loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
