"""Data layer: readers -> preprocessing -> leak-free split -> PreparedData (CSR sequences).

Entry point: ``load_dataset(spec, ...)`` where ``spec`` is
- a dataset name with a card in ``datasets/`` (``ml-1m``, ``amazon-beauty``, ``synthetic``, ...), with an
  optional synthetic preset as ``synthetic:ml-20m``;
- a prepared directory written by ``save_prepared`` (fast: no preprocessing);
- a file path, with ``fmt`` one of ``FORMATS`` (inferred from well-known file names when omitted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from seqrec.data.preprocess import Interactions, Preprocessing, preprocess
from seqrec.data.readers import FORMATS, READER_OPTIONS, infer_format, read
from seqrec.data.split import SPLITS
from seqrec.data.split import split as split_interactions
from seqrec.data.store import EvalSet, PreparedData, SequenceStore
from seqrec.errors import ConfigError, DataError
from seqrec.progress import stages

__all__ = [
    "FORMATS",
    "SPLITS",
    "EvalSet",
    "Interactions",
    "PreparedData",
    "Preprocessing",
    "SequenceStore",
    "check_spec",
    "load_dataset",
    "load_frame",
    "load_interactions",
    "save_prepared",
    "DataError",
]


def _split_options(options: dict[str, Any]) -> tuple[dict, dict, dict]:
    prep_keys = set(Preprocessing.__dataclass_fields__)
    prep = {k: v for k, v in options.items() if k in prep_keys}
    # time_col=None explicitly means "no timestamp column: use the input order"
    read_opts = {
        k: v for k, v in options.items() if k in READER_OPTIONS and (v is not None or k == "time_col")
    }
    rest = {k: v for k, v in options.items() if k not in prep_keys and k not in READER_OPTIONS}
    return prep, read_opts, rest


def _read_preprocess(
    path: Path, fmt: str, read_opts: dict, prep: Preprocessing, strict: bool
) -> tuple[Interactions, dict[str, int]]:
    """Read, check (``sanity``), preprocess -> (interactions, rows dropped per reason)."""
    import polars as pl

    from seqrec.data.preprocess import _explain
    from seqrec.data.readers import UNITS
    from seqrec.data.sanity import check

    try:
        frame, has_time = read(path, fmt, **read_opts)
        rows, dropped = check(frame, str(path), has_time, strict, UNITS.get(fmt, "line"), path)
        inter = preprocess(rows, prep, source=str(path), has_time=has_time)
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{path}: {_explain(e)}") from None
    return inter, {**dropped, **inter.dropped}


def load_interactions(
    spec: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    fmt: str | None = None,
    strict: bool = False,
    **options: Any,
) -> tuple[str, Interactions, dict]:
    """Read and preprocess ``spec`` (name or file; not a prepared dir) -> (name, interactions, meta).

    Rows that are not interactions (repeated headers, unparseable lines, rows without ids, implausible
    timestamps) are dropped with a warning, or refused with a DataError when ``strict`` or when the
    input is clearly broken (see ``seqrec.data.sanity``); ``meta["dropped"]`` counts them per reason,
    with the rows preprocessing removed. ``options``: Preprocessing fields (override the card's
    defaults), reader options (``user_col``, ``item_col``, ``time_col``, ``rating_col``, ``sep``),
    ``synthetic`` (dict of generator parameters).
    """
    from seqrec.data import cards

    prep_over, read_opts, rest = _split_options(options)
    synth = rest.pop("synthetic", None) or {}
    rest.pop("q", None)
    if rest:
        raise ConfigError(f"unknown dataset option(s): {', '.join(sorted(rest))}")
    path = Path(spec)
    is_name = str(spec).split(":", 1)[0] in cards.all_cards() and not path.exists()
    if path.exists() or os.sep in str(spec) or (fmt is not None and not is_name):
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory but not a prepared dataset (no meta.json)")
        fmt = fmt or infer_format(path)
        prep = Preprocessing.from_dict(prep_over)
        inter, dropped = _read_preprocess(path, fmt, read_opts, prep, strict)
        meta = {"source": str(path), "format": fmt, "preprocessing": prep.to_dict(), "dropped": dropped}
        return path.stem, inter, meta
    name = str(spec)
    card = cards.get_card(name.split(":", 1)[0])
    if fmt is not None:
        raise DataError(f"{name}: --format applies to a file path, not to a named dataset")
    if card.get("format") == "synthetic":
        return _load_synthetic(name, card, synth, prep_over)
    path, entry = cards.resolve(card, data_dir)
    prep = Preprocessing.from_dict({**(entry.get("preprocessing") or {}), **prep_over})
    read_opts = {**(entry.get("read") or {}), **read_opts}
    inter, dropped = _read_preprocess(path, entry["format"], read_opts, prep, strict)
    return name, inter, {"source": str(path), "format": entry["format"], "preprocessing": prep.to_dict(),
                         "dropped": dropped}


def _load_synthetic(name: str, card: dict, synth: dict, prep_over: dict) -> tuple[str, Interactions, dict]:
    """A synthetic dataset (``name`` may carry a preset: ``synthetic:ml-20m``) -> as load_interactions."""
    from dataclasses import asdict

    from seqrec.data import synthetic as syn

    preset = name.split(":", 1)[1] if ":" in name else card.get("preset", "default")
    params = (
        syn.params_for(preset, **{**card.get("params", {}), **synth})
        if preset == "default"
        else syn.params_for(preset, **synth)
    )
    prep = Preprocessing.from_dict({**card.get("preprocessing", {}), **prep_over})
    inter = preprocess(syn.generate(params), prep, source=name)
    meta = {"source": name, "format": "synthetic", "synthetic": asdict(params), "preprocessing": prep.to_dict(),
            "dropped": inter.dropped}
    return name, inter, meta


def load_dataset(
    spec: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    fmt: str | None = None,
    split: str | None = None,
    strict: bool = False,
    **options: Any,
) -> PreparedData:
    """Load ``spec`` (dataset name, prepared dir, or file + ``fmt``) -> PreparedData.

    strict: refuse (DataError) input rows that would otherwise be dropped with a warning (a prepared
    directory was checked when it was prepared: ``strict`` does not apply to it).
    split: ``leave_one_out`` (default) or ``global_temporal`` (option ``q``, default 0.95).
    options: preprocessing overrides (``min_rating``, ``dedup``, ``min_user``, ``min_item``, ``kcore``),
    reader options for csv/parquet (``user_col``, ``item_col``, ``time_col``, ``rating_col``, ``sep``),
    ``synthetic`` generator parameters. Raises DataError / ConfigError with a one-line message.
    """
    from seqrec.data.prepared import is_prepared, load_prepared

    if is_prepared(spec):
        prep_over, read_opts, rest = _split_options(options)
        if (
            split is not None
            or fmt is not None
            or any(v is not None for v in prep_over.values())
            or read_opts
            or rest
        ):
            given = {k: v for k, v in options.items() if v is not None}
            pd = load_prepared(spec)
            if (
                split not in (None, pd.meta.get("split"))
                or fmt is not None
                or read_opts
                or rest
                or any(pd.meta.get("preprocessing", {}).get(k) != v for k, v in given.items())
            ):
                raise ConfigError(
                    f"{spec}: a prepared directory is already preprocessed and split "
                    f"({pd.meta.get('split')}); prepare it again to change options"
                )
            return pd
        return load_prepared(spec)
    q = options.pop("q", 0.95)
    with stages(f"data {Path(str(spec)).name}", 2) as stage:  # a bar on a terminal only (seqrec.progress)
        stage("reading and preprocessing")
        name, inter, meta = load_interactions(spec, data_dir=data_dir, fmt=fmt, strict=strict, **options)
        stage("splitting")
        return split_interactions(name, inter, how=split or "leave_one_out", q=q, meta=meta)


def save_prepared(data: PreparedData, out: str | os.PathLike, overwrite: bool | None = None) -> Path:
    """Write ``data`` as a prepared directory at ``out`` (atomically) -> ``out``. A non-empty ``out``:
    replaced when ``overwrite``, refused when False; None: replaced only if it is a prepared directory."""
    from seqrec.data.prepared import save_prepared as _save

    return _save(data, out, overwrite)


def check_spec(spec: str | os.PathLike, fmt: str | None = None) -> None:
    """Refuse (one line, with a did-you-mean) a dataset that is neither an existing path nor a known
    name, before anything is read: the cheap part of ``load_dataset``'s resolution."""
    from seqrec.data import cards
    from seqrec.registry import did_you_mean

    path = Path(spec)
    if path.exists():
        return
    name = str(spec).split(":", 1)[0]
    if name in cards.all_cards():
        return
    if os.sep in str(spec) or path.suffix or fmt is not None:
        raise DataError(f"{spec}: no such file")
    raise DataError(f"unknown dataset {str(spec)!r}{did_you_mean(name, cards.all_cards())}: not a file, a prepared "
                    f"directory or a dataset name (known: {', '.join(sorted(cards.all_cards()))})")


def load_frame(frame: Any, split: str | None = None, strict: bool = False, **options: Any) -> PreparedData:
    """A DataFrame of interactions (polars or pandas; columns user, item[, timestamp][, rating]) ->
    PreparedData, through the same reader, checks, preprocessing and split as a Parquet file."""
    import tempfile

    import polars as pl

    if not isinstance(frame, pl.DataFrame):
        frame = pl.from_pandas(frame)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "interactions.parquet"
        frame.write_parquet(f)
        return load_dataset(str(f), fmt="parquet", split=split, strict=strict, **options)
