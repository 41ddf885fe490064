"""RecBole's SASRec / BERT4Rec on the exported split, under a wall-time budget (runs in RecBole's venv).

Workarounds for recbole 1.2.1 with numpy 2 / torch 2.6+ (each one is needed, not defensive):
- numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` (RecBole's own
  ``compatibility_settings`` reads them and fails) and ``np.float``/``np.bool``/``np.long``... (its
  evaluator and ``data/interaction.py`` use them): the aliases are set before RecBole is imported;
- torch >= 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses RecBole's
  checkpoints (they pickle the config): ``torch.load`` is wrapped with ``weights_only=False``;
- ``recbole.model.sequential_recommender.sine`` turns on ``torch.autograd.set_detect_anomaly(True)``
  at import, for every model (several times slower backward); ``get_model`` imports it lazily, so
  anomaly mode is turned off right after ``get_model``;
- pandas 3 (copy-on-write) makes RecBole's ``fillna(inplace=True)`` a no-op: the venv pins
  ``pandas<3`` (``envs.PEERS``).
The budget: the training loader is wrapped so that the first batch after ``budget_s`` raises
``BudgetOver``, caught around ``Trainer.fit`` (no validation, no checkpoint: the model as trained).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import peer_common as pc

for _name, _value in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_, "float": float,
                      "int": int, "bool": bool, "long": int, "complex": complex, "object": object,
                      "str": str}.items():
    if _name not in np.__dict__:
        setattr(np, _name, _value)

import torch  # noqa: E402

torch.load = functools.partial(torch.load, weights_only=False)

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_seed  # noqa: E402


class BudgetOver(Exception):
    pass


class BudgetLoader:
    """A RecBole training loader that stops the run once the budget is spent; counts epochs."""

    def __init__(self, loader, budget: pc.Budget) -> None:
        self.loader, self.budget, self.epochs, self.steps = loader, budget, 0, 0

    def __iter__(self):
        for batch in self.loader:
            if self.budget.over():
                raise BudgetOver
            self.steps += 1
            yield batch
        self.epochs += 1

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def config(s: dict) -> dict:
    model = {"sasrec": "SASRec", "bert4rec": "BERT4Rec"}[s["model"]]
    d = s["d"]
    cfg = {
        "data_path": f"{s['export']}/recbole", "dataset": s["recbole_dataset"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": s["max_len"], "hidden_size": d, "inner_size": d, "n_layers": s["n_blocks"],
        "n_heads": s["n_heads"], "hidden_dropout_prob": s["dropout"], "attn_dropout_prob": s["dropout"],
        "hidden_act": "relu" if model == "SASRec" else "gelu", "loss_type": "CE", "train_neg_sample_args": None,
        "train_batch_size": s["batch_size"], "eval_batch_size": 256, "learning_rate": s["lr"],
        "epochs": 1_000_000, "stopping_step": 1_000_000, "eval_step": 0,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
        "use_gpu": False, "seed": s["seed"], "reproducibility": True, "worker": 0, "show_progress": False,
        "checkpoint_dir": f"{s['out']}/recbole_ckpt", "state": "WARNING",
    }
    if model == "BERT4Rec":
        cfg["mask_ratio"] = s.get("mask_prob", 0.2)
    return model, cfg


def topk(trainer, test_data, dataset, seen: dict[int, list[int]], k: int):
    """Every test user's top-k in our ids, the user's known items removed."""
    users_tok = dataset.field2id_token["user_id"]
    items_tok = np.array([int(t) if t != "[PAD]" else -1 for t in dataset.field2id_token["item_id"]])
    to_internal = {int(t): i for i, t in enumerate(dataset.field2id_token["item_id"]) if t != "[PAD]"}
    users, lists = [], []
    trainer.model.eval()
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)
            uids = [int(users_tok[u]) for u in interaction["user_id"].tolist()]
            rows = [r for r, u in enumerate(uids) for _ in seen.get(u, [])]
            cols = [to_internal[i] for u in uids for i in seen.get(u, []) if i in to_internal]
            if len(rows) == len(cols) and rows:
                scores[rows, cols] = -np.inf
            ids = torch.topk(scores, k, dim=1).indices.numpy()
            users += uids
            lists += [items_tok[r][items_tok[r] > 0].tolist() for r in ids]
    return users, lists


def main() -> None:
    s = pc.settings()
    pc.set_threads(s["threads"])
    model_name, cfg = config(s)
    conf = Config(model=model_name, config_dict=cfg)
    init_seed(conf["seed"], conf["reproducibility"])
    pc.set_threads(s["threads"])
    dataset = create_dataset(conf)
    train_data, _, test_data = data_preparation(conf, dataset)
    model = get_model(conf["model"])(conf, train_data._dataset).to(conf["device"])
    torch.autograd.set_detect_anomaly(False)  # get_model imports sine.py, which turned it on
    trainer = get_trainer(conf["MODEL_TYPE"], conf["model"])(conf, model)
    budget = pc.Budget(s["budget_s"])
    loader = BudgetLoader(train_data, budget)
    try:
        trainer.fit(loader, valid_data=None, saved=False, verbose=False)
    except BudgetOver:
        pass
    train_s = budget.elapsed()
    t0 = time.perf_counter()
    res = trainer.evaluate(test_data, load_best_model=False)
    eval_s = time.perf_counter() - t0
    train, valid, _ = pc.frames(s["export"])
    users, lists = topk(trainer, test_data, dataset, pc.seen_items(train, valid), s["k"])
    pc.write_outputs(s["out"], users, lists, {
        "epochs": loader.epochs + (loader.steps % max(len(train_data), 1)) / max(len(train_data), 1),
        "steps": loader.steps, "train_s": train_s, "eval_s": eval_s,
        "peer_metrics": {k.lower(): float(v) for k, v in dict(res).items()},
        "notes": "RecBole's own metric: its full-sort test, seen items not filtered (sequential models)"})


if __name__ == "__main__":
    main()
