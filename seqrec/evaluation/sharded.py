"""Evaluation sharded over the ranks of a torch.distributed process group, merged exactly.

Single-process evaluation (``ranking.evaluate``) encodes users in length-ordered batches
(``encode.encode_batches``). Here the same batches are dealt round-robin to the ranks, so every
user's query vector is computed in exactly the batch, with exactly the padding, of a single
process: bit for bit the same vector. Each rank searches the top-k of its own users, then every
rank receives every rank's (user rows, target ranks, top-k ids per cutoff) and computes the
metrics from the users' ranks put back in the evalset's order: the same arrays and the same
float64 sums as one process (``metrics.rank_metrics``), coverage from the union of the ranks'
top-k ids. Only [M] ranks and the distinct top-k ids travel, never scores or vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from seqrec.data.store import EvalSet
from seqrec.evaluation.encode import encode_batches, encode_context, last_states
from seqrec.evaluation.metrics import rank_metrics, target_ranks
from seqrec.evaluation.ranking import model_inputs
from seqrec.models.base import Encoder


def shard_rows(model: Encoder, evalset: EvalSet, max_len: int, batch_size: int, rank: int,
               world: int) -> list[np.ndarray]:
    """The encoding batches (row indices into ``evalset``) rank ``rank`` of ``world`` evaluates:
    single-process evaluation's length-ordered batches, every ``world``-th one from ``rank``."""
    lengths = np.minimum(evalset.history.lengths, max_len) + (0 if model.causal else 1)
    return list(encode_batches(lengths, batch_size))[rank::world]


@torch.no_grad()
def _shard_ranks(model: Encoder, evalset: EvalSet, batches: list[np.ndarray], max_len: int, k: int,
                 filter_seen: bool, device: str | torch.device, encode_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [m], top-k catalog ids int64 [m, k]) of the users in ``batches``."""
    from seqrec.retrieval import build_retriever

    rows = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    was_training = model.training
    model.eval()
    out = []
    with encode_context(encode_dtype, device):
        for b in batches:  # as user_vectors does: the same batches give the same vectors
            inp = torch.from_numpy(model_inputs(model, evalset.history, b, max_len)).to(device)
            out.append(last_states(model, inp).float().cpu())
    model.train(was_training)
    queries = torch.cat(out) if out else torch.zeros(0, model.item_embeddings().shape[1])
    retriever = build_retriever("torch", device=str(device)).build(model.item_embeddings().detach().float().cpu())
    hist = evalset.history.subset(rows)
    exclude = (hist.offsets, hist.items - 1) if filter_seen else None
    _, ids = retriever.search(queries, k, exclude=exclude)
    return rows, np.asarray(ids)


def evaluate_sharded(model: Encoder, evalset: EvalSet, *, max_len: int, ks: list[int], filter_seen: bool = True,
                     batch_size: int = 1024, device: str | torch.device = "cpu", encode_dtype: str = "float32",
                     group: Any = None) -> dict[str, float]:
    """``ranking.evaluate``'s metrics (hr/ndcg/mrr/coverage@k, users) with the users split over the
    ranks of ``group`` (default: the whole process group); every rank gets the same result, equal to
    a single process's. Exact top-k (the torch retriever) only. A collective: every rank must call it."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    kmax = max(ks)
    batches = shard_rows(model, evalset, max_len, batch_size, rank, world)
    rows, ids = _shard_ranks(model, evalset, batches, max_len, kmax, filter_seen, device, encode_dtype)
    ranks = target_ranks(ids, np.asarray(evalset.targets)[rows] - 1)
    seen = {k: np.unique(ids[:, :k][ids[:, :k] >= 0]) for k in ks}
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (rows, ranks, seen), group=group)
    return merge_parts(parts, len(evalset), ks, model.item_embeddings().shape[0])


def merge_parts(parts: list[tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]], n_users: int, ks: list[int],
                n_items: int) -> dict[str, float]:
    """The metrics of the ranks' (rows, ranks [m], distinct top-k ids per k) parts, as one process computes
    them: the ranks in evalset order, then ``rank_metrics``; coverage@k = |union of the ids| / n_items."""
    full = np.full(n_users, -2, dtype=np.int64)
    for rows, ranks, _ in parts:
        full[rows] = ranks
    if (full == -2).any():
        raise RuntimeError("sharded evaluation: some users were evaluated by no rank")
    metrics = rank_metrics(full, ks)
    for k in sorted(ks):
        ids = np.unique(np.concatenate([seen[k] for _, _, seen in parts]))
        metrics[f"coverage@{k}"] = float(len(ids) / max(n_items, 1))
    metrics["users"] = n_users
    return metrics
