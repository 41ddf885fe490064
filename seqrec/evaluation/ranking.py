"""Score users over the whole catalog through the retrieval layer; keep only the top-k."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from seqrec.data.store import SequenceStore
from seqrec.evaluation.encode import encode_batches, encode_context, last_states
from seqrec.evaluation.metrics import coverage, rank_metrics, target_ranks
from seqrec.models.base import Encoder
from seqrec.progress import progress


def model_inputs(model: Encoder, history: SequenceStore, rows: np.ndarray, max_len: int) -> np.ndarray:
    """Left-padded model input [B, W] for predicting each row's next item.

    Causal models read the last ``max_len`` items; BERT4Rec reads the last ``max_len - 1`` items
    followed by its mask token (the prediction slot).
    """
    if model.causal:
        return history.padded_tail(rows, max_len)
    tail = history.padded_tail(rows, max_len - 1)
    mask = np.full((len(rows), 1), model.mask_token, dtype=np.int64)
    return np.concatenate([tail, mask], axis=1)


@torch.no_grad()
def user_vectors(model: Encoder, history: SequenceStore, max_len: int, batch_size: int = 1024,
                 device: str | torch.device = "cpu", dtype: str = "float32") -> torch.Tensor:
    """Query vector (hidden state of the last position) of every row of ``history`` -> float32 [M, d].

    Rows are encoded in order of history length, so each batch is padded only to the longest of
    similar rows: on Amazon-like data (mean ~9 items, a few of 200) batches in row order would be
    padded to ~200 and spend >90% of the encoder on padding. The encoders are padding-invariant
    (right-aligned positions, padding keys masked), so the order does not change the vectors.
    A batch holds at most ``batch_size`` rows and ``encode.ENCODE_TOKENS`` padded positions; only
    the last position is computed where the model allows it (``encode.last_states``). ``dtype``:
    "float32" (exact) or "bfloat16" (autocast, see ``encode.encode_context``).
    """
    was_training = model.training
    model.eval()
    lengths = np.minimum(history.lengths, max_len) + (0 if model.causal else 1)  # + BERT4Rec's mask slot
    out, rows_done = [], []
    with encode_context(dtype, device), progress(total=len(lengths), desc="encoding users", unit="user") as bar:
        for rows in encode_batches(lengths, batch_size):
            inp = torch.from_numpy(model_inputs(model, history, rows, max_len)).to(device)
            out.append(last_states(model, inp).float().cpu())
            rows_done.append(rows)
            bar.update(len(rows))
    model.train(was_training)
    if not out:
        return torch.zeros(0, model.d)
    order = np.concatenate(rows_done)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return torch.cat(out)[torch.from_numpy(back)]


def evaluate(model: Encoder, evalset: Any, *, max_len: int, ks: list[int], retriever: Any = None,
             filter_seen: bool = True, batch_size: int = 1024, device: str | torch.device = "cpu",
             recall_sample: int = 0, seed: int = 0, encode_dtype: str = "float32") -> dict[str, float]:
    """HR/NDCG/MRR@k and coverage@k of ``model`` on ``evalset`` (users × whole catalog, top max(ks) kept).

    ``retriever``: a built ``seqrec.retrieval`` index over ``model.item_embeddings()`` (exact torch
    top-k when None). With an approximate backend and ``recall_sample`` > 0, the result also holds
    ``retrieval_recall@K`` (its recall against exact search on that many sampled users).
    ``encode_dtype``: "float32" (exact) or "bfloat16" (faster, metrics change slightly; ``user_vectors``).
    """
    kmax = max(ks)
    retriever, queries, exclude, ids = _search(model, evalset, max_len, kmax, retriever, filter_seen, batch_size,
                                               device, encode_dtype)
    ranks = target_ranks(ids, np.asarray(evalset.targets) - 1)
    metrics = rank_metrics(ranks, ks)
    metrics.update(coverage(ids, ks, model.item_embeddings().shape[0]))
    metrics["users"] = len(evalset)
    if recall_sample and not retriever.exact:
        from seqrec.retrieval import approximation_report

        rep = approximation_report(retriever, queries, kmax, exclude, sample=recall_sample, seed=seed)
        metrics[f"retrieval_recall@{kmax}"] = rep["recall@k_vs_exact"]
        metrics["retrieval_sample"] = rep["sample"]
    return metrics


def evaluation_ranks(model: Encoder, evalset: Any, *, max_len: int, k: int, retriever: Any = None,
                     filter_seen: bool = True, batch_size: int = 1024,
                     device: str | torch.device = "cpu", encode_dtype: str = "float32") -> np.ndarray:
    """0-based rank of each evaluated user's target in the top ``k`` -> int [M] (-1: not in the top k).

    The per-user record behind ``evaluate``'s averages (same search, same filtering), for paired
    comparisons of two models on the same users (``seqrec.evaluation.compare_ranks``).
    """
    *_, ids = _search(model, evalset, max_len, k, retriever, filter_seen, batch_size, device, encode_dtype)
    return target_ranks(ids, np.asarray(evalset.targets) - 1)


def _search(model: Encoder, evalset: Any, max_len: int, k: int, retriever: Any, filter_seen: bool,
            batch_size: int, device: str | torch.device,
            encode_dtype: str = "float32") -> tuple[Any, torch.Tensor, Any, np.ndarray]:
    """Top-``k`` catalog ids [M, k] of every evaluated user (plus the retriever, queries and exclusions)."""
    from seqrec.retrieval import build_retriever

    if retriever is None:
        retriever = build_retriever("torch", device=str(device)).build(model.item_embeddings().detach().float().cpu())
    queries = user_vectors(model, evalset.history, max_len, batch_size, device, encode_dtype)
    exclude = (evalset.history.offsets, evalset.history.items - 1) if filter_seen else None
    _, ids = retriever.search(queries, k, exclude=exclude)
    return retriever, queries, exclude, np.asarray(ids)
