"""Who ``SeqRec.recommend`` answers, and how: raw users or histories -> the rows the model scores and
the rows answered by popularity, then one DataFrame(user, item, score, rank) with raw ids.

Fallbacks (each announced with a ``SeqrecWarning`` that counts the users it touched):
- a history that is empty, or holds only items outside the trained catalog, cannot be encoded: the
  user gets the most popular training items (score = the item's training interaction count,
  ``PreparedData.item_pop``; allow/deny lists apply; nothing is seen, so nothing is filtered);
- an unknown user among ``users=`` follows ``unknown``: ``"error"`` (one-line error naming the first
  few), ``"skip"`` (left out) or ``"popular"`` (popularity rows, as above);
- a user id given twice is answered once, at its first position.

Imports only data and retrieval (it sits below ``seqrec.api``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from seqrec.data.store import PreparedData, SequenceStore
from seqrec.errors import SeqrecError, warn
from seqrec.retrieval.base import Filters

UNKNOWN_POLICIES = ("error", "skip", "popular")
SHOWN = 5  # raw ids quoted in a message before "…"
EMPTY = "have an empty history"  # known users whose whole history is empty (no row to encode)


@dataclass
class Queries:
    """The users to answer, in output order, split between the model and the popularity fallback.

    users: raw ids [M] (first occurrences, input order); store: the histories the model encodes (model
    ids 1..C, one row per ``model_rows`` entry); model_rows / pop_rows: int64 positions in ``users``.
    """

    users: pl.Series
    store: SequenceStore
    model_rows: np.ndarray
    pop_rows: np.ndarray


def build_queries(data: PreparedData, users: Any = None, histories: Any = None,
                  unknown: str = "error") -> Queries:
    """Resolve ``users`` (raw ids known at training time; None = all) or ``histories`` (a mapping
    user -> raw items in time order, or a DataFrame with columns user, item) into ``Queries``."""
    if unknown not in UNKNOWN_POLICIES:
        raise SeqrecError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}")
    if histories is not None:
        if users is not None:
            raise SeqrecError("pass either users or histories, not both")
        return _from_histories(data, histories)
    if users is None:
        rows = np.arange(data.n_users, dtype=np.int64)
        return _split_empty(data.full.subset(rows), pl.Series("user", data.user_ids), EMPTY)
    return _from_users(data, users, unknown)


def _n(count: int, word: str) -> str:
    """``"1 item"``, ``"3 items"``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _quote(raw: list) -> str:
    return ", ".join(repr(u) for u in raw[:SHOWN]) + (", …" if len(raw) > SHOWN else "")


def _first_occurrences(raw: list) -> list:
    """``raw`` with repeats removed (first occurrence order), with a warning counting them."""
    unique = list(dict.fromkeys(raw))
    if len(unique) < len(raw):
        warn(f"{_n(len(raw) - len(unique), 'repeated user id')}: each user answered once")
    return unique


def _from_users(data: PreparedData, users: Any, unknown: str) -> Queries:
    if isinstance(users, str | bytes | int | np.integer):
        raise SeqrecError(f"users must be a list of raw user ids, got the single value {users!r}")
    raw = _first_occurrences(list(users))
    index = {r: i for i, r in enumerate(data.user_ids.tolist())}
    rows = np.fromiter((index.get(u, -1) for u in raw), dtype=np.int64, count=len(raw))
    known = rows >= 0
    missing = [u for u, ok in zip(raw, known.tolist(), strict=True) if not ok]
    if missing and unknown == "error":
        raise SeqrecError(f"{_n(len(missing), 'unknown user')}: {_quote(missing)}; "
                          "pass --unknown skip|popular (API: unknown='skip'|'popular'), or their histories")
    if missing and unknown == "skip":
        warn(f"{len(missing)} of {len(raw)} users are unknown, left out: {_quote(missing)}")
        rows, raw, known = rows[known], [u for u, ok in zip(raw, known.tolist(), strict=True) if ok], known[known]
    elif missing:
        warn(f"{len(missing)} of {len(raw)} users are unknown, recommended by popularity: {_quote(missing)}")
    if known.all():
        user_col = pl.Series("user", data.user_ids[rows])
    else:  # known users keep the catalog's raw id, unknown ones the id as given
        vals = np.empty(len(raw), dtype=object)
        vals[:] = raw
        vals[known] = data.user_ids[rows[known]]
        user_col = _series(vals.tolist())
    lengths = np.zeros(len(rows), dtype=np.int64)
    lengths[known] = data.full.lengths[rows[known]]
    store = data.full.subset(rows[known])
    return _split_empty(SequenceStore.from_lengths(lengths, store.items), user_col, EMPTY, unknown=~known)


