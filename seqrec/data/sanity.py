"""Sanity checks on raw interactions, between a reader and preprocessing (docs/data.md, "Checks").

Never a silent wrong result: a row that is not an interaction (a repeated header, a line that does
not parse, a row without an id, an implausible timestamp) is either dropped with a one-line warning
that names how many and the first one, or -- when the input is clearly broken, or under ``strict`` --
refused with a one-line DataError. All the work is polars expressions over the whole frame.

Input columns: ``user``, ``item``, ``timestamp``[, ``rating``], ``_line`` (1-based line number in the
file, or row / record number) and the reader's optional helper columns ``_bad`` (the line does not
parse), ``_header`` (the row repeats the header), ``_blank`` (an empty line).
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from seqrec.data.lines import HELPERS, line_text
from seqrec.errors import DataError, shorten, warn

BAD_SHARE = 0.10  # more than this share of the rows unparseable or without ids: the input is refused
EMPTY_SHARE = 0.50  # an id column empty in more than this share of the rows: refused, naming the column
TIME_MIN_S = 631_152_000  # 1990-01-01T00:00:00Z: earlier epoch seconds are implausible
TIME_SLACK_S = 86_400  # later than now + 1 day is implausible
SHOW_CHARS = 60  # a quoted line is shortened to about this many characters, at a word boundary

# reasons a row is dropped, in the order they are tested (a row counts under its first reason)
BLANK, HEADER, BAD, NO_ID, TIME = (
    "blank lines",
    "repeated header rows",
    "unparseable rows",
    "rows without ids",
    "implausible timestamps",
)
SINGULAR = {BLANK: "blank line", HEADER: "repeated header row", BAD: "unparseable row",
            NO_ID: "row without ids", TIME: "implausible timestamp"}


def _reasons(df: pl.DataFrame, has_time: bool) -> tuple[pl.Expr, list[tuple[str, pl.Expr]]]:
    """-> (data-row expression, [(reason, expression)]) with each row under its first reason only."""
    cols = df.columns
    blank = pl.col("_blank").fill_null(False) if "_blank" in cols else pl.lit(False)
    header = pl.col("_header").fill_null(False) if "_header" in cols else pl.lit(False)
    bad = pl.col("_bad").fill_null(True) if "_bad" in cols else pl.lit(False)
    if has_time:  # a time the reader could not parse is null
        bad = bad | pl.col("timestamp").is_null()
    no_id = pl.col("user").is_null() | pl.col("item").is_null()
    out = [(BLANK, blank), (HEADER, header & ~blank), (BAD, bad & ~blank & ~header),
           (NO_ID, no_id & ~blank & ~header & ~bad)]
    if has_time:
        ok = ~(blank | header | bad | no_id)
        ts, hi = pl.col("timestamp"), time.time() + TIME_SLACK_S
        # only a column that is mostly epoch seconds is checked: one of another unit (an order, a step
        # counter, milliseconds throughout) is used for its order alone, where its unit cannot matter
        median = df.select(ts.filter(ok).median()).item()
        if median is not None and TIME_MIN_S <= float(median) <= hi:  # type: ignore[arg-type]
            out.append((TIME, ok & ((ts < TIME_MIN_S) | (ts > hi))))
        else:
            out.append((TIME, pl.lit(False)))
    return ~(blank | header), out


def _first(df: pl.DataFrame, flag: pl.Expr, where: tuple[str, Path | None], why: bool = False) -> str:
    """``line N: 'text'`` of the first row flagged: the line read again from the file (``where`` =
    (unit, file to quote; None: quote the row's values)); ``why``: and the fields that are bad."""
    unit, path = where
    row = df.filter(flag).head(1).row(0, named=True)
    values = [c for c in ("user", "item", "timestamp", "rating") if c in df.columns]
    text = line_text(path, row["_line"]) if path is not None else None
    if text is None:
        text = ", ".join(f"{c}={row[c]}" for c in values)
    missing = [c for c in values if row[c] is None]
    reason = f": bad or missing {', '.join(missing)}" if why and missing else ""
    return f"{unit} {row['_line']}: {shorten(text, SHOW_CHARS)!r}{reason}"


def check(
    frame: pl.LazyFrame | pl.DataFrame,
    source: str,
    has_time: bool,
    strict: bool = False,
    unit: str = "line",
    path: Path | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Judge the rows of a reader's frame -> (the clean rows without helper columns, dropped counts).

    Refused (DataError), always: more than BAD_SHARE of the rows unparseable or without ids, an id
    column empty in more than EMPTY_SHARE of them, more than BAD_SHARE implausible timestamps.
    Dropped with a warning per reason (DataError under ``strict``): the rest. Blank lines are
    dropped silently (they hold no interaction). ``unit``: what ``_line`` counts (line, row, record);
    ``path``: the file whose lines a message quotes (for unit ``line``; else the row's values).
    """
    df = frame.lazy().collect()
    where = (unit, path if unit == "line" else None)
    data, reasons = _reasons(df, has_time)
    counts = df.select([e.sum().alias(r) for r, e in reasons] + [data.sum().alias("_n")]).row(0, named=True)
    n = int(counts.pop("_n") or 0)
    counts = {r: int(v or 0) for r, v in counts.items()}
    flags = dict(reasons)
    if n:
        _refuse_broken(df, flags, counts, n, source, where)
    for reason, count in counts.items():
        if count == 0 or reason == BLANK:
            continue
        first = _first(df, flags[reason], where, why=reason == BAD)
        scope = "before 1990-01-01 or after now + 1 day; " if reason == TIME else ""
        what = f"{source}: {count} {_one(reason, count)} ({scope}first at {first})"
        if strict:
            raise DataError(f"{what}; refused in strict mode (--strict, data.strict)")
        warn(f"{what}; dropped {'it' if count == 1 else 'them'}")
    drop = [c for c in HELPERS if c in df.columns]
    if any(counts.values()):
        df = df.filter(~pl.any_horizontal([e for _, e in reasons]))
    return df.drop(drop), counts


def _refuse_broken(
    df: pl.DataFrame,
    flags: dict[str, pl.Expr],
    counts: dict[str, int],
    n: int,
    source: str,
    where: tuple[str, Path | None],
) -> None:
    """Raise a DataError when the input is clearly broken (not a few rows a user could mean)."""
    parsed = ~flags[BLANK] & ~flags[HEADER] & ~flags[BAD]
    for col in ("user", "item"):
        empty = parsed & pl.col(col).is_null()
        k = int(df.select(empty.sum()).item())
        if k > EMPTY_SHARE * n:
            raise DataError(f"{source}: the {col} column is mostly empty ({k} of {n} rows; first at "
                            f"{_first(df, empty, where)})")
    unusable = counts[BAD] + counts[NO_ID]
    if unusable > BAD_SHARE * n:
        flag = flags[BAD] | flags[NO_ID]
        raise DataError(f"{source}: {unusable} of {n} rows ({100 * unusable / n:.0f}%) cannot be read "
                        f"(first at {_first(df, flag, where, why=True)}); is the format right?")
    k = counts.get(TIME, 0)
    if k > BAD_SHARE * n:
        raise DataError(f"{source}: {k} of {n} timestamps are outside 1990-01-01 .. now + 1 day "
                        f"(first at {_first(df, flags[TIME], where)}); seconds and milliseconds mixed?")


def _one(reason: str, count: int) -> str:
    """The reason's words for ``count`` rows (singular for one)."""
    return SINGULAR[reason] if count == 1 else reason
