"""Real datasets from ../shared/data (skipped when absent): exact published counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seqrec.data import load_dataset

SHARED = Path(os.environ.get("SEQREC_SHARED", Path(__file__).parents[1] / ".." / "shared")) / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not SHARED.is_dir(), reason=f"real datasets not found at {SHARED} (set SEQREC_SHARED)"
    ),
]


@pytest.mark.parametrize(
    "name,users,items,interactions",
    [
        ("ml-1m", 6_040, 3_416, 999_611),
        ("amazon-beauty", 22_363, 12_101, 198_502),
        ("ml-100k", 943, 1_682, 100_000),
        ("amazon-sports", 35_598, 18_357, 296_337),
        ("amazon-games", 31_013, 23_715, 287_107),
    ],
)
def test_counts(name, users, items, interactions):
    d = load_dataset(name, data_dir=SHARED)
    s = d.meta["stats"]
    assert (s["users"], s["items"], s["interactions"]) == (users, items, interactions)
    assert len(d.test) + (d.full.lengths < 3).sum() == users


def test_ml1m_sasrec_file_ids_are_kept():
    d = load_dataset("ml-1m", data_dir=SHARED)
    # SASRec's item ids are already 1..3416: they map to themselves; users 1..6040 -> 0..6039
    assert d.item_ids[1:].tolist() == list(range(1, 3_417))
    assert d.user_ids.tolist() == list(range(1, 6_041))
    first = (SHARED / "ml-1m" / "sasrec_ml-1m.txt").read_text().split("\n", 3)[:3]
    assert d.full.row(0)[:3].tolist() == [int(line.split()[1]) for line in first]


def test_ml1m_all_ratings_min_item_5_matches_sasrec():
    # original ids, all 1,000,209 ratings: items with >= 5 ratings leave SASRec's 3,416 / 999,611
    d = load_dataset(SHARED / "ml-1m" / "ml-1m_all_seq.txt", fmt="sasrec", min_item=5)
    s = d.meta["stats"]
    assert (s["users"], s["items"], s["interactions"]) == (6_040, 3_416, 999_611)