def _series(values: list) -> pl.Series:
    try:
        return pl.Series("user", values)
    except (TypeError, ValueError, pl.exceptions.PolarsError):  # ids of mixed types: all as text
        return pl.Series("user", [str(v) for v in values])


def _from_histories(data: PreparedData, histories: Any) -> Queries:
    if isinstance(histories, Mapping):
        user_col = _series(list(histories))
        lists = list(histories.values())
        bad = next((u for u, v in histories.items() if isinstance(v, str | bytes) or not hasattr(v, "__len__")), None)
        if bad is not None:
            raise SeqrecError(f"histories[{bad!r}] must be a list of raw item ids, "
                              f"got a {type(histories[bad]).__name__}")
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = list(itertools.chain.from_iterable(lists))
    else:
        frame = histories if isinstance(histories, pl.DataFrame) else pl.DataFrame(histories)
        if not {"user", "item"} <= set(frame.columns):
            raise SeqrecError("histories need columns user, item (one row per interaction, in time order)")
        grouped = frame.group_by("user", maintain_order=True).agg(pl.col("item"))  # duplicates merged
        user_col = grouped["user"]
        lengths = grouped["item"].list.len().to_numpy().astype(np.int64)
        flat = grouped["item"].explode().to_list()
    index = {r: i for i, r in enumerate(data.item_ids.tolist()) if i > 0}
    mapped = np.fromiter((index.get(x, 0) for x in flat), dtype=np.int64, count=len(flat))
    known = mapped > 0
    row = np.repeat(np.arange(len(lengths)), lengths)
    kept = np.bincount(row[known], minlength=len(lengths)).astype(np.int64)
    dropped = np.bincount(row[~known], minlength=len(lengths))[kept > 0]
    if dropped.any():
        warn(f"{_n(int(dropped.sum()), 'history item')} of {_n(int(np.count_nonzero(dropped)), 'user')} "
             "not in the trained catalog: ignored")
    return _split_empty(SequenceStore.from_lengths(kept, mapped[known]), user_col.rename("user"),
                        "have no known item in their history")


def _split_empty(store: SequenceStore, user_col: pl.Series, what: str,
                 unknown: np.ndarray | None = None) -> Queries:
    """Rows with an empty history go to popularity, with a warning counting them (``what`` says why;
    ``unknown`` users were announced already); the others keep their model row."""
    empty = store.lengths == 0
    n_new = int(np.count_nonzero(empty if unknown is None else empty & ~unknown))
    if n_new:
        warn(f"{n_new} of {len(empty)} users {what}: recommended by popularity")
    model_rows = np.flatnonzero(~empty)
    return Queries(user_col, store.subset(model_rows), model_rows, np.flatnonzero(empty))


def popularity_topk(item_pop: np.ndarray, k: int, allow: Any = None,
                    deny: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most popular eligible items -> (scores float32 [k'], catalog ids int64 [k']), k' <= k.

    ``item_pop``: int64 [C+1] training interaction counts (index 0 = padding); score = that count;
    ties broken by the lower id, as the exact retrievers do; ``allow`` / ``deny``: catalog ids.
    """
    n_items = len(item_pop) - 1
    ids = np.flatnonzero(Filters(1, n_items, allow=allow, deny=deny).eligible_mask())
    pop = np.asarray(item_pop)[1:][ids]
    order = np.argsort(-pop, kind="stable")[:k]
    return pop[order].astype(np.float32), ids[order]


def assemble(q: Queries, k: int, model_hits: tuple[Any, Any] | None, pop_hits: tuple[np.ndarray, np.ndarray],
             item_ids: np.ndarray) -> pl.DataFrame:
    """One DataFrame(user, item, score, rank) in ``q.users`` order from the model's (scores [Mm, k],
    catalog ids [Mm, k], −1 = none) and the popularity list; rank 1 = best, no padding rows."""
    m = len(q.users)
    ids = np.full((m, k), -1, dtype=np.int64)
    scores = np.zeros((m, k), dtype=np.float32)
    if model_hits is not None:
        s, i = np.asarray(model_hits[0]), np.asarray(model_hits[1])
        ids[q.model_rows, :i.shape[1]], scores[q.model_rows, :i.shape[1]] = i, s
    n = len(pop_hits[1])
    ids[q.pop_rows[:, None], np.arange(n)], scores[q.pop_rows[:, None], np.arange(n)] = pop_hits[1], pop_hits[0]
    valid = ids >= 0
    user_rep = np.repeat(np.arange(m), k)[valid.ravel()]
    return pl.DataFrame({
        "user": q.users.gather(user_rep),
        "item": pl.Series("item", item_ids[ids[valid] + 1]),
        "score": scores[valid],
        "rank": np.tile(np.arange(1, k + 1), m)[valid.ravel()].astype(np.int32),
    })
