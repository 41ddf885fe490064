"""In-memory containers shared by every stage: CSR sequence store, evaluation sets, prepared data.

Id conventions (everywhere in seqrec):
- users are indexed 0..U-1;
- items are indexed 1..C; 0 is padding (and BERT4Rec's mask token is C+1, owned by that model);
- raw ids are kept in `PreparedData.user_ids` / `item_ids` (index -> raw id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SequenceStore:
    """CSR-style ragged array: row u is ``items[offsets[u]:offsets[u+1]]`` (time order).

    offsets: int64 [R+1], items: int64 [nnz] (internal item ids, 1..C).
    """

    offsets: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)

    @classmethod
    def from_lengths(cls, lengths: np.ndarray, items: np.ndarray) -> SequenceStore:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(offsets, items)

    @classmethod
    def from_lists(cls, rows: list[list[int]]) -> SequenceStore:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0)
        return cls.from_lengths(lengths, items)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def subset(self, rows: np.ndarray) -> SequenceStore:
        """Rows ``rows`` (in that order) as a new store, without a Python loop over rows."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        idx = _ranges(starts, lengths)
        return SequenceStore.from_lengths(lengths, self.items[idx])

    def padded_tail(self, rows: np.ndarray, max_len: int) -> np.ndarray:
        """Last ``max_len`` items of each row, left-padded with 0 -> int64 [len(rows), max_len']

        where max_len' = min(max_len, longest selected row) (batches pad to their own longest).
        """
        rows = np.asarray(rows, dtype=np.int64)
        ends = self.offsets[rows + 1]
        lengths = np.minimum(ends - self.offsets[rows], max_len)
        width = int(max(lengths.max(initial=0), 1))
        out = np.zeros((len(rows), width), dtype=np.int64)
        idx = _ranges(ends - lengths, lengths)
        r = np.repeat(np.arange(len(rows)), lengths)
        c = (
            width
            - np.repeat(lengths, lengths)
            + (np.arange(len(idx)) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        )
        out[r, c] = self.items[idx]
        return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s+l)`` for each (s, l), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offs)


@dataclass
class EvalSet:
    """Users to score: model input history (also the items filtered as seen) and one target each.

    users: int64 [M] user indices; history: SequenceStore with M rows; targets: int64 [M] item ids.
    """

    users: np.ndarray
    history: SequenceStore
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class PreparedData:
    """Preprocessed, split data: everything training, evaluation and recommendation need.

    - ``train``: one training sequence per user index (may be empty for users held out of training);
    - ``valid`` / ``test``: evaluation sets (leak-free: no test target in any training sequence);
    - ``full``: each user's complete known history (for recommend: the model input and seen items);
    - ``user_ids[u]`` raw id of user u; ``item_ids[i]`` raw id of item i (``item_ids[0]`` is a
      placeholder for padding), so C = len(item_ids) - 1;
    - ``item_pop``: int64 [C+1] training interaction counts (index 0 unused);
    - ``timestamps`` / ``roles`` (optional, aligned with ``full.items``): interaction times and the split
      role of each interaction (0 train, 1 valid target, 2 test target, 3 held-out history); kept so a
      prepared directory can be written and re-read exactly.
    """

    name: str
    train: SequenceStore
    valid: EvalSet
    test: EvalSet
    full: SequenceStore
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_pop: np.ndarray
    meta: dict = field(default_factory=dict)
    timestamps: np.ndarray | None = None
    roles: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def catalog_ids(self, raw: Any) -> np.ndarray:
        """Raw item ids -> catalog ids int64 (model id - 1) of those in the catalog, in order."""
        index = {r: i - 1 for i, r in enumerate(self.item_ids.tolist()) if i > 0}
        return np.array([index[x] for x in raw if x in index], dtype=np.int64)
