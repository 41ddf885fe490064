"""New interactions in a trained model's catalog, and a model grown for appended items.

Fine-tuning continues a model on new data, so the data must speak the model's item ids: the new
data's raw item ids are mapped onto the trained catalog (``to_catalog``). Items the model has never
seen are refused, or, when the item table is trained too, appended after the trained ones with
fresh embeddings (``grow_items``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from seqrec.data.prepared import roles_of
from seqrec.data.preprocess import Interactions
from seqrec.data.split import build_prepared
from seqrec.data.store import PreparedData
from seqrec.errors import DataError


def to_catalog(new: PreparedData, item_ids: np.ndarray, append: bool) -> tuple[PreparedData, int]:
    """``new`` with its items renumbered into the catalog ``item_ids`` (raw ids; [0] = padding)
    -> (data, number of appended items). Unknown items: a DataError, or appended when ``append``."""
    index = {r: i for i, r in enumerate(item_ids.tolist()) if i > 0}
    raw = new.item_ids.tolist()
    unknown = [r for r in raw[1:] if r not in index]
    if unknown and not append:
        shown = ", ".join(map(repr, unknown[:3])) + (", …" if len(unknown) > 3 else "")
        raise DataError(f"{len(unknown)} of the {len(raw) - 1} items of the new data are not in the trained "
                        f"catalog ({shown}); fine-tune with --train-embeddings to append them with fresh "
                        "embeddings, or leave them out of the data")
    catalog = np.asarray(item_ids)
    if unknown:
        catalog = np.concatenate([catalog, np.asarray(unknown, dtype=catalog.dtype)])
        index.update({r: len(item_ids) + j for j, r in enumerate(unknown)})
    mapping = np.array([0] + [index[r] for r in raw[1:]], dtype=np.int64)
    full = new.full
    ts = new.timestamps if new.timestamps is not None else np.arange(len(full.items), dtype=np.int64)
    inter = Interactions(users=np.repeat(np.arange(len(full), dtype=np.int64), full.lengths),
                         items=mapping[full.items], timestamps=ts, user_ids=new.user_ids, item_ids=catalog,
                         has_time=bool(new.meta.get("has_time", True)))
    meta = {k: v for k, v in new.meta.items() if k not in ("fingerprint", "stats")}
    return build_prepared(new.name, inter, roles_of(new), meta), len(unknown)


def grow_items(state: dict[str, Any], keys: list[str], n_old: int, n_new: int,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of a model with ``n_old`` items made to fit one with ``n_new`` >= n_old items:
    each item table ``keys`` gets n_new - n_old fresh rows after its items (normal, the trained rows'
    std). A table of exactly n_old rows is the items alone (``seqrec.models.table.ItemTable``); a
    larger one (a plug-in's single table: padding, items 1..n_old, then special rows) keeps its
    special rows at the end."""
    extra = n_new - n_old
    if extra == 0:
        return state
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in state.items():
        if key in keys:
            first = 0 if t.shape[0] == n_old else 1  # the padding row, if the table has one
            items = t[first:first + n_old]
            fresh = torch.randn((extra, *t.shape[1:]), generator=gen, dtype=torch.float64)
            fresh = (fresh * items.double().std()).to(t.dtype)
            t = torch.cat([t[:first + n_old], fresh, t[first + n_old:]])
        out[key] = t
    return out
