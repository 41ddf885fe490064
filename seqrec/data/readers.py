"""Readers: each raw format -> one canonical polars LazyFrame (user, item, timestamp[, rating]).

Raw ids are kept as they are (ints or strings). ``timestamp`` is numeric (seconds, or the line order for
order-only formats such as SASRec / S3-Rec files). ``read`` returns (frame, has_time).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable
from pathlib import Path

import polars as pl

from seqrec.errors import DataError

FORMATS: dict[str, str] = {
    "ml-1m-dat": "MovieLens-1M ratings.dat: UserID::MovieID::Rating::Timestamp (latin-1)",
    "movielens-csv": "MovieLens-20M/25M/32M ratings.csv: header userId,movieId,rating,timestamp",
    "ml-100k": "MovieLens-100k u.data: user<TAB>item<TAB>rating<TAB>timestamp",
    "amazon-csv": "Amazon ratings-only CSV, no header: user,item,rating,timestamp",
    "amazon-json": "Amazon review JSON lines (reviewerID, asin, unixReviewTime[, overall]); plain or .gz",
    "recbole": "RecBole atomic .inter file, typed header (user_id:token, item_id:token, timestamp:float)",
    "sasrec": "SASRec 'user item' lines; line order is time order",
    "s3rec": "S3-Rec 'user i1 i2 ...' lines, items in time order",
    "csv": "generic CSV with a header; columns named by user_col/item_col/time_col/rating_col",
    "parquet": "generic Parquet; columns named by user_col/item_col/time_col/rating_col",
}
READER_OPTIONS = ("user_col", "item_col", "time_col", "rating_col", "sep")
_SEP_NONE = "\x1f"  # a separator that never occurs: read whole lines as one column
_WELL_KNOWN = {"ratings.dat": "ml-1m-dat", "ratings.csv": "movielens-csv", "u.data": "ml-100k"}


def infer_format(path: Path) -> str:
    """Format from a well-known file name or extension; DataError when it cannot be told."""
    name = path.name.lower()
    if name in _WELL_KNOWN:
        return _WELL_KNOWN[name]
    for ext, fmt in (
        (".parquet", "parquet"),
        (".inter", "recbole"),
        (".json.gz", "amazon-json"),
        (".jsonl", "amazon-json"),
        (".json", "amazon-json"),
    ):
        if name.endswith(ext):
            return fmt
    raise DataError(
        f"{path}: cannot tell the format from the file name; pass --format (one of {', '.join(FORMATS)})"
    )


def read(path: str | Path, fmt: str, **options) -> tuple[pl.LazyFrame, bool]:
    """Read ``path`` in format ``fmt`` -> (LazyFrame with user, item, timestamp[, rating], has_time)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    bad = set(options) - set(READER_OPTIONS)
    if bad:
        raise DataError(f"{path}: unknown reader option(s) {', '.join(sorted(bad))}")
    if fmt not in ("csv", "parquet") and options:
        raise DataError(
            f"{path}: column options ({', '.join(options)}) only apply to the csv/parquet formats"
        )
    return _READERS[fmt](path, **options)


_HEAD = 65536


def _head(path: Path, n: int = _HEAD) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:  # a broken .gz raises all three
        raise DataError(f"{path}: cannot read ({_first_line(e)})") from None


