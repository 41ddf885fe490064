import json
import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("SEQREC_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SHARED_DATA = SHARED / "data"

# a tiny synthetic dataset: trains in about a second
TINY = {"synthetic": {"n_users": 120, "n_items": 40, "n_clusters": 4, "mean_len": 12.0, "max_len": 30}}
# the same as `seqrec fit` options: a tiny model trained for two epochs
FAST_ARGS = ["--set", f"data.options={json.dumps(TINY)}", "--set", "model.d=16", "--set", "model.max_len=20",
             "--set", "model.n_blocks=1", "--set", "train.epochs=2", "--set", "train.batch_size=32",
             "--set", "train.num_threads=1"]


@pytest.fixture
def tiny_overrides():
    """Config overrides for a fast end-to-end run on tiny synthetic data."""
    return {"data.options": TINY, "model.d": 16, "model.max_len": 20, "model.n_blocks": 1,
            "train.epochs": 2, "train.batch_size": 32, "train.max_time_s": None, "train.num_threads": 1}

