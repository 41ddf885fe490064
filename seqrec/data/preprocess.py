"""Canonical interactions table -> filtered, ordered, id-mapped sequences.

Input: a polars (Lazy)Frame with columns ``user``, ``item`` (raw ids, any type), ``timestamp`` (numeric:
seconds, or the input order for order-only formats) and optionally ``rating``.
Steps: min rating -> stable time order -> de-dup (keep first) -> iterative k-core -> contiguous ids.
Order is (user, timestamp, input order): ties in time are never reshuffled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from seqrec.errors import ConfigError, DataError

ORDER = "_order"  # input row number, the tie-breaker


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing knobs (all optional; the defaults change nothing).

    min_rating: drop rows with rating < min_rating (needs a rating column);
    dedup: keep only the first (earliest) interaction of each repeated (user, item);
    min_user / min_item: k-core thresholds (interactions per user / per item);
    kcore: ``fixpoint`` repeats the filter until nothing changes; ``once`` applies it a single time
    on the counts of the input (SASRec's Amazon filter).
    """

    min_rating: float | None = None
    dedup: bool = False
    min_user: int = 0
    min_item: int = 0
    kcore: Literal["fixpoint", "once"] = "fixpoint"

    def __post_init__(self) -> None:
        if self.min_user < 0 or self.min_item < 0:
            raise ConfigError(f"min_user/min_item must be >= 0, got {self.min_user}/{self.min_item}")
        if self.kcore not in ("fixpoint", "once"):
            raise ConfigError(f"kcore must be 'fixpoint' or 'once', got {self.kcore!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Preprocessing:
        d = {k: v for k, v in (d or {}).items() if v is not None or k == "min_rating"}
        bad = set(d) - set(cls.__dataclass_fields__)
        if bad:
            raise ConfigError(
                f"unknown preprocessing key(s) {', '.join(sorted(bad))} "
                f"(known: {', '.join(cls.__dataclass_fields__)})"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Interactions:
    """Preprocessed interactions, sorted by (user, time, input order).

    users int64 [n] in 0..U-1 (non-decreasing), items int64 [n] in 1..C, timestamps [n] (int64 or float64),
    user_ids [U] / item_ids [C+1] raw ids (item_ids[0] is a padding placeholder), has_time: whether
    ``timestamps`` are real times (False: input order only); dropped: rows each step removed
    (``below min_rating``, ``duplicates``, ``k-core``), by name.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    has_time: bool = True
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.bincount(self.users, minlength=len(self.user_ids)).astype(np.int64)


def kcore(frame: pl.DataFrame, min_user: int, min_item: int, once: bool = False) -> pl.DataFrame:
    """Keep rows whose user has >= min_user rows and item >= min_item rows, to a fixpoint (or once)."""
    if min_user <= 1 and min_item <= 1:
        return frame
    while True:
        n = frame.height
        frame = frame.filter((pl.len().over("user") >= min_user) & (pl.len().over("item") >= min_item))
        if once or frame.height == n or frame.height == 0:
            return frame


def preprocess(
    frame: pl.LazyFrame | pl.DataFrame, prep: Preprocessing, source: str = "data", has_time: bool = True
) -> Interactions:
    """Apply ``prep`` to a canonical table -> Interactions. ``source`` names the input in errors."""
    lf = frame.lazy()
    cols = lf.collect_schema().names()
    if ORDER not in cols:
        lf = lf.with_row_index(ORDER)
    if prep.min_rating is not None and "rating" not in cols:
        raise DataError(f"{source}: min_rating={prep.min_rating} needs a rating column, and this input has none")
    keep = pl.col("rating") >= prep.min_rating if prep.min_rating is not None else pl.lit(True)
    try:
        df = lf.select("user", "item", "timestamp", ORDER, keep.fill_null(False).alias("_keep")).collect()
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{source}: {_explain(e)}") from None
    dropped = {}
    if prep.min_rating is not None:
        n = df.height
        df = df.filter("_keep")
        dropped["below min_rating"] = n - df.height
    df = df.drop("_keep")
    if df.height == 0:
        raise DataError(f"{source}: no interactions (empty input, or min_rating removed everything)")
    for col in ("user", "item", "timestamp"):
        nulls = df.get_column(col).is_null()
        if nulls.any():
            row = int(df.get_column(ORDER).filter(nulls)[0])
            what = "missing or unparsable timestamp" if col == "timestamp" else f"missing {col} id"
            raise DataError(f"{source}: {int(nulls.sum())} row(s) with {what} (first at data row {row + 1})")
    df = df.sort(["user", "timestamp", ORDER], maintain_order=True)
    if prep.dedup:
        n = df.height
        df = df.unique(subset=["user", "item"], keep="first", maintain_order=True)
        dropped["duplicates"] = n - df.height
    if prep.min_user > 1 or prep.min_item > 1:
        n = df.height
        df = kcore(df, prep.min_user, prep.min_item, once=prep.kcore == "once")
        dropped["k-core"] = n - df.height
    if df.height == 0:
        raise DataError(
            f"{source}: k-core filtering (min_user={prep.min_user}, min_item={prep.min_item}) "
            f"leaves no interactions"
        )
    # contiguous ids in raw-id order (so 1..C raw ids map to themselves for items). Rows are sorted by
    # raw user, so a user's index is the number of user changes before its rows (O(n), no sort).
    user = df.get_column("user")
    first = user.ne_missing(user.shift(1)).to_numpy()
    users = np.cumsum(first, dtype=np.int64) - 1
    items, item_ids = _dense_ids(df.get_column("item"))
    return Interactions(
        users=users,
        items=items,
        timestamps=df.get_column("timestamp").to_numpy(),
        user_ids=user.filter(pl.Series(first)).to_numpy(),
        item_ids=item_ids,
        has_time=has_time,
        dropped=dropped,
    )


def _dense_ids(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids -> (codes 1..C in raw-id order, int64 [n]; raw id of each code, [C+1] with a pad at 0)."""
    if s.dtype.is_integer():
        a = s.to_numpy().astype(np.int64, copy=False)
        lo, hi = int(a.min()), int(a.max())
        if hi - lo < 8 * len(a) + (1 << 20):  # dense enough for a lookup table: O(n) instead of a sort
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[a - lo] = True
            code = np.cumsum(present, dtype=np.int64)
            return code[a - lo], np.concatenate([[0], np.flatnonzero(present) + lo])
    uniq = s.unique().sort()
    codes = s.replace_strict(uniq, pl.int_range(1, len(uniq) + 1, eager=True), return_dtype=pl.Int64)
    raw = uniq.to_numpy()
    pad = np.array([_pad(uniq)], dtype=object if raw.dtype == object or raw.dtype.kind == "U" else raw.dtype)
    return codes.to_numpy(), np.concatenate([pad, raw.astype(pad.dtype, copy=False)])


def _pad(s: pl.Series):
    """Placeholder raw id for padding index 0 (same dtype as the ids)."""
    if s.dtype.is_numeric():
        return 0 if s.dtype.is_integer() else 0.0
    return "<pad>"


def _explain(e: BaseException) -> str:
    """One line from a polars parse error (invalid UTF-8 and unparsable values named as such)."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if "utf-8" in msg.lower() or "utf8" in msg.lower():
        return f"invalid UTF-8 ({msg})"
    return f"cannot parse ({msg})"