def _check_utf8(path: Path, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut by the end of the sample is fine -- only when the sample is a
        # prefix of a longer file; a short file is the whole file and must decode entirely
        if not (len(data) >= _HEAD and e.reason == "unexpected end of data"):
            raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None


def _delimited(path: Path, sep: str, names: list[str], dtypes: list[pl.DataType]) -> pl.LazyFrame:
    _check_utf8(path, _head(path))
    return pl.scan_csv(
        path,
        separator=sep,
        has_header=False,
        new_columns=names,
        schema_overrides=dict(zip(names, dtypes, strict=False)),
        quote_char=None,
    )


def _ml1m_dat(path: Path) -> tuple[pl.LazyFrame, bool]:
    # '::' is two characters (polars separators are one byte) and the file is latin-1: decode, re-separate
    text = path.read_bytes().decode("latin-1")
    df = pl.read_csv(
        io.StringIO(text.replace("::", "\t")),
        separator="\t",
        has_header=False,
        new_columns=["user", "item", "rating", "timestamp"],
        quote_char=None,
        schema_overrides={"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64},
    )
    return df.lazy(), True


def _movielens_csv(path: Path) -> tuple[pl.LazyFrame, bool]:
    lf = _with_header(
        path, ",", {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
    )
    return lf, True


def _ml100k(path: Path) -> tuple[pl.LazyFrame, bool]:
    return _delimited(
        path, "\t", ["user", "item", "rating", "timestamp"], [pl.Int64, pl.Int64, pl.Float64, pl.Int64]
    ), True


def _amazon_csv(path: Path) -> tuple[pl.LazyFrame, bool]:
    return _delimited(
        path, ",", ["user", "item", "rating", "timestamp"], [pl.String, pl.String, pl.Float64, pl.Int64]
    ), True


def _amazon_json(path: Path) -> tuple[pl.LazyFrame, bool]:
    head = _head(path)
    _check_utf8(path, head)
    schema = {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.Int64, "overall": pl.Float64}
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                df = pl.read_ndjson(f.read(), schema=schema)
        else:
            df = pl.read_ndjson(path, schema=schema)
    except (pl.exceptions.PolarsError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not Amazon JSON lines ({_first_line(e)})") from None
    for col in ("reviewerID", "asin", "unixReviewTime"):
        if df.get_column(col).null_count() == df.height:
            raise DataError(f"{path}: missing field {col!r} (needs reviewerID, asin, unixReviewTime)")
    return df.lazy().select(
        pl.col("reviewerID").alias("user"),
        pl.col("asin").alias("item"),
        pl.col("unixReviewTime").alias("timestamp"),
        pl.col("overall").alias("rating"),
    ), True


def _recbole(path: Path) -> tuple[pl.LazyFrame, bool]:
    head = _head(path)
    _check_utf8(path, head)
    header = head.split(b"\n", 1)[0].decode("utf-8").rstrip("\r").split("\t")
    fields = [h.split(":", 1)[0] for h in header]
    types = [h.split(":", 1)[1] if ":" in h else "" for h in header]
    if "user_id" not in fields or "item_id" not in fields:
        raise DataError(f"{path}: RecBole header needs user_id and item_id (found: {', '.join(header)})")
    dtype = {"token": pl.String, "float": pl.Float64, "token_seq": pl.String, "float_seq": pl.String}
    lf = pl.scan_csv(
        path,
        separator="\t",
        has_header=True,
        new_columns=fields,
        quote_char=None,
        schema_overrides={f: dtype.get(t, pl.String) for f, t in zip(fields, types, strict=False)},
    )
    cols = [pl.col("user_id").alias("user"), pl.col("item_id").alias("item")]
    has_time = "timestamp" in fields
    cols.append(pl.col("timestamp") if has_time else pl.int_range(pl.len()).cast(pl.Int64).alias("timestamp"))
    if "rating" in fields:
        cols.append(pl.col("rating").cast(pl.Float64))
    return lf.select(cols), has_time


def _sasrec(path: Path) -> tuple[pl.LazyFrame, bool]:
    lf = _delimited(path, " ", ["user", "item"], [pl.Int64, pl.Int64])
    return lf.with_row_index("timestamp").with_columns(pl.col("timestamp").cast(pl.Int64)), False


def _s3rec(path: Path) -> tuple[pl.LazyFrame, bool]:
    _check_utf8(path, _head(path))
    parts = (
        pl.scan_csv(
            path,
            separator=_SEP_NONE,
            has_header=False,
            new_columns=["line"],
            quote_char=None,
            schema_overrides={"line": pl.String},
        )
        .select(pl.col("line").str.strip_chars().str.split(" ").alias("f"))
        .filter(pl.col("f").list.len() > 0)
    )
    lf = (
        parts.select(pl.col("f").list.first().alias("user"), pl.col("f").list.slice(1).alias("item"))
        .explode("item")
        .filter(pl.col("item").is_not_null() & (pl.col("item") != ""))
        .with_columns(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64))
        .with_row_index("timestamp")
        .with_columns(pl.col("timestamp").cast(pl.Int64))
    )
    return lf, False


_AUTO = "<auto>"


def _generic(
    path: Path,
    kind: str,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = _AUTO,
    rating_col: str | None = _AUTO,
    sep: str = ",",
) -> tuple[pl.LazyFrame, bool]:
    """Generic csv/parquet. ``time_col``/``rating_col`` default to ``timestamp``/``rating`` when such a
    column exists (no timestamp column: the row order is the time order); None or "" means none."""
    lf, names = _scan_csv(path, sep) if kind == "csv" else _scan_parquet(path)
    if time_col == _AUTO:
        time_col = "timestamp" if "timestamp" in names else None
    if rating_col == _AUTO:
        rating_col = "rating" if "rating" in names else None
    rename = {user_col: "user", item_col: "item"}
    if time_col:
        rename[time_col] = "timestamp"
    if rating_col:
        rename[rating_col] = "rating"
    _require(path, names, rename)
    lf = lf.select([pl.col(k).alias(v) for k, v in rename.items()])
    if not time_col:
        return lf.with_columns(pl.int_range(pl.len()).cast(pl.Int64).alias("timestamp")), False
    return lf.with_columns(_to_seconds(lf)), True


def _scan_parquet(path: Path) -> tuple[pl.LazyFrame, list[str]]:
    try:
        lf = pl.scan_parquet(path)
        return lf, lf.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({_first_line(e)})") from None


def _scan_csv(path: Path, sep: str) -> tuple[pl.LazyFrame, list[str]]:
    head = _head(path)
    _check_utf8(path, head)
    names = [c.strip().strip('"') for c in head.split(b"\n", 1)[0].decode("utf-8").rstrip("\r").split(sep)]
    return pl.scan_csv(path, separator=sep, has_header=True, infer_schema_length=10_000), names


def _with_header(path: Path, sep: str, rename: dict[str, str]) -> pl.LazyFrame:
    lf, names = _scan_csv(path, sep)
    _require(path, names, rename)
    return lf.select([pl.col(k).alias(v) for k, v in rename.items()])


def _require(path: Path, names: list[str], rename: dict[str, str]) -> None:
    missing = [c for c in rename if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(names) or 'none'}); "
            f"name them with --user-col/--item-col/--time-col"
        )


def _to_seconds(lf: pl.LazyFrame) -> pl.Expr:
    """Numeric timestamps pass through; strings are parsed as numbers or ISO dates (-> epoch seconds);
    unparsable values become null and are reported by preprocessing."""
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


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


_READERS: dict[str, Callable[..., tuple[pl.LazyFrame, bool]]] = {
    "ml-1m-dat": _ml1m_dat,
    "movielens-csv": _movielens_csv,
    "ml-100k": _ml100k,
    "amazon-csv": _amazon_csv,
    "amazon-json": _amazon_json,
    "recbole": _recbole,
    "sasrec": _sasrec,
    "s3rec": _s3rec,
    "csv": lambda p, **o: _generic(p, "csv", **o),
    "parquet": lambda p, **o: _generic(p, "parquet", **o),
}
