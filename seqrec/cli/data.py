"""``seqrec data`` commands (stats, prepare) and the reusable ``dataset_options`` decorator."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from seqrec.data.readers import FORMATS
from seqrec.data.split import SPLITS

_FORMATS_HELP = "\n".join(f"  {k:<14} {v}" for k, v in FORMATS.items())


def dataset_options(f: Callable) -> Callable:
    """Add ``--data-dir`` and ``--format`` (for every command that takes a DATASET argument)."""
    f = click.option(
        "--format",
        "fmt",
        default=None,
        metavar="NAME",
        help=f"Format of a DATASET file: {', '.join(FORMATS)} (inferred from well-known file names).",
    )(f)
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where named datasets live (default: $SEQREC_DATA, else ~/.cache/seqrec).",
    )(f)
    return f


def preprocessing_options(f: Callable) -> Callable:
    """Add preprocessing / split / column overrides; they arrive as keyword arguments (None = default)."""
    opts = [
        click.option("--min-rating", type=float, default=None, help="Drop interactions rated below this."),
        click.option(
            "--dedup/--no-dedup", default=None, help="Keep only the first of repeated (user, item)."
        ),
        click.option(
            "--min-user", type=click.IntRange(min=0), default=None, help="k-core: min interactions per user."
        ),
        click.option(
            "--min-item", type=click.IntRange(min=0), default=None, help="k-core: min interactions per item."
        ),
        click.option(
            "--kcore",
            type=click.Choice(["fixpoint", "once"]),
            default=None,
            help="Repeat the k-core filter to a fixpoint (default) or apply it once.",
        ),
        click.option(
            "--split", type=click.Choice(list(SPLITS)), default=None, help="Default: leave_one_out."
        ),
        click.option(
            "--q", type=float, default=None, help="global_temporal: timestamp quantile of the cut (0.95)."
        ),
        click.option("--user-col", default=None, help="csv/parquet: user column (default 'user')."),
        click.option("--item-col", default=None, help="csv/parquet: item column (default 'item')."),
        click.option(
            "--time-col",
            default=None,
            help="csv/parquet: time column (default 'timestamp' if present, else row order; '' for none).",
        ),
        click.option(
            "--rating-col", default=None, help="csv/parquet: rating column (default 'rating' if present)."
        ),
        click.option("--sep", default=None, help="csv: field separator (default ',')."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def load_from_options(
    dataset: str,
    data_dir: Path | None = None,
    fmt: str | None = None,
    split: str | None = None,
    **options: Any,
):
    """``load_dataset`` with CLI option values (None means: keep the dataset's default)."""
    from seqrec.data import load_dataset

    options = {k: v for k, v in options.items() if v is not None}
    return load_dataset(dataset, data_dir=data_dir, fmt=fmt, split=split, **options)


@click.group(
    name="data",
    help=f"""Inspect and prepare datasets.

DATASET is a dataset name (ml-1m, ml-20m, ml-100k, amazon-beauty, amazon-sports, amazon-games, synthetic,
synthetic:ml-20m, synthetic:million), a prepared directory, or a file with --format NAME.

\b
Formats:
{_FORMATS_HELP}
""",
)
def data() -> None:
    pass


def _common(f: Callable) -> Callable:
    @click.argument("dataset")
    @dataset_options
    @preprocessing_options
    @click.option(
        "--strict",
        is_flag=True,
        default=None,
        help="Refuse input with rows that are not interactions (repeated headers, unparseable lines, "
        "rows without ids, implausible timestamps) instead of dropping them with a warning.",
    )
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


@data.command()
@_common
def stats(dataset: str, **opts: Any) -> None:
    """Counts after the dataset's preprocessing: users, items, interactions, lengths, density."""
    d = load_from_options(dataset, **opts)
    s, m = d.meta["stats"], d.meta
    L = s["length"]
    lines = [
        ("dataset", m.get("name", d.name)),
        ("source", f"{m.get('source', dataset)} ({m.get('format', 'prepared')})"),
        ("preprocessing", " ".join(f"{k}={v}" for k, v in (m.get("preprocessing") or {}).items()) or "none"),
        ("users", str(s["users"])),
        ("items", str(s["items"])),
        ("interactions", str(s["interactions"])),
        ("density", f"{s['density']:.6f} ({100 * s['density']:.4f}%)"),
        (
            "length",
            f"mean {L['mean']:.2f}  min {L['min']:g}  p25 {L['p25']:g}  median {L['p50']:g}  "
            f"p75 {L['p75']:g}  p90 {L['p90']:g}  p99 {L['p99']:g}  max {L['max']:g}",
        ),
        (
            "split",
            f"{m.get('split')}: train interactions {m['split_sizes']['train_interactions']}, "
            f"valid users {m['split_sizes']['valid_users']}, test users {m['split_sizes']['test_users']}",
        ),
        ("dropped", _dropped(m)),
        ("fingerprint", m.get("fingerprint", "")),
    ]
    for k, v in lines:
        click.echo(f"{k:<14} {v}")


def _dropped(meta: dict) -> str:
    """``reason count, …`` for the rows the checks and preprocessing dropped (``none``: nothing)."""
    dropped = meta.get("dropped")
    if dropped is None:
        return "not recorded (prepared by an older seqrec)"
    return ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"


@data.command()
@_common
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Directory to write (atomically)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty --out directory.")
def prepare(dataset: str, out: Path, overwrite: bool, **opts: Any) -> None:
    """Preprocess and split DATASET into a prepared directory (Parquet + stats.json + meta.json)."""
    from seqrec.data import save_prepared
    from seqrec.errors import DataError

    if out.is_dir() and any(out.iterdir()) and not overwrite:  # refused before any reading
        raise DataError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    d = load_from_options(dataset, **opts)
    save_prepared(d, out, overwrite=overwrite)
    s = d.meta["stats"]
    click.echo(
        f"prepared {d.name}: users {s['users']} items {s['items']} interactions {s['interactions']} "
        f"split {d.meta.get('split')} -> {out}"
    )
