"""RePlay's SasRec / Bert4Rec on the exported split, under a wall-time budget (runs in RePlay's venv).

The tokenizer is fitted on every interaction (train + validation + test) so the item table covers
our whole catalog, as ours does; training uses only the training interactions. Test: prediction
for the test users with their training + validation items as history, ``RemoveSeenItems``
applied. Losses: ``ce`` (full CE), ``sce`` (RePlay's SCE with the bucket sizes our SCE resolves
to for the same batch: ``n_buckets = bucket_size_x = int(2 * sqrt(batch * max_len))``,
``bucket_size_y = 256``, ``mix_x``), ``bce``. The budget is Lightning's ``max_time``.
"""

from __future__ import annotations

import datetime as dt
import math
import time

import pandas as pd
import peer_common as pc


def schemas():
    from replay.data import FeatureHint, FeatureInfo, FeatureSchema, FeatureSource, FeatureType
    from replay.data.nn import TensorFeatureInfo, TensorFeatureSource, TensorSchema

    fs = FeatureSchema([
        FeatureInfo(column="user_id", feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.QUERY_ID),
        FeatureInfo(column="item_id", feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.ITEM_ID),
        FeatureInfo(column="timestamp", feature_type=FeatureType.NUMERICAL, feature_hint=FeatureHint.TIMESTAMP),
    ])
    ts = TensorSchema(TensorFeatureInfo(
        name="item_id_seq", is_seq=True, feature_type=FeatureType.CATEGORICAL, feature_hint=FeatureHint.ITEM_ID,
        feature_sources=[TensorFeatureSource(FeatureSource.INTERACTIONS, "item_id")]))
    return fs, ts


def build_model(s: dict, ts):
    from replay.models.nn.loss import SCEParams
    from replay.models.nn.optimizer_utils import FatOptimizerFactory
    from replay.models.nn.sequential import Bert4Rec, SasRec

    opt = FatOptimizerFactory(learning_rate=s["lr"])
    if s["model"] == "bert4rec":
        return Bert4Rec(ts, block_count=s["n_blocks"], head_count=s["n_heads"], hidden_size=s["d"],
                        max_seq_len=s["max_len"], dropout_rate=s["dropout"], loss_type="CE", optimizer_factory=opt)
    kw = {}
    if s["loss"] == "sce":
        root = int(2 * math.sqrt(s["batch_size"] * s["max_len"]))
        kw["sce_params"] = SCEParams(n_buckets=root, bucket_size_x=root, bucket_size_y=256, mix_x=True)
    return SasRec(ts, block_count=s["n_blocks"], head_count=s["n_heads"], hidden_size=s["d"],
                  max_seq_len=s["max_len"], dropout_rate=s["dropout"], loss_type=s["loss"].upper(),
                  optimizer_factory=opt, **kw)


def main() -> None:
    s = pc.settings()
    pc.set_threads(s["threads"])
    import lightning as L
    from replay.data import Dataset
    from replay.data.nn import SequenceTokenizer
    from replay.metrics import NDCG, HitRate
    from replay.models.nn.sequential.callbacks import PandasPredictionCallback
    from replay.models.nn.sequential.postprocessors import RemoveSeenItems
    from torch.utils.data import DataLoader

    mod = __import__(f"replay.models.nn.sequential.{s['model']}", fromlist=["x"])
    prefix = "SasRec" if s["model"] == "sasrec" else "Bert4Rec"
    train, valid, test = pc.frames(s["export"])
    fs, ts = schemas()
    tok = SequenceTokenizer(ts, allow_collect_to_master=True)
    tok.fit(Dataset(feature_schema=fs, interactions=pd.concat([train, valid, test])))
    seq_train = tok.transform(Dataset(feature_schema=fs, interactions=train))
    hist = pd.concat([train, valid])
    seq_test = tok.transform(Dataset(feature_schema=fs, interactions=hist[hist["user_id"].isin(test["user_id"])]))
    L.seed_everything(s["seed"])
    model = build_model(s, tok.tensor_schema)
    masking = {"mask_prob": s["mask_prob"]} if s["model"] == "bert4rec" else {}
    train_set = getattr(mod, f"{prefix}TrainingDataset")(seq_train, max_sequence_length=s["max_len"], **masking)
    loader = DataLoader(train_set, batch_size=s["batch_size"], shuffle=True, num_workers=0)
    trainer = L.Trainer(max_epochs=1_000_000, max_time=dt.timedelta(seconds=s["budget_s"]), accelerator="cpu",
                        devices=1, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cb = PandasPredictionCallback(top_k=s["k"], query_column="user_id", item_column="item_id",
                                  rating_column="score", postprocessors=[RemoveSeenItems(seq_test)])
    pred = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[cb])
    predict_set = getattr(mod, f"{prefix}PredictionDataset")(seq_test, max_sequence_length=s["max_len"])
    pred.predict(model, DataLoader(predict_set, batch_size=256, num_workers=0), return_predictions=False)
    recs = tok.query_and_item_id_encoder.inverse_transform(cb.get_result())
    eval_s = time.perf_counter() - t0
    recs["score"] = recs["score"].astype(float)
    recs = recs.sort_values(["user_id", "score"], ascending=[True, False], kind="stable")
    gt = test[["user_id", "item_id"]]
    peer = {**NDCG(10, query_column="user_id", item_column="item_id", rating_column="score")(recs, gt),
            **HitRate(10, query_column="user_id", item_column="item_id", rating_column="score")(recs, gt)}
    lists = recs.groupby("user_id", sort=False)["item_id"].apply(list)
    pc.write_outputs(s["out"], [int(u) for u in lists.index], [list(map(int, v)) for v in lists.values], {
        "epochs": trainer.global_step / max(len(loader), 1), "steps": trainer.global_step,
        "train_s": train_s, "eval_s": eval_s,
        "peer_metrics": {k.lower(): float(v) for k, v in peer.items()},
        "notes": "RePlay's own metric: replay.metrics NDCG/HitRate on its RemoveSeenItems predictions"})


if __name__ == "__main__":
    main()
