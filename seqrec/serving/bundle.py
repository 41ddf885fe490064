"""Read and verify a bundle written by ``seqrec.export`` (layout in ``seqrec.serving.layout``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqrec.errors import DataError
from seqrec.serving import layout


@dataclass
class Bundle:
    """A verified bundle's contents: manifest, item table float32 [C, d], raw item ids [C] (the
    catalog's order), popularity int64 [C]."""

    path: Path
    manifest: dict[str, Any]
    item_emb: np.ndarray
    item_ids: pl.Series
    popularity: np.ndarray


def read_manifest(path: Path) -> dict[str, Any]:
    """``path/manifest.json`` checked for format and version -> the manifest."""
    mpath = path / layout.MANIFEST
    if not path.is_dir():
        raise DataError(f"{path}: no such bundle directory")
    if not mpath.is_file():
        raise DataError(f"{path}: not a seqrec bundle (no {layout.MANIFEST}); write one with seqrec export")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = dict(manifest["files"])
        model, encoder = dict(manifest["model"]), dict(manifest["encoder"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{mpath}: unreadable manifest ({type(e).__name__}: {e})") from None
    if manifest.get("format") != layout.FORMAT or manifest.get("format_version") != layout.FORMAT_VERSION:
        raise DataError(f"{mpath}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                        f"this seqrec reads {layout.FORMAT} version {layout.FORMAT_VERSION}")
    if not files or encoder.get("file") not in files or "max_len" not in model:
        raise DataError(f"{mpath}: incomplete manifest (files, encoder or model facts missing)")
    return manifest


def verify(path: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists under ``path`` with its sha256, else a one-line DataError."""
    for name, digest in manifest["files"].items():
        f = path / name
        if ".." in Path(name).parts or not f.is_file():
            raise DataError(f"{path}: bundle file {name} is missing; export the bundle again")
        if layout.sha256_file(f) != digest:
            raise DataError(f"{path}: bundle file {name} is corrupt (sha256 mismatch); export the bundle again")


def load_bundle(path: str | Path, check: bool = True) -> Bundle:
    """Read the bundle at ``path`` (checksums verified unless ``check`` is False) -> ``Bundle``."""
    path = Path(path)
    manifest = read_manifest(path)
    if check:
        verify(path, manifest)
    try:
        emb = np.load(path / layout.ITEM_EMB)
        pop = np.load(path / layout.POPULARITY)
        ids = pl.read_parquet(path / layout.ITEM_IDS)["item"]
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as e:
        raise DataError(f"{path}: cannot read the bundle's tables ({type(e).__name__}: {e})") from None
    c = emb.shape[0] if emb.ndim == 2 else -1
    if c < 1 or len(ids) != c or pop.shape != (c,) or emb.shape[1] != manifest["model"].get("d", emb.shape[1]):
        raise DataError(f"{path}: inconsistent bundle (item table {emb.shape}, {len(ids)} ids, "
                        f"popularity {pop.shape})")
    return Bundle(path, manifest, np.ascontiguousarray(emb, dtype=np.float32), ids, pop.astype(np.int64))
