"""Export our prepared leave-one-out split to every peer's input, so all train on the same sequences
and are tested on the same held-out item per user.

Ids: users are written as our user index ``u`` (0..U-1) and items as our model id ``i`` (1..C); the
peers' top-k lists come back in those ids, so scoring needs no id map. ``timestamp`` is the
position of the interaction in the user's time-ordered sequence (0, 1, ...): unique within a user,
so a peer that sorts by (user, timestamp) gets exactly our order, ties included (equal raw
timestamps keep the input order, as our split does).

Files under ``out``:
- ``train.parquet`` (user_id, item_id, timestamp): every training interaction;
- ``valid.parquet`` / ``test.parquet``: one row per evaluated user, its validation / test target;
- ``recbole/<name>/<name>.inter``: all interactions of every user (atomic file,
  ``user_id:token item_id:token timestamp:float``); RecBole's leave-one-out (``LS:
  valid_and_test``, ``order: TO``, ``group_by: user``) takes the last item as test and the one
  before as validation, i.e. our split for every user with at least 4 items (a user with exactly
  3 items has no validation row there; ours trains on 1 item and validates on the 2nd);
- ``prepared/``: the PreparedData itself (seqrec's own run reads it);
- ``data.json``: name, users, items, interactions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seqrec.data import PreparedData, save_prepared
from seqrec.data.split import TEST, TRAIN, VALID
from seqrec.errors import ConfigError

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _frame(users: np.ndarray, items: np.ndarray, pos: np.ndarray):
    import polars as pl

    return pl.DataFrame({"user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
                         "timestamp": pos.astype(np.int64)})


def flat(data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every interaction as (user index, model item id, position in the user's sequence, role)."""
    if data.meta.get("split") != "leave_one_out" or data.roles is None:
        raise ConfigError(f"bench peers needs a leave_one_out split; {data.name} is {data.meta.get('split')}")
    off = data.full.offsets
    lengths = np.diff(off)
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    pos = np.arange(len(data.full.items), dtype=np.int64) - off[users]
    return users, np.asarray(data.full.items, dtype=np.int64), pos, np.asarray(data.roles)


def export(data: PreparedData, out: str | Path, name: str = "seqrec") -> Path:
    """Write the peers' inputs for ``data`` (a leave-one-out PreparedData) under ``out`` -> ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    users, items, pos, role = flat(data)
    for part, which in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        m = role == which
        _frame(users[m], items[m], pos[m]).write_parquet(out / f"{part}.parquet")
    inter = out / "recbole" / name / f"{name}.inter"
    inter.parent.mkdir(parents=True, exist_ok=True)
    with open(inter, "w") as f:
        f.write(INTER_HEADER)
        _frame(users, items, pos).write_csv(f, separator="\t", include_header=False)
    save_prepared(data, out / "prepared", overwrite=True)
    info = {"name": data.name, "users": data.n_users, "items": data.n_items,
            "interactions": int(len(items)), "test_users": len(data.test), "recbole_dataset": name}
    (out / "data.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def read_split(out: str | Path) -> dict[str, dict[int, list[int]]]:
    """The exported split read back as sequences -> {"train": {user: items}, "valid": {user: [item]},
    "test": {user: [item]}}, each in timestamp order (what a peer sees; used by the tests)."""
    import polars as pl

    res: dict[str, dict[int, list[int]]] = {}
    for part in ("train", "valid", "test"):
        df = pl.read_parquet(Path(out) / f"{part}.parquet").sort(["user_id", "timestamp"], maintain_order=True)
        g = df.group_by("user_id", maintain_order=True).agg(pl.col("item_id"))
        res[part] = dict(zip(g["user_id"].to_list(), g["item_id"].to_list(), strict=True))
    return res


def recbole_split(out: str | Path, name: str = "seqrec") -> dict[str, dict[int, list[int]]]:
    """RecBole's leave-one-out of the exported .inter, reimplemented for the tests: per user sorted
    by timestamp, the last item is test and the one before validation when the user has at least 4
    items (RecBole keeps at least one training target, and the first item is never a target)."""
    arr = np.loadtxt(Path(out) / "recbole" / name / f"{name}.inter", skiprows=1, dtype=np.int64, ndmin=2)
    arr = arr[np.lexsort((arr[:, 2], arr[:, 0]))]
    res: dict[str, dict[int, list[int]]] = {"train": {}, "valid": {}, "test": {}}
    for u in np.unique(arr[:, 0]):
        seq = arr[arr[:, 0] == u, 1].tolist()
        n_eval = min(2, len(seq) - 2)  # augmented rows = len - 1; one stays in training
        cut = len(seq) - max(n_eval, 0)
        res["train"][int(u)] = seq[:cut]
        if n_eval == 2:
            res["valid"][int(u)] = [seq[-2]]
        if n_eval >= 1:
            res["test"][int(u)] = [seq[-1]]
    return res
