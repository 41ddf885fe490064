"""seqrec's own run for ``seqrec bench peers``: the same contract as the peer runners (settings JSON
in, topk.parquet + result.json out), in a subprocess of the bench's own interpreter so its peak RSS
is measured the same way. Training is ``SeqRec.fit`` with ``train.max_time_s`` = the budget (the
budget includes our per-epoch validation, which picks the best epoch; the peers do not validate).
The top-k comes from ``SeqRec.recommend`` on each test user's history (training + validation
items, seen items filtered); seqrec's own metric is ``SeqRec.evaluate`` on the test split.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import numpy as np

    from seqrec.api import SeqRec
    from seqrec.data import load_dataset

    with open(sys.argv[1]) as f:
        s = json.load(f)
    data = load_dataset(f"{s['export']}/prepared")
    model = {"name": s["model"], "d": s["d"], "n_blocks": s["n_blocks"], "n_heads": s["n_heads"],
             "max_len": s["max_len"], "dropout": s["dropout"]}
    if s["model"] == "sasrec":
        model["block"] = "sasrec"  # the reference code's layout (configs/sasrec-ml-1m-ce.yaml)
    else:
        model["mask_prob"] = s["mask_prob"]
    loss = {"name": s["loss"]}
    if s["loss"] == "gbce":  # as RecTools' gBCE in the same bench
        loss.update(n_negatives=s["n_negatives"], t=s["gbce_t"])
    rec = SeqRec(model=model, loss=loss,
                 train={"batch_size": s["batch_size"], "lr": s["lr"], "betas": [0.9, 0.98], "epochs": 100_000,
                        "max_time_s": float(s["budget_s"]), "num_threads": s["threads"], "seed": s["seed"],
                        "patience": s["patience"]})
    t0 = time.perf_counter()
    rec.fit(data, log=lambda msg: print(msg, file=sys.stderr))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    own = rec.evaluate(split="test", metrics_only=True)
    eval_s = time.perf_counter() - t0
    test = data.test
    off, items = test.history.offsets, test.history.items
    raw_items, raw_users = data.item_ids, data.user_ids
    histories = {raw_users[u].item(): raw_items[items[off[j]:off[j + 1]]].tolist() for j, u in enumerate(test.users)}
    reco = rec.recommend(histories=histories, k=s["k"], filter_seen=True)
    item_index = {r: i for i, r in enumerate(raw_items.tolist()) if i > 0}
    user_index = {r: u for u, r in enumerate(raw_users.tolist())}
    import polars as pl

    out = pl.DataFrame({"user_id": [user_index[u] for u in reco["user"].to_list()],
                        "item_id": [item_index[i] for i in reco["item"].to_list()],
                        "rank": (reco["rank"].to_numpy() - 1).astype(np.int64)})
    out.write_parquet(f"{s['out']}/topk.parquet")
    info = rec.fit_info_
    with open(f"{s['out']}/result.json", "w") as f:
        # epochs as the peers count them: a budget's partial last epoch as its fraction
        json.dump({"epochs": info["steps"] / info["steps_per_epoch"], "steps": info["steps"], "train_s": train_s,
                   "eval_s": eval_s,
                   "peer_metrics": {k: float(v) for k, v in own.items() if k in ("ndcg@10", "hr@10")},
                   "notes": "seqrec's own metric: SeqRec.evaluate on the test split", "fit": info}, f,
                  indent=1, default=str)


if __name__ == "__main__":
    main()
