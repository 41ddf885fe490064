"""Readers: each raw format -> one canonical polars LazyFrame (user, item, timestamp[, rating]).

Raw ids are kept as they are (ints or strings). ``timestamp`` is numeric (seconds, or the line order for
order-only formats such as SASRec / S3-Rec files). ``read`` returns (frame, has_time). The frame also
carries the helper columns ``seqrec.data.sanity.check`` judges (``_line``, ``_bad``, ``_header``,
``_blank``; see there): a reader never fails on a bad line, it marks it.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

import polars as pl

from seqrec.data.generic import read_generic, require
from seqrec.data.lines import HELPERS, check_utf8, first_line, head, read_delimited, scan_lines
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
UNITS = {"amazon-json": "record", "parquet": "row"}  # what a reader's ``_line`` counts (else: line)
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


_INT, _FLOAT, _STR = pl.Int64, pl.Float64, pl.String
_RATINGS = {"user": _INT, "item": _INT, "rating": _FLOAT, "timestamp": _INT}


def _delimited(path: Path, sep: str, fields: dict[str, pl.DataType], header: bool = False) -> pl.LazyFrame:
    """A delimited text file without quoting (see ``seqrec.data.lines``)."""
    sample = head(path)
    check_utf8(path, sample)
    first = sample.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r") if header else None
    return read_delimited(path, sep, fields, header=first)


def _ml1m_dat(path: Path) -> tuple[pl.LazyFrame, bool]:
    # '::' is two characters (polars separators are one byte) and the file is latin-1: decode, re-separate
    text = path.read_bytes().decode("latin-1").replace("::", "\t").encode("utf-8")
    return read_delimited(text, "\t", _RATINGS), True


def _movielens_csv(path: Path) -> tuple[pl.LazyFrame, bool]:
    first = head(path).split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    names = [c.strip().strip('"') for c in first.split(",")]
    order = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
    require(path, names, order)
    if names != list(order):  # other columns or another order: the generic reader maps them by name
        lf, _ = read_generic(path, "csv", "userId", "movieId", "timestamp", "rating")
        return lf, True
    return _delimited(path, ",", _RATINGS, header=True), True


def _ml100k(path: Path) -> tuple[pl.LazyFrame, bool]:
    return _delimited(path, "\t", _RATINGS), True


def _amazon_csv(path: Path) -> tuple[pl.LazyFrame, bool]:
    return _delimited(path, ",", {"user": _STR, "item": _STR, "rating": _FLOAT, "timestamp": _INT}), True


def _amazon_json(path: Path) -> tuple[pl.LazyFrame, bool]:
    check_utf8(path, head(path))
    schema = {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.Int64, "overall": pl.Float64}
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                df = pl.read_ndjson(f.read(), schema=schema)
        else:
            df = pl.read_ndjson(path, schema=schema)
    except (pl.exceptions.PolarsError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not Amazon JSON lines ({first_line(e)})") from None
    for col in ("reviewerID", "asin", "unixReviewTime"):
        if df.get_column(col).null_count() == df.height:
            raise DataError(f"{path}: missing field {col!r} (needs reviewerID, asin, unixReviewTime)")
    return df.lazy().with_row_index("_line", offset=1).select(
        "_line",
        pl.col("reviewerID").alias("user"),
        pl.col("asin").alias("item"),
        pl.col("unixReviewTime").alias("timestamp"),
        pl.col("overall").alias("rating"),
    ), True


def _recbole(path: Path) -> tuple[pl.LazyFrame, bool]:
    sample = head(path)
    check_utf8(path, sample)
    line = sample.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    header = line.split("\t")
    fields = [h.split(":", 1)[0] for h in header]
    types = dict(zip(fields, [h.split(":", 1)[1] if ":" in h else "" for h in header], strict=True))
    if "user_id" not in fields or "item_id" not in fields:
        raise DataError(f"{path}: RecBole header needs user_id and item_id (found: {', '.join(header)})")
    has_time = "timestamp" in fields
    # tokens stay text; the float fields this reader uses are parsed (one that is not marks its row)
    names = {f: {"user_id": "user", "item_id": "item"}.get(f, f if f in ("timestamp", "rating") else f"_f{i}")
             for i, f in enumerate(fields)}
    spec = {names[f]: pl.Float64 if names[f] in ("timestamp", "rating") and types[f] == "float" else pl.String
            for f in fields}
    lf = read_delimited(path, "\t", spec, header=line)
    if not has_time:
        lf = lf.with_columns(pl.int_range(pl.len()).cast(pl.Int64).alias("timestamp"))
    keep = ["user", "item", "timestamp", *(["rating"] if "rating" in fields else []), *HELPERS]
    return lf.select(keep), has_time


def _sasrec(path: Path) -> tuple[pl.LazyFrame, bool]:
    lf = _delimited(path, " ", {"user": _INT, "item": _INT})
    return lf.with_columns((pl.col("_line").cast(pl.Int64) - 1).alias("timestamp")), False  # line order = time


def _s3rec(path: Path) -> tuple[pl.LazyFrame, bool]:
    check_utf8(path, head(path))
    parts = scan_lines(path).with_columns(pl.col("_text").str.strip_chars().str.split(" ").alias("f"))
    lf = (
        parts.select("_line", pl.col("f").list.first().alias("u"), pl.col("f").list.slice(1).alias("i"))
        .explode("i")
        .filter(pl.col("i").is_not_null() & (pl.col("i") != ""))
        .with_columns(pl.col("u").cast(pl.Int64, strict=False).alias("user"),
                      pl.col("i").cast(pl.Int64, strict=False).alias("item"))
        .with_columns((pl.col("user").is_null() | pl.col("item").is_null()).alias("_bad"),
                      pl.lit(False).alias("_header"), pl.lit(False).alias("_blank"))
        .with_row_index("timestamp")
        .with_columns(pl.col("timestamp").cast(pl.Int64))
    )
    return lf.select("user", "item", "timestamp", *HELPERS), False


_READERS: dict[str, Callable[..., tuple[pl.LazyFrame, bool]]] = {
    "ml-1m-dat": _ml1m_dat,
    "movielens-csv": _movielens_csv,
    "ml-100k": _ml100k,
    "amazon-csv": _amazon_csv,
    "amazon-json": _amazon_json,
    "recbole": _recbole,
    "sasrec": _sasrec,
    "s3rec": _s3rec,
    "csv": lambda p, **o: read_generic(p, "csv", **o),
    "parquet": lambda p, **o: read_generic(p, "parquet", **o),
}
