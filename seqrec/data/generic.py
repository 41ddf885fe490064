"""Generic readers: a CSV with a header, or a Parquet file, with columns named by the caller.

Output as every reader's (see ``seqrec.data.readers``): user, item, timestamp[, rating] and the helper
columns ``_line`` (CSV: the line in the file, the header being line 1; Parquet: the row), ``_bad``,
``_header`` (a row whose ids are the id columns' names) and ``_blank`` (a row with no value at all).
A CSV gets the column types polars infers; one with a repeated header (which makes a number column
text) is read as text and each column given the type all its other values have (``_typed_csv``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from seqrec.data.lines import check_utf8, first_line, head
from seqrec.errors import DataError

AUTO = "<auto>"


def read_generic(
    path: Path,
    kind: str,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = AUTO,
    rating_col: str | None = AUTO,
    sep: str = ",",
) -> tuple[pl.LazyFrame, bool]:
    """Generic csv/parquet. ``time_col``/``rating_col`` default to ``timestamp``/``rating`` when such a
    column exists (no timestamp column: the row order is the time order); None or "" means none."""
    lf, names = _scan_csv(path, sep) if kind == "csv" else _scan_parquet(path)
    if time_col == AUTO:
        time_col = "timestamp" if "timestamp" in names else None
    if rating_col == AUTO:
        rating_col = "rating" if "rating" in names else None
    rename = {user_col: "user", item_col: "item"}
    if time_col:
        rename[time_col] = "timestamp"
    if rating_col:
        rename[rating_col] = "rating"
    require(path, names, rename)
    header = (pl.col(user_col).cast(pl.String) == user_col) & (pl.col(item_col).cast(pl.String) == item_col)
    blank = pl.all_horizontal([pl.col(c).is_null() for c in rename])  # an empty record: no data at all
    cols = [pl.col(k).alias(v) for k, v in rename.items()]
    cols += [header.fill_null(False).alias("_header"), blank.alias("_blank"), "_line"]
    lf = lf.with_row_index("_line", offset=2 if kind == "csv" else 1)  # a CSV's header is line 1
    if kind == "csv":
        lf = _typed_csv(path, sep, lf.select(cols), cols)
    else:
        lf = lf.select(cols)
    bad = pl.lit(False)
    if rating_col:  # a rating that is there but is no number
        rating = pl.col("rating").cast(pl.Float64, strict=False)
        bad = pl.col("rating").is_not_null() & rating.is_null()
        lf = lf.with_columns(rating.alias("rating"), bad.alias("_bad"))
    else:
        lf = lf.with_columns(bad.alias("_bad"))
    if not time_col:
        return lf.with_columns(pl.int_range(pl.len()).cast(pl.Int64).alias("timestamp")), False
    return lf.with_columns(_to_seconds(lf)), True


def _typed_csv(path: Path, sep: str, inferred: pl.LazyFrame, cols: list) -> pl.LazyFrame:
    """The CSV with the types polars infers, unless that fails or meets a repeated header: then read
    as text and each column narrowed to the type all its values (header rows aside) have -- ids
    Int64 else String, times Int64 / Float64 else parsed by ``_to_seconds``."""
    try:
        df = inferred.collect()
        if not df.get_column("_header").any():
            return df.lazy()
    except pl.exceptions.PolarsError:  # a value unlike the first rows' type
        pass
    text = pl.scan_csv(path, separator=sep, has_header=True, infer_schema=False)
    df = text.with_row_index("_line", offset=2).select(cols).collect()
    rows = df.filter(~pl.col("_header"))
    casts = {}
    for col, dtypes in (("user", [pl.Int64]), ("item", [pl.Int64]), ("timestamp", [pl.Int64, pl.Float64])):
        if col not in df.columns:
            continue
        values = rows.get_column(col).drop_nulls()
        for dtype in dtypes:
            if values.cast(dtype, strict=False).null_count() == 0:
                casts[col] = pl.col(col).cast(dtype, strict=False)
                break
    return df.lazy().with_columns(**casts)


def _scan_parquet(path: Path) -> tuple[pl.LazyFrame, list[str]]:
    try:
        lf = pl.scan_parquet(path)
        return lf, lf.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({first_line(e)})") from None


def _scan_csv(path: Path, sep: str) -> tuple[pl.LazyFrame, list[str]]:
    data = head(path)
    check_utf8(path, data)
    names = [c.strip().strip('"') for c in data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r").split(sep)]
    return pl.scan_csv(path, separator=sep, has_header=True, infer_schema_length=10_000), names


def require(path: Path, names: list[str], rename: dict[str, str]) -> None:
    """DataError naming the columns of ``rename`` that ``names`` lacks."""
    missing = [c for c in rename if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'}); "
            f"name them with --user-col/--item-col/--time-col"
        )


def _to_seconds(lf: pl.LazyFrame) -> pl.Expr:
    """Numeric timestamps pass through; strings are parsed as numbers or ISO dates (-> epoch seconds);
    unparsable values become null (``sanity`` counts the row as unparseable)."""
    dt = lf.collect_schema()["timestamp"]
    c = pl.col("timestamp")
    if dt.is_numeric():
        return c
    if dt in (pl.Date, pl.Datetime) or isinstance(dt, pl.Datetime):
        return c.cast(pl.Datetime("us")).dt.epoch("s")
    s = c.cast(pl.String)
    return pl.coalesce(
        s.cast(pl.Int64, strict=False),
        s.cast(pl.Float64, strict=False),
        s.str.to_datetime(strict=False).dt.epoch("s"),
    ).alias("timestamp")
