"""``seqrec bench evaluation``: time to score and rank every evaluated user over the full catalog.

Measures ``seqrec.evaluation.evaluate`` (user encoding + top-k search with seen-item filtering +
metrics) on a dataset's test split, for a trained run (``--run``) or a freshly initialised SASRec
(scoring cost does not depend on the weights). Target (issue #3): all 6,040 ML-1M users in < 5 s
on the 2-core reference machine.
"""

from __future__ import annotations

import time

import click

COLUMNS = ["dataset", "users", "items", "backend", "encode_s", "total_s", "users_per_s", "ndcg@10"]


@click.command("evaluation")
@click.option("--dataset", default="ml-1m", show_default=True)
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--format", "fmt", default=None)
@click.option("--run", "run_dir", default=None, type=click.Path(), help="A trained run to evaluate instead.")
@click.option("--backends", default="torch,faiss-flat", show_default=True)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--out", required=True, type=click.Path(file_okay=False))
def command(dataset, data_dir, fmt, run_dir, backends, repeats, out) -> int:
    """Full-catalog evaluation speed (median of --repeats) for each retrieval backend."""
    import torch

    from seqrec.api import SeqRec
    from seqrec.bench.common import write_results
    from seqrec.evaluation import evaluate, user_vectors
    from seqrec.retrieval import build_retriever

    if run_dir:
        rec = SeqRec.load(run_dir)
    else:
        rec = SeqRec(data={"dataset": dataset, "data_dir": data_dir, "format": fmt})
        rec.data_ = rec._load_data(None)
        torch.manual_seed(0)
        rec.model_ = rec._build_model(rec.data_.n_items).eval()
    model, test = rec.model_, rec.data_.test
    max_len = rec._max_len()
    records = []
    for backend in backends.split(","):
        times, enc = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            user_vectors(model, test.history, max_len, rec.cfg_.eval.batch_size)
            enc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            retr = build_retriever(backend).build(model.item_embeddings().detach())
            m = evaluate(model, test, max_len=max_len, ks=list(rec.cfg_.eval.ks), retriever=retr,
                         batch_size=rec.cfg_.eval.batch_size)
            times.append(time.perf_counter() - t0)
        total = sorted(times)[len(times) // 2]
        records.append({"dataset": rec.data_.name, "users": len(test), "items": rec.data_.n_items, "backend": backend,
                        "encode_s": sorted(enc)[len(enc) // 2], "total_s": total, "users_per_s": len(test) / total,
                        "ndcg@10": m["ndcg@10"]})
        click.echo(f"{backend}: {len(test)} users x {rec.data_.n_items} items in {total:.2f}s", err=True)
    cmd = f"seqrec bench evaluation --dataset {dataset} --backends {backends} --out {out}"
    write_results(out, records, COLUMNS, "Full-catalog evaluation speed", cmd)
    click.echo((__import__("pathlib").Path(out) / "table.md").read_text())
    return 0
