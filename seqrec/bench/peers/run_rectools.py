"""RecTools' SASRec / BERT4Rec on the exported split, under a wall-time budget (runs in RecTools' venv).

Training data: the exported training interactions (``datetime`` = the position in the user's
sequence, so RecTools' time sort is our order). Test: ``recommend`` for the test users with their
training + validation items as history (``filter_viewed=True``). The budget is Lightning's own
``max_time`` (checked after every step); RecTools' own metric is ``rectools.metrics`` NDCG@10 /
HitRate@10 on its recommendations (NDCG with ``divide_by_achievable=True``: its default normalises by
the DCG of k relevant items, which divides a one-target NDCG by 4.54). Losses: ``softmax`` (full
CE), ``gBCE``, ``sampled_softmax`` (RecTools' names), mapped from ours by ``LOSSES``.
"""

from __future__ import annotations

import datetime as dt
import math
import time

import pandas as pd
import peer_common as pc

LOSSES = {"ce": "softmax", "gbce": "gBCE", "sampled_softmax": "sampled_softmax", "bce": "BCE"}


class EpochCounter:
    """Counts finished epochs and steps (a Lightning callback built lazily: lightning imports late)."""

    @staticmethod
    def make():
        from pytorch_lightning.callbacks import Callback

        class _Counter(Callback):
            steps = 0

            def on_train_batch_end(self, *args, **kwargs):
                _Counter.steps += 1

        return _Counter


def interactions(df: pd.DataFrame) -> pd.DataFrame:
    from rectools import Columns

    return pd.DataFrame({Columns.User: df["user_id"], Columns.Item: df["item_id"], Columns.Weight: 1.0,
                         Columns.Datetime: pd.to_datetime(df["timestamp"], unit="s")})


def main() -> None:
    s = pc.settings()
    pc.set_threads(s["threads"])
    from pytorch_lightning import Trainer
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.metrics import NDCG, HitRate, calc_metrics
    from rectools.models import BERT4RecModel, SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    counter = EpochCounter.make()

    def make_trainer() -> Trainer:
        return Trainer(max_epochs=1_000_000, max_time=dt.timedelta(seconds=s["budget_s"]), accelerator="cpu",
                       devices=1, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, callbacks=[counter()], deterministic=False)

    train, valid, test = pc.frames(s["export"])
    kw = dict(n_blocks=s["n_blocks"], n_heads=s["n_heads"], n_factors=s["d"], dropout_rate=s["dropout"],
              session_max_len=s["max_len"], loss=LOSSES[s["loss"]], lr=s["lr"], batch_size=s["batch_size"],
              get_trainer_func=make_trainer, recommend_batch_size=256, recommend_torch_device="cpu")
    if s["loss"] in ("gbce", "sampled_softmax", "bce"):
        kw["n_negatives"] = s.get("n_negatives", 256)
    if s["loss"] == "gbce":
        kw["gbce_t"] = s.get("gbce_t", 0.75)
    cls = SASRecModel if s["model"] == "sasrec" else BERT4RecModel
    if s["model"] == "bert4rec":
        kw["mask_prob"] = s.get("mask_prob", 0.2)
    kw["item_net_block_types"] = (IdEmbeddingsItemNet,)  # ids only: no item features here
    model = cls(**kw)
    t0 = time.perf_counter()
    model.fit(Dataset.construct(interactions(train)))
    train_s = time.perf_counter() - t0
    # RecTools trains one sequence per user with >= 2 training items (train_min_user_interactions)
    per_epoch = math.ceil(int((train.groupby("user_id").size() >= 2).sum()) / s["batch_size"])
    epochs = counter.steps / max(per_epoch, 1)
    t0 = time.perf_counter()
    history = Dataset.construct(interactions(pd.concat([train, valid])))
    users = test["user_id"].unique()
    reco = model.recommend(users=users, dataset=history, k=s["k"], filter_viewed=True)
    eval_s = time.perf_counter() - t0
    # divide_by_achievable: RecTools' default IDCG assumes k relevant items (ours / 4.54 with one target)
    metrics = calc_metrics({"ndcg@10": NDCG(k=10, divide_by_achievable=True), "hr@10": HitRate(k=10)}, reco,
                           interactions(test))
    reco = reco.sort_values([Columns.User, Columns.Rank])
    lists = reco.groupby(Columns.User, sort=False)[Columns.Item].apply(list)
    pc.write_outputs(s["out"], [int(u) for u in lists.index], [list(map(int, v)) for v in lists.values], {
        "epochs": epochs, "steps": counter.steps, "train_s": train_s, "eval_s": eval_s,
        "peer_metrics": {k: float(v) for k, v in metrics.items()},
        "notes": "RecTools' own metric: rectools.metrics NDCG/HitRate on its filter_viewed recommendations"})


if __name__ == "__main__":
    main()
