"""Prepared directory: preprocessed + split data, re-read without any preprocessing.

Layout (all written into a temp dir next to the target, then renamed into place):
- ``interactions.parquet``: user (int32, 0..U-1), item (int32, 1..C), timestamp, role
  (train / valid / test / hold), rows in (user, time) order;
- ``users.parquet``: user index -> raw id; ``items.parquet``: item index -> raw id (row 0 = padding);
- ``stats.json``: counts and length percentiles; ``meta.json``: name, split, preprocessing, source,
  fingerprint, format version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from seqrec.data.preprocess import Interactions
from seqrec.data.split import HOLD, ROLE_NAMES, TEST, TRAIN, VALID, build_prepared, fingerprint
from seqrec.data.store import PreparedData
from seqrec.errors import DataError, shorten
from seqrec.io import atomic_path, temp_dir_next_to, write_json

FORMAT_VERSION = 1
_FILES = ("interactions.parquet", "users.parquet", "items.parquet", "stats.json", "meta.json")


def is_prepared(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "meta.json").is_file() and (p / "interactions.parquet").is_file()


def roles_of(data: PreparedData) -> np.ndarray:
    """Role per interaction of ``data.full`` (kept from the split, else rebuilt from train/valid/test)."""
    if data.roles is not None:
        return np.asarray(data.roles, dtype=np.int8)
    off = data.full.offsets
    role = np.full(len(data.full.items), HOLD, dtype=np.int8)
    n_train = data.train.lengths  # training rows are a prefix of each user's sequence
    from seqrec.data.store import _ranges

    role[_ranges(off[:-1], n_train)] = TRAIN
    role[off[data.valid.users] + data.valid.history.lengths] = VALID
    role[off[data.test.users] + data.test.history.lengths] = TEST
    return role


def save_prepared(data: PreparedData, out: str | os.PathLike, overwrite: bool | None = None) -> Path:
    """Write ``data`` to directory ``out`` atomically (the new directory is renamed into place).

    An existing non-empty ``out`` is replaced when ``overwrite`` is True, refused when it is False;
    None (the API's default): a prepared directory is replaced, anything else refused.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if overwrite is False:
            raise DataError(f"{out}: exists and is not empty; pass --overwrite to replace it")
        if overwrite is None and not is_prepared(out):
            raise DataError(f"{out}: directory is not empty and is not a prepared dataset; refusing to overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir_next_to(out)
    except OSError as e:
        raise DataError(f"{out}: cannot write output directory ({e.strerror or e})") from None
    try:
        _write(data, tmp)
        if out.exists():  # swap: old aside, new in, old removed (never a half-written `out`)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "d")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        raise DataError(f"{out}: cannot write output directory ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(data: PreparedData, d: Path) -> None:
    full = data.full
    users = np.repeat(np.arange(len(full), dtype=np.int32), full.lengths)
    ts = data.timestamps if data.timestamps is not None else np.arange(len(full.items), dtype=np.int64)
    # gather from a 4-value Enum series: no per-row string building
    role = pl.Series("role", ROLE_NAMES, dtype=pl.Enum(list(ROLE_NAMES))).gather(roles_of(data))
    inter = pl.DataFrame({"user": users, "item": full.items.astype(np.int32), "timestamp": ts, "role": role})
    for name, df in (
        ("interactions.parquet", inter),
        ("users.parquet", pl.DataFrame({"user": np.arange(data.n_users), "raw": data.user_ids})),
        ("items.parquet", pl.DataFrame({"item": np.arange(data.n_items + 1), "raw": data.item_ids})),
    ):
        with atomic_path(d / name) as tmp:
            df.write_parquet(tmp)
    meta = {k: v for k, v in data.meta.items() if k != "stats"}
    meta.update(format_version=FORMAT_VERSION, name=data.name, has_time=bool(data.meta.get("has_time", True)))
    write_json(d / "stats.json", data.meta.get("stats", {}))
    write_json(d / "meta.json", meta)


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Read a prepared directory -> PreparedData (same splits as when it was written)."""
    d = Path(path)
    missing = [f for f in _FILES if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d}: not a complete prepared directory (missing {', '.join(missing)})")
    try:
        meta = json.loads((d / "meta.json").read_text())
        meta["stats"] = json.loads((d / "stats.json").read_text())
        inter = pl.read_parquet(d / "interactions.parquet")
        user_ids = pl.read_parquet(d / "users.parquet").get_column("raw").to_numpy()
        item_ids = pl.read_parquet(d / "items.parquet").get_column("raw").to_numpy()
    except (OSError, ValueError, pl.exceptions.PolarsError) as e:
        raise DataError(
            f"{d}: unreadable prepared directory ({shorten(e) or type(e).__name__})"
        ) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{d}/meta.json: format_version {meta.get('format_version')} (this seqrec reads {FORMAT_VERSION})"
        )
    it = Interactions(
        users=inter.get_column("user").to_numpy().astype(np.int64),
        items=inter.get_column("item").to_numpy().astype(np.int64),
        timestamps=inter.get_column("timestamp").to_numpy(),
        user_ids=user_ids,
        item_ids=item_ids,
        has_time=bool(meta.get("has_time", True)),
    )
    role = inter.get_column("role").to_physical().to_numpy().astype(np.int8)
    want = meta.get("fingerprint")
    if want is not None and fingerprint(item_ids, len(it.items)) != want:
        raise DataError(f"{d}: fingerprint mismatch (files changed after preparation); prepare it again")
    return build_prepared(meta.get("name", d.name), it, role, meta)
