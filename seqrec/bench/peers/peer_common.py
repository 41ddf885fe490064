"""Helpers shared by the peer runners (run_recbole.py, run_rectools.py, run_replay.py).

Runs inside a peer's own virtual environment: imports only the standard library, numpy, pandas
and torch (never seqrec). The runners find it on ``sys.path[0]`` (their own directory).

Contract of a runner: ``python run_X.py SETTINGS.json``; SETTINGS holds ``export`` (the directory
``seqrec.bench.peers.export`` wrote), ``out`` (where to write), the model settings and
``budget_s`` / ``threads`` / ``k``. It writes ``OUT/topk.parquet`` (user_id, item_id, rank: every
test user's top-k in our ids, seen items removed) and ``OUT/result.json`` (epochs, train_s,
eval_s, peer_metrics, notes). A failure is an exception: the parent records its last line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def settings() -> dict[str, Any]:
    """The settings JSON named on the command line."""
    with open(sys.argv[1]) as f:
        return json.load(f)


def set_threads(n: int) -> None:
    """Pin torch to ``n`` intra-op threads (and 1 inter-op thread) like every other library."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set by an import
        pass


def frames(export: str):
    """(train, valid, test) pandas DataFrames of user_id, item_id, timestamp (positions)."""
    import pandas as pd

    return tuple(pd.read_parquet(Path(export) / f"{p}.parquet") for p in ("train", "valid", "test"))


def seen_items(*parts) -> dict[int, list[int]]:
    """user -> every item of that user in ``parts`` (the test users' full known histories)."""
    import pandas as pd

    df = pd.concat(parts)
    return {int(u): g.tolist() for u, g in df.groupby("user_id", sort=False)["item_id"]}


class Budget:
    """Wall-clock training budget: ``over()`` is True once ``seconds`` have passed since creation."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = float(seconds), time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.elapsed() >= self.seconds


def write_outputs(out: str, users: list[int], topk: list[list[int]], result: dict[str, Any]) -> None:
    """Write topk.parquet (user_id, item_id, rank from 0) and result.json into ``out``."""
    import pandas as pd

    os.makedirs(out, exist_ok=True)
    rows = [(int(u), int(i), r) for u, items in zip(users, topk, strict=True) for r, i in enumerate(items)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rank"]).to_parquet(Path(out) / "topk.parquet")
    with open(Path(out) / "result.json", "w") as f:
        json.dump(result, f, indent=1)
