"""The ``"auto"`` evaluation settings, resolved once the data size is known.

- ``train.valid_users: auto`` validates (early stopping, the per-epoch metrics) on every user up to
  ``VALID_USERS_AUTO`` users and on a fixed seeded sample of that many above it, so one epoch's
  validation costs at most as much as that many users. The cap is above Beauty's 22,363 users, so
  every published result (ML-1M, Beauty) is computed on all users, exactly as before. The valid
  split of ``SeqRec.evaluate`` is the same users; ``seqrec fit`` writes the best epoch's validation
  (exact scoring, as early stopping saw it) as the valid row of ``results.json``.
- ``eval.retrieval: auto`` is the exact ``torch`` scorer below ``RETRIEVAL_AUTO_ITEMS`` catalog
  items and ``faiss-ivf`` from there on (its recall against exact search on ``eval.recall_sample``
  users is reported with the metrics, see ``seqrec.retrieval.approximation_report``). Exact scoring
  costs M x C x d multiply-adds for M users (~13 G per 1,000 users at C = 200,000, d = 64) where
  IVF scans the ``nprobe`` of its lists nearest to each query, a few percent of the catalog.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from seqrec.data.store import EvalSet

VALID_USERS_AUTO = 50_000      # above this many validation users, validate on a sample of this many
RETRIEVAL_AUTO_ITEMS = 200_000  # from this many catalog items on, evaluate through faiss-ivf
APPROXIMATE_BACKEND = "faiss-ivf"

ValidUsers = int | Literal["auto", "all"] | None


def valid_sample_size(setting: ValidUsers, n_users: int) -> int | None:
    """Users to validate on for ``train.valid_users`` = ``setting`` with ``n_users`` validation users
    -> a count < n_users (a seeded sample), or None (every user)."""
    if setting is None or setting == "all":
        return None
    n = VALID_USERS_AUTO if setting == "auto" else int(setting)
    return n if n < n_users else None


def valid_subset(valid: EvalSet, setting: ValidUsers, seed: int) -> EvalSet:
    """``valid`` itself, or the fixed sample ``valid_sample_size`` asks for: rows drawn without
    replacement by ``numpy.random.default_rng(seed + 7)``, kept in user order (the same every epoch,
    every resume and every run with this seed)."""
    n = valid_sample_size(setting, len(valid))
    if n is None:
        return valid
    rows = np.sort(np.random.default_rng(int(seed) + 7).choice(len(valid), size=n, replace=False))
    return EvalSet(valid.users[rows], valid.history.subset(rows), valid.targets[rows])


def retrieval_backend(setting: str, n_items: int, dim: int = 2) -> str:
    """The backend ``eval.retrieval`` = ``setting`` means for a catalog of ``n_items`` items of
    ``dim``-dimensional embeddings (a 1-d one, as ``pop``'s, has one order for all users: exact)."""
    if setting != "auto":
        return setting
    return APPROXIMATE_BACKEND if n_items >= RETRIEVAL_AUTO_ITEMS and dim > 1 else "torch"
