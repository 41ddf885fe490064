"""``seqrec recommend``: top-k items per user (raw ids) to a Parquet or CSV file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from seqrec.cli.evaluate import EVAL_SET_HELP, load_for_eval
from seqrec.cli.options import plugin_option, retrieval_option, set_option
from seqrec.errors import SeqrecError, shorten, warn


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise SeqrecError(f"{p}: no such file")
    return p


def _read_frame(p: Path, what: str) -> Any:
    """A Parquet or CSV file (all columns as strings for CSV) as a polars DataFrame."""
    import polars as pl

    try:
        return pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema_length=0)
    except Exception as e:  # polars raises several error types for unreadable files
        raise SeqrecError(f"{p}: cannot read {what} ({shorten(e, 160)})") from None


def _read_id_file(path: str, dtype_like: Any) -> list:
    import polars as pl

    p = _existing(path)
    if p.suffix == ".parquet":
        s = _read_frame(p, "ids").to_series(0)
    else:
        try:
            lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        except UnicodeDecodeError:
            raise SeqrecError(f"{p}: not valid UTF-8 text") from None
        if lines and lines[0].lower() in ("user", "item", "user_id", "item_id"):
            lines = lines[1:]
        s = pl.Series(lines)
    return _cast_like(s.to_list(), dtype_like, p)


def _cast_like(values: list, dtype_like: Any, source: Any) -> list:
    if getattr(getattr(dtype_like, "dtype", None), "kind", "O") in "iu":
        try:
            return [int(v) for v in values]
        except (TypeError, ValueError):
            raise SeqrecError(f"{source}: ids must be integers for this dataset") from None
    return [str(v) for v in values]


def _read_histories(path: str, rec: Any) -> Any:
    """JSON ``{"user": [item, ...]}`` -> a dict (an empty list is an empty history); CSV/Parquet rows
    ``user,item`` in time order -> a polars frame (grouped per user by ``SeqRec.recommend``)."""
    import polars as pl

    p = _existing(path)
    catalog = rec.data_.item_ids[1:]
    if p.suffix == ".json":
        repeated: list = []
        try:
            raw = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=lambda kv: _join(kv, repeated))
        except (ValueError, UnicodeDecodeError) as e:
            raise SeqrecError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise SeqrecError(f'{p}: expected {{"user": [item, ...], ...}}')
        if repeated:
            warn(f"{p}: {len(repeated)} repeated users: their histories joined in file order")
        return {u: _cast_like(v, catalog, p) for u, v in raw.items()}
    df = _read_frame(p, "histories")
    if not {"user", "item"} <= set(df.columns):
        raise SeqrecError(f"{p}: histories need columns user,item (one row per interaction, in time order)")
    integer = getattr(getattr(catalog, "dtype", None), "kind", "O") in "iu"
    try:
        item = df["item"].cast(pl.Int64 if integer else pl.String, strict=True)
    except pl.exceptions.PolarsError:
        raise SeqrecError(f"{p}: ids must be integers for this dataset") from None
    return df.select("user", item.alias("item"))


def _join(pairs: list[tuple[str, Any]], repeated: list) -> dict:
    """A JSON object whose repeated keys join their lists in file order (json keeps only the last)."""
    out: dict = {}
    for key, value in pairs:
        if key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = out[key] + value
            repeated.append(key)
        else:
            out[key] = value
    return out


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--users", "users_file", default=None, help="File of raw user ids (one per line, or .parquet).")
@click.option("--all", "all_users", is_flag=True, help="Recommend for every user known at training time.")
@click.option("--histories", default=None, help="New users' histories: CSV/Parquet (user,item rows) or JSON.")
@click.option("--unknown", type=click.Choice(["error", "skip", "popular"]), default=None,
              help="--users ids not known at training time: fail (default), leave them out, or recommend by "
                   "popularity.")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="FILE.parquet or FILE.csv")
@retrieval_option
@click.option("--filter-seen/--keep-seen", default=True, help="Exclude items already in the history.")
@click.option("--items", "allow_file", default=None, help="Allow-list: recommend only these raw item ids.")
@click.option("--exclude-items", "deny_file", default=None, help="Deny-list of raw item ids.")
@set_option(EVAL_SET_HELP)
@plugin_option
def recommend(run_dir, users_file, all_users, histories, unknown, k, out, retrieval, filter_seen, allow_file,
              deny_file, sets) -> int:
    """Write the top-k items per user (raw ids: user, item, score, rank) to a Parquet or CSV file.

    A user with no known item in their history gets the most popular items (score = training
    interaction count), with a warning."""
    from seqrec.io import atomic_path

    if sum(x is not None and x is not False for x in (users_file, all_users or None, histories)) != 1:
        raise SeqrecError("give exactly one of --users FILE, --all, --histories FILE")
    if unknown is not None and not users_file:
        raise SeqrecError("--unknown applies to --users (with --histories every user is new: an empty history "
                          "gets popularity)")
    outp = Path(out)
    if outp.suffix not in (".parquet", ".csv"):
        raise SeqrecError(f"--out {out}: use a .parquet or .csv file name")
    rec = load_for_eval(run_dir, retrieval, sets)
    kw: dict[str, Any] = {}
    if allow_file:
        kw["items"] = _read_id_file(allow_file, rec.data_.item_ids[1:])
    if deny_file:
        kw["exclude_items"] = _read_id_file(deny_file, rec.data_.item_ids[1:])
    if histories:
        df = rec.recommend(histories=_read_histories(histories, rec), k=k, filter_seen=filter_seen, **kw)
    else:
        users = None if all_users else _read_id_file(users_file, rec.data_.user_ids)
        df = rec.recommend(users=users, k=k, filter_seen=filter_seen, unknown=unknown or "error", **kw)
    with atomic_path(outp) as tmp:
        (df.write_parquet if outp.suffix == ".parquet" else df.write_csv)(tmp)
    click.echo(f"wrote {df.height} rows for {df['user'].n_unique()} users to {outp}", err=True)
    return 0
