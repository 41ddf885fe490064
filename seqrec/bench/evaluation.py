"""``seqrec bench evaluation``: time to score and rank every evaluated user over the full catalog.

Measures ``seqrec.evaluation.evaluate`` (user encoding + top-k search with seen-item filtering +
metrics) on a dataset's test split, for a trained run (``--run``) or a freshly initialised model of
the default config (scoring cost does not depend on the weights). Target (issue #3): all 6,040
ML-1M users in < 5 s on the 2-core reference machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

COLUMNS = ["dataset", "users", "items", "backend", "encode_s", "total_s", "users_per_s", "ndcg@10"]


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _untrained(dataset: str, data_dir: str | None, fmt: str | None) -> Any:
    """A ``SeqRec`` holding ``dataset`` and a freshly initialised model of the default config."""
    import torch

    from seqrec.api import SeqRec
    from seqrec.data import load_dataset
    from seqrec.registry import MODELS

    rec = SeqRec()  # the default config: its model and eval settings
    rec.data_ = load_dataset(dataset, data_dir=data_dir, fmt=fmt)
    torch.manual_seed(0)
    m = rec.cfg_.model  # the typed config: m.params is the section without "name"
    rec.model_ = MODELS.build(m.name, rec.data_.n_items, **m.params).eval()
    return rec


def measure(dataset: str, data_dir: str | None, fmt: str | None, run_dir: str | os.PathLike | None,
            backends: list[str], repeats: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One record per retrieval backend: median over ``repeats`` of the user encoding time and of the
    total evaluation time (s), users/s and the test NDCG@10."""
    from seqrec.api import SeqRec
    from seqrec.evaluation import evaluate, user_vectors
    from seqrec.registry import RETRIEVERS

    rec = SeqRec.load(run_dir) if run_dir else _untrained(dataset, data_dir, fmt)
    model, test, ev = rec.model_, rec.data_.test, rec.cfg_.eval
    max_len = int(getattr(model, "max_len", 200))
    records = []
    for backend in backends:
        times, enc = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            user_vectors(model, test.history, max_len, ev.batch_size)
            enc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            retr = RETRIEVERS.build(backend).build(model.item_embeddings().detach())
            m = evaluate(model, test, max_len=max_len, ks=list(ev.ks), retriever=retr, batch_size=ev.batch_size)
            times.append(time.perf_counter() - t0)
        total = _median(times)
        records.append({"dataset": rec.data_.name, "users": len(test), "items": rec.data_.n_items,
                        "backend": backend, "encode_s": _median(enc), "total_s": total,
                        "users_per_s": len(test) / total, "ndcg@10": m["ndcg@10"]})
        log(f"{backend}: {len(test)} users x {rec.data_.n_items} items in {total:.2f}s")
    return records
