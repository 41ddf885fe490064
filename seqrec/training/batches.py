"""Training batches from the CSR train store: causal shifted targets and masked-item (BERT4Rec).

Every batch is padded (left) to its own longest row, not always to ``max_len``: short-history
datasets (Amazon: ~9 items) would otherwise spend most of the work on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqrec.data.store import SequenceStore, _ranges


@dataclass
class Windows:
    """Training examples as slices ``items[start:end]`` of a store's item array (time order)."""

    starts: np.ndarray  # int64 [R]
    ends: np.ndarray    # int64 [R]
    rows: np.ndarray    # int64 [R] the user (store row) each window comes from

    def __len__(self) -> int:
        return len(self.starts)


def make_windows(store: SequenceStore, span: int, stride: int | None, min_len: int) -> Windows:
    """The last ``span`` items of every row with at least ``min_len`` items; with ``stride``, also
    earlier windows ending every ``stride`` items back (sliding windows over long histories)."""
    lengths = store.lengths
    rows = np.flatnonzero(lengths >= min_len)
    ends = store.offsets[rows + 1]
    begins = store.offsets[rows]
    if stride:
        # number of extra windows per row: ends stepping back by stride while a full span still fits
        extra = np.maximum((lengths[rows] - span + stride - 1) // stride, 0)
        rep = extra + 1
        k = np.arange(int(rep.sum())) - np.repeat(np.cumsum(rep) - rep, rep)
        rows, begins = np.repeat(rows, rep), np.repeat(begins, rep)
        ends = np.repeat(ends, rep) - k * stride
        keep = ends - begins >= min_len
        rows, begins, ends = rows[keep], begins[keep], ends[keep]
    starts = np.maximum(begins, ends - span)
    return Windows(starts.astype(np.int64), ends.astype(np.int64), rows.astype(np.int64))


POOL_BATCHES = 16  # length grouping sorts within pools of this many batches


def epoch_order(rng: np.random.Generator, lengths: np.ndarray, batch_size: int, group_by_length: bool) -> np.ndarray:
    """Order of the training windows for one epoch -> int64 [R]; batch b is ``order[b*B:(b+1)*B]``.

    Plain: a random permutation. ``group_by_length``: the permutation is cut into pools of
    ``POOL_BATCHES`` batches, each pool sorted by window length (ties stay random) and cut into
    batches, and the batches are shuffled; the leftover R mod B windows (random ones) come last so
    every batch but the last stays full. Batches then pad to similar lengths: on Amazon Beauty the
    padded positions a random batch computes drop from ~10x the real ones to ~2x (ML-1M: 1.9x to 1.05x).
    """
    perm = rng.permutation(len(lengths))
    if not group_by_length:
        return perm
    n_full = len(perm) // batch_size * batch_size
    head, tail = perm[:n_full], perm[n_full:]
    pool = np.arange(n_full) // (POOL_BATCHES * batch_size)
    head = head[np.lexsort((lengths[head], pool))]  # by pool, then length; stable keeps ties random
    batches = head.reshape(-1, batch_size)[rng.permutation(n_full // batch_size)]
    return np.concatenate([batches.ravel(), tail])


def _gather_right_aligned(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Rows ``items[s:e]`` left-padded with 0 to the longest -> int64 [R, W]."""
    lengths = ends - starts
    width = int(max(lengths.max(initial=0), 1))
    out = np.zeros((len(starts), width), dtype=np.int64)
    idx = _ranges(starts, lengths)
    r = np.repeat(np.arange(len(starts)), lengths)
    c = np.repeat(width - lengths, lengths) + (np.arange(len(idx)) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    out[r, c] = items[idx]
    return out


def causal_batch(store: SequenceStore, win: Windows, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets for windows ``sel``: every position predicts the next item.

    Returns (inputs, targets), int64 [B, W]; target 0 where a position has none (padding).
    """
    s, e = win.starts[sel], win.ends[sel]
    inputs = _gather_right_aligned(store.items, s, e - 1)
    targets = _gather_right_aligned(store.items, s + 1, e)
    return inputs, targets


def masked_batch(store: SequenceStore, win: Windows, sel: np.ndarray, mask_prob: float, mask_token: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT4Rec masked-item batch: each real position is replaced by ``mask_token`` with
    probability ``mask_prob`` (at least one per row: the last item if none drawn).

    Returns (inputs, targets) int64 [B, W]; target = original item at masked positions, else 0.
    """
    seq = _gather_right_aligned(store.items, win.starts[sel], win.ends[sel])
    real = seq > 0
    mask = (rng.random(seq.shape) < mask_prob) & real
    none = ~mask.any(axis=1)
    mask[none, -1] = True  # rows are right-aligned: the last column is the latest item
    targets = np.where(mask, seq, 0)
    inputs = np.where(mask, mask_token, seq)
    return inputs, targets


def history_csr(store: SequenceStore, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Catalog-space item sets (model id − 1) of store rows ``rows`` -> (offsets [B+1], items)."""
    sub = store.subset(rows)
    return sub.offsets, sub.items - 1
