"""Leak-free splits of preprocessed interactions into PreparedData (see docs/data.md, protocol.md).

Every interaction gets a *role*; everything else is derived from (sequences, roles), so the prepared
directory only stores roles and a loader rebuilds exactly the same splits:
- TRAIN: part of the user's training sequence;
- VALID / TEST: the validation / test target of that user (at most one of each per user);
- HOLD: known history that is never trained on (global temporal: test users' other items).
An evaluation row's history is always the user's full sequence *before* its target, and every
TRAIN row precedes the user's targets, so no target (or anything after it) is ever trained on.
"""

from __future__ import annotations

import hashlib

import numpy as np

from seqrec.data.preprocess import Interactions
from seqrec.data.store import EvalSet, PreparedData, SequenceStore
from seqrec.errors import ConfigError, DataError

TRAIN, VALID, TEST, HOLD = 0, 1, 2, 3
ROLE_NAMES = ("train", "valid", "test", "hold")
SPLITS = ("leave_one_out", "global_temporal")


def _offsets(inter: Interactions) -> np.ndarray:
    off = np.zeros(len(inter.user_ids) + 1, dtype=np.int64)
    np.cumsum(inter.lengths, out=off[1:])
    return off


def leave_one_out_roles(inter: Interactions) -> np.ndarray:
    """Last item = TEST, second-to-last = VALID, the rest TRAIN; users with < 3 items: all TRAIN."""
    off, n = _offsets(inter), inter.lengths
    role = np.full(len(inter.items), TRAIN, dtype=np.int8)
    ev = np.flatnonzero(n >= 3)
    role[off[ev + 1] - 1] = TEST
    role[off[ev + 1] - 2] = VALID
    return role


def global_temporal_roles(inter: Interactions, q: float = 0.95) -> tuple[np.ndarray, float]:
    """Global time cut at the q-quantile of all timestamps -> (roles, cut).

    Test users (any interaction at or after the cut) are never trained on: their last item is TEST,
    their second-to-last VALID (leave-one-out inside their history), the rest HOLD. Other users are
    entirely before the cut and entirely TRAIN.
    """
    if not inter.has_time:
        raise DataError("global_temporal split needs real timestamps; this input only has an order")
    if not 0.0 < q < 1.0:
        raise ConfigError(f"global_temporal q must be in (0, 1), got {q}")
    off, n = _offsets(inter), inter.lengths
    cut = float(np.quantile(inter.timestamps.astype(np.float64), q))
    last_ts = inter.timestamps[off[1:] - 1]  # sequences are time-ordered
    test_user = last_ts >= cut
    role = np.where(test_user[inter.users], HOLD, TRAIN).astype(np.int8)
    t2 = np.flatnonzero(test_user & (n >= 2))
    role[off[t2 + 1] - 1] = TEST
    t3 = np.flatnonzero(test_user & (n >= 3))
    role[off[t3 + 1] - 2] = VALID
    return role, cut


def _eval_set(users: np.ndarray, items: np.ndarray, off: np.ndarray, idx: np.ndarray) -> EvalSet:
    """Evaluation rows for target positions ``idx``: history = the user's items before the target."""
    u = users[idx]
    hist_len = idx - off[u]
    # idx is increasing with one target per user, so the histories are the positions covered by
    # [off[u], idx): mark them with a difference array (O(n), no per-element index arrays)
    edge = np.zeros(len(items) + 1, dtype=np.int32)
    np.add.at(edge, off[u], 1)
    np.add.at(edge, idx, -1)
    hist = SequenceStore.from_lengths(hist_len, items[np.cumsum(edge[:-1], dtype=np.int32) > 0])
    return EvalSet(users=u, history=hist, targets=items[idx])


def build_prepared(name: str, inter: Interactions, role: np.ndarray, meta: dict) -> PreparedData:
    """Assemble PreparedData from sorted interactions and their roles (no copy of the role logic)."""
    U, C = len(inter.user_ids), len(inter.item_ids) - 1
    off = _offsets(inter)
    full = SequenceStore(off, inter.items)
    tr = role == TRAIN
    train = SequenceStore.from_lengths(np.bincount(inter.users[tr], minlength=U), inter.items[tr])
    valid = _eval_set(inter.users, inter.items, off, np.flatnonzero(role == VALID))
    test = _eval_set(inter.users, inter.items, off, np.flatnonzero(role == TEST))
    item_pop = np.bincount(train.items, minlength=C + 1).astype(np.int64)
    meta = dict(meta)
    meta.setdefault("stats", stats(inter))
    meta["fingerprint"] = fingerprint(inter.item_ids, len(inter.items))
    meta["split_sizes"] = {
        "train_interactions": int(tr.sum()),
        "valid_users": len(valid),
        "test_users": len(test),
    }
    return PreparedData(
        name=name,
        train=train,
        valid=valid,
        test=test,
        full=full,
        user_ids=inter.user_ids,
        item_ids=inter.item_ids,
        item_pop=item_pop,
        meta=meta,
        timestamps=inter.timestamps,
        roles=role,
    )


def split(
    name: str, inter: Interactions, how: str = "leave_one_out", q: float = 0.95, meta: dict | None = None
) -> PreparedData:
    """Split ``inter`` with ``how`` (one of SPLITS) -> PreparedData."""
    meta = dict(meta or {}, name=name, split=how, has_time=inter.has_time)
    if how == "leave_one_out":
        role = leave_one_out_roles(inter)
    elif how == "global_temporal":
        role, cut = global_temporal_roles(inter, q)
        meta.update(q=q, cut=cut)
    else:
        raise ConfigError(f"unknown split {how!r} (choose from {', '.join(SPLITS)})")
    return build_prepared(name, inter, role, meta)


def fingerprint(item_ids: np.ndarray, n_interactions: int) -> str:
    """Short sha256 of the item-id map and interaction count: identifies the data a model was fit on."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, item_ids[1:].tolist())).encode())
    h.update(f"|{n_interactions}".encode())
    return h.hexdigest()[:16]


def stats(inter: Interactions) -> dict:
    """Counts after preprocessing: users, items, interactions, density, sequence-length percentiles."""
    lengths = inter.lengths
    U, C, n = len(inter.user_ids), len(inter.item_ids) - 1, len(inter.items)
    pct = np.percentile(lengths, [0, 25, 50, 75, 90, 99, 100]) if U else np.zeros(7)
    return {
        "users": U,
        "items": C,
        "interactions": n,
        "density": n / max(U * C, 1),
        "length": {
            "mean": float(lengths.mean()) if U else 0.0,
            **dict(zip(("min", "p25", "p50", "p75", "p90", "p99", "max"), map(float, pct), strict=True)),
        },
    }
