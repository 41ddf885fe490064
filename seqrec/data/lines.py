"""Line-level reading for the delimited text formats: every line kept with its number and text.

A text reader does not parse the file with typed columns (one bad line would fail the whole file,
and the error could not name it): it reads each line as text, splits it into the format's fields and
casts them without failing. The result carries the helper columns ``seqrec.data.sanity.check``
judges (see there): ``_line`` (1-based line number in the file), ``_bad`` (the line does not parse:
wrong field count, or a value that is not of the field's type), ``_header`` (the line repeats the
file's header) and ``_blank`` (an empty line). A message quotes a line by reading it again
(``line_text``): no row carries its text.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import polars as pl

from seqrec.errors import DataError

HELPERS = ("_line", "_bad", "_header", "_blank")  # the columns ``seqrec.data.sanity.check`` judges
SEP_NONE = "\x1f"  # a separator that never occurs in these formats: read whole lines as one column


def scan_lines(source: Path | bytes, lossy: bool = False) -> pl.LazyFrame:
    """File (or its bytes) -> LazyFrame of ``_line`` (uint32, from 1) and ``_text`` (str; null: blank).
    ``lossy``: invalid UTF-8 becomes U+FFFD (to quote a line of a latin-1 file)."""
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    reader = pl.read_csv if isinstance(source, bytes) else pl.scan_csv
    lf = reader(
        src,
        separator=SEP_NONE,
        has_header=False,
        new_columns=["_text"],
        quote_char=None,
        schema_overrides={"_text": pl.String},
        encoding="utf8-lossy" if lossy else "utf8",
    ).lazy()
    # blank lines are kept (as null) by this single-column read, so row index + 1 is the line number
    return lf.with_row_index("_line", offset=1)  # UInt32: 4e9 lines


def line_text(path: Path, line: int) -> str | None:
    """The text of line ``line`` (1-based) of ``path``, for a message; None when it cannot be read."""
    try:
        rows = scan_lines(path, lossy=True).filter(pl.col("_line") == line).select("_text").collect()
    except (pl.exceptions.PolarsError, OSError):
        return None
    return rows.item() if rows.height else None


def read_delimited(
    source: Path | bytes, sep: str, fields: dict[str, pl.DataType], header: str | None = None
) -> pl.LazyFrame:
    """A delimited file without quoting -> ``fields`` + helper columns. ``header``: its first line.

    A clean file is parsed with its types at once (fast, little memory); one where that fails or
    leaves an empty value is read again line by line (``split_fields``), which tells each line's fault.
    """
    skip = 0 if header is None else 1
    try:
        src = io.BytesIO(source) if isinstance(source, bytes) else source
        df = pl.read_csv(src, separator=sep, has_header=False, skip_rows=skip, new_columns=list(fields),
                         schema_overrides=fields, quote_char=None)
    except pl.exceptions.PolarsError:
        df = None
    if df is not None and df.height and not any(df.null_count().row(0)):
        no = pl.lit(False)
        return df.lazy().with_row_index("_line", offset=1 + skip).with_columns(_bad=no, _header=no, _blank=no)
    lines = scan_lines(source)
    return split_fields(lines.filter(pl.col("_line") > skip), sep, fields, header=header)


def split_fields(
    lines: pl.LazyFrame,
    sep: str,
    fields: dict[str, pl.DataType],
    ids: tuple[str, ...] = ("user", "item"),
    header: str | None = None,
) -> pl.LazyFrame:
    """Split ``_text`` on ``sep`` into ``fields`` (name -> dtype), cast without failing.

    An empty id field becomes null (the row has no id: ``sanity`` counts those apart); any other
    problem marks the row ``_bad``: too few or too many fields, an empty value, or one that does not
    cast. ``header``: the file's header line, whose repeats are marked ``_header``.
    """
    names = list(fields)
    n = len(names)
    text = pl.col("_text").str.strip_chars()
    parts = text.str.split_exact(sep, n)
    raw = [parts.struct.field(f"field_{i}") for i in range(n)]
    cols, bad = [], parts.struct.field(f"field_{n}").is_not_null()  # more fields than the format has
    for name, r in zip(names, raw, strict=True):
        dtype = fields[name]
        value = r if dtype == pl.String else r.cast(dtype, strict=False)
        if name in ids:
            value = pl.when(r == "").then(None).otherwise(value)
            bad = bad | r.is_null() | (value.is_null() & (r != ""))
        else:
            bad = bad | value.is_null()
        cols.append(value.alias(name))
    is_header = (text == header.strip()) if header is not None else pl.lit(False)
    blank = text.fill_null("") == ""
    return lines.select(*cols, "_line", bad.fill_null(True).alias("_bad"), is_header.alias("_header"),
                        blank.alias("_blank"))


HEAD = 65536  # bytes sampled from the start of a file (header, encoding check)


def head(path: Path, n: int = HEAD) -> bytes:
    """The first ``n`` bytes of ``path`` (gunzipped for .gz); DataError when it cannot be read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:  # a broken .gz raises all three
        raise DataError(f"{path}: cannot read ({first_line(e)})") from None


def check_utf8(path: Path, data: bytes) -> None:
    """DataError unless ``data`` (the head of ``path``) is UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut by the end of the sample is fine -- only when the sample is a
        # prefix of a longer file; a short file is the whole file and must decode entirely
        if not (len(data) >= HEAD and e.reason == "unexpected end of data"):
            raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
