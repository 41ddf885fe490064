"""Python API: ``SeqRec(model="sasrec", loss="ce", **overrides).fit(data)``.

Follows scikit-learn discipline (the constructor stores the configuration, ``fit`` returns self)
and RecTools' recommender shape (``recommend(users, k, filter_seen=True)`` returns a tidy table of
raw ids). The configuration is the same tree as the YAML files (``get_config`` / ``from_config``).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import yaml

from seqrec.config import Config, load_config
from seqrec.data.store import EvalSet, PreparedData, SequenceStore
from seqrec.errors import ConfigError, SeqrecError
from seqrec.io import atomic_path, run_lock, write_json, write_text

RUN_FILES = ("config.yaml", "model.pt", "data")


class SeqRec:
    """A sequential recommender: model + training objective + training/evaluation settings.

    Parameters
    ----------
    model, loss: registry names (``sasrec``, ``bert4rec``, ``gru4rec``, ``pop``; ``ce``,
        ``ce_chunked``, ``sce``, ``rece``, ...) or dicts ``{"name": ..., **params}``.
    config: a packaged config name or YAML path to start from (default: the package default).
    overrides: dotted keys (``{"train.lr": 1e-3}``) applied last.
    **sections: section dicts (``train={"epochs": 5}``, ``eval={...}``, ``data={...}``).
    """

    def __init__(self, model: str | dict | None = None, loss: str | dict | None = None, config: str | None = None,
                 overrides: dict[str, Any] | None = None, **sections: Any) -> None:
        self.model = model
        self.loss = loss
        self.config = config
        self.overrides = overrides
        self.sections = sections
        self.cfg_ = self._resolve()
        self.model_: torch.nn.Module | None = None
        self.data_: PreparedData | None = None
        self.fit_info_: dict[str, Any] = {}
        self.path_: Path | None = None  # directory loaded from / saved to: its index/ may be reused

    # ------------------------------------------------------------ config
    def _resolve(self) -> Config:
        cfg = load_config(self.config)
        tree = cfg.to_dict()
        for sec, val in (("model", self.model), ("loss", self.loss)):
            if isinstance(val, str):
                val = {"name": val}
            if val is not None:
                if not isinstance(val, dict):
                    raise ConfigError(f"{sec} must be a name or a dict, got {type(val).__name__}")
                tree[sec] = {**(tree[sec] if val.get("name", tree[sec]["name"]) == tree[sec]["name"] else {}), **val}
        for sec, val in self.sections.items():
            if not isinstance(val, dict):
                raise ConfigError(f"keyword {sec!r} must be a dict of {sec} settings (or use overrides={{...}})")
            tree.setdefault(sec, {}).update(val)
        cfg = Config(tree)
        return cfg.with_overrides(self.overrides) if self.overrides else cfg

    def get_config(self) -> dict[str, Any]:
        """The full resolved configuration tree (a plain dict; YAML-serialisable)."""
        return self.cfg_.to_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any] | Config) -> SeqRec:
        tree = config.to_dict() if isinstance(config, Config) else copy.deepcopy(config)
        obj = cls.__new__(cls)
        obj.model = obj.loss = obj.config = obj.overrides = None
        obj.sections = {}
        obj.cfg_ = Config(tree)
        obj.model_, obj.data_, obj.fit_info_, obj.path_ = None, None, {}, None
        return obj

    # ------------------------------------------------------------ data
    def _load_data(self, data: Any) -> PreparedData:
        from seqrec.data import load_dataset

        if isinstance(data, PreparedData):
            return data
        d = self.cfg_.data
        if data is None:
            data = d.dataset
        if _is_frame(data):
            return _prepare_frame(data, d)
        return load_dataset(str(data), data_dir=d.data_dir, fmt=d.format, split=d.split, **(d.options or {}))

    def _build_model(self, n_items: int) -> torch.nn.Module:
        from seqrec.registry import MODELS

        m = self.cfg_.model
        return MODELS.build(m.name, n_items, **{k: v for k, v in m.items() if k != "name"})

    def _build_loss(self):
        from seqrec.losses import build_loss

        lc = self.cfg_.loss
        return build_loss(lc.name, **{k: v for k, v in lc.items() if k != "name"})

    # ------------------------------------------------------------ fit / evaluate
    def fit(self, data: Any = None, run_dir: str | os.PathLike | None = None, resume: bool = False,
            log: Callable[[str], None] = print, trainer_hook: Callable[[Any], None] | None = None) -> SeqRec:
        """Train on ``data`` (dataset name, file path, prepared dir, DataFrame or PreparedData).

        With ``run_dir`` the run is checkpointed there (config.yaml, data/, checkpoints/,
        metrics.jsonl, model.pt, train_info.json) and can be resumed with ``resume=True``.
        """
        run = Path(run_dir) if run_dir else None
        if run is None:
            return self._fit(data, None, resume, log, trainer_hook)
        with run_lock(run):  # one process per run directory
            return self._fit(data, run, resume, log, trainer_hook)

    def _fit(self, data: Any, run: Path | None, resume: bool, log: Callable[[str], None],
             trainer_hook: Callable[[Any], None] | None) -> SeqRec:
        from seqrec.training import Trainer
        from seqrec.training.trainer import seed_everything

        if resume and run is not None and (run / "data" / "meta.json").exists() and data is None:
            from seqrec.data import load_dataset

            self.data_ = load_dataset(str(run / "data"))  # the run's own prepared copy: no raw re-reading
        else:
            self.data_ = self._load_data(data)
        seed_everything(int(self.cfg_.train.seed))  # model initialisation is part of the seeded run
        self.model_ = self._build_model(self.data_.n_items)
        self._record_model_params()
        if run is not None:
            self._write_run_skeleton(run, resume)
        trainer = Trainer(self.cfg_, self.model_, self._build_loss(), self.data_, run, log=log)
        if trainer_hook:
            trainer_hook(trainer)
        self.fit_info_ = trainer.fit(resume=resume)
        self.model_.cpu()
        self.model_.eval()
        if run is not None:
            self._save_model(run / "model.pt")
            write_json(run / "train_info.json", self.fit_info_)
        return self

    def _record_model_params(self) -> None:
        tree = self.cfg_.to_dict()
        tree["model"] = {"name": self.cfg_.model.name, **self.model_.get_params()}
        self.cfg_ = Config(tree)

    def _write_run_skeleton(self, run: Path, resume: bool) -> None:
        from seqrec.data import save_prepared

        run.mkdir(parents=True, exist_ok=True)
        write_text(run / "config.yaml", yaml.safe_dump(self.get_config(), sort_keys=False))
        if not (resume and (run / "data" / "meta.json").exists()):
            save_prepared(self.data_, run / "data")

    def _check_fitted(self) -> None:
        if self.model_ is None or self.data_ is None:
            raise SeqrecError("this SeqRec is not fitted yet: call fit(data) or SeqRec.load(path) first")

    def evaluate(self, data: Any = None, split: str = "test", retrieval: str | None = None,
                 retrieval_params: dict | None = None) -> dict[str, float]:
        """HR/NDCG/MRR/coverage@k on ``split`` ('valid' or 'test') of ``data`` (default: the fitted data)."""
        from seqrec.evaluation import evaluate

        e = self.cfg_.eval
        evalset = self._evalset(data, split)
        retr = self._retriever(retrieval, retrieval_params)
        return evaluate(self.model_, evalset, max_len=self._max_len(), ks=list(e.ks),
                        retriever=retr, filter_seen=e.filter_seen, batch_size=e.batch_size,
                        recall_sample=e.recall_sample, seed=int(self.cfg_.train.seed))

    def _evalset(self, data: Any, split: str) -> EvalSet:
        self._check_fitted()
        if split not in ("valid", "test"):
            raise SeqrecError(f"split must be 'valid' or 'test', got {split!r}")
        prepared = self.data_ if data is None else self._load_data(data)
        if prepared.n_items != self.data_.n_items:
            raise SeqrecError(f"data has {prepared.n_items} items but the model was trained on {self.data_.n_items}")
        return getattr(prepared, split)

    def evaluation_ranks(self, data: Any = None, split: str = "test", k: int | None = None) -> np.ndarray:
        """0-based rank of each evaluated user's target among the top ``k`` (default: the largest
        ``eval.ks``) of the whole catalog, seen items filtered as in ``evaluate`` -> int [M]; -1 = not in the top k."""
        from seqrec.evaluation import evaluation_ranks

        e = self.cfg_.eval
        evalset = self._evalset(data, split)
        return evaluation_ranks(self.model_, evalset, max_len=self._max_len(), k=int(k or max(e.ks)),
                                retriever=self._retriever(None, None), filter_seen=e.filter_seen,
                                batch_size=e.batch_size)

    def compare(self, *others: SeqRec, data: Any = None, split: str = "test",
                metrics: tuple[str, ...] = ("ndcg@10", "hr@10"), resamples: int = 2000, level: float = 0.95,
                seed: int = 0) -> pl.DataFrame:
        """Each of ``others`` against this model on the same users: means, ratio other/this and
        difference with paired-bootstrap ``level`` intervals, and a paired t-test p-value.

        One row per (other model, metric): ``run`` (its directory when loaded from one, else its
        0-based index in ``others``), ``metric``, ``base`` (this model's mean), ``value``, ``ratio``
        (value / base) with ``ratio_lo``/``ratio_hi``, ``diff`` with ``diff_lo``/``diff_hi``, ``p_value``, ``users``.
        All models must have been fitted on the same data.
        """
        from seqrec.evaluation import compare_ranks, per_user

        if not metrics:
            raise SeqrecError("compare needs at least one metric")
        if not others:
            raise SeqrecError("compare needs at least one other model")
        self._check_fitted()
        for m in metrics:
            try:
                per_user(np.zeros(1, dtype=np.int64), m)
            except ValueError as e:
                raise SeqrecError(str(e)) from None
        fp = self.data_.meta.get("fingerprint")
        k = max(int(m.partition("@")[2]) for m in metrics)
        base = self.evaluation_ranks(data, split, k)
        targets = self._evalset(data, split).targets
        rows = []
        for i, o in enumerate(others):
            o._check_fitted()
            other_set = o._evalset(data, split)
            if o.data_.meta.get("fingerprint") != fp or not np.array_equal(other_set.targets, targets):
                raise SeqrecError(f"model {o.path_ or i} was fitted on other data: "
                                  "a paired comparison needs the same users")
            try:
                recs = compare_ranks(base, o.evaluation_ranks(data, split, k), metrics, resamples, level, seed)
            except ValueError as e:
                raise SeqrecError(str(e)) from None
            rows += [{"run": str(o.path_) if o.path_ is not None else str(i), **r} for r in recs]
        return pl.DataFrame(rows)

    def _max_len(self) -> int:
        return int(getattr(self.model_, "max_len", 200))

    def _retriever(self, backend: str | None, params: dict | None):
        from seqrec.retrieval import build_retriever

        name = backend or self.cfg_.eval.retrieval
        p = params if params is not None else (self.cfg_.eval.retrieval_params if backend is None else {})
        emb = self.item_embeddings()
        return self._saved_index(name, p or {}, emb) or build_retriever(name, **(p or {})).build(emb)

    def _saved_index(self, backend: str, params: dict, emb: np.ndarray):
        """The index ``seqrec index build`` saved in this model's directory, when it indexes exactly
        these embeddings and agrees with ``params`` (search-time ones are applied); else None."""
        from seqrec.retrieval import load_retriever
        from seqrec.retrieval.base import embedding_digest, load_meta

        where = self.path_ / "index" / backend if self.path_ is not None else None
        if where is None or not (where / "retriever.json").is_file():
            return None
        meta = load_meta(where)
        if meta["source"] != embedding_digest(emb):
            warnings.warn(f"{where} was built from other item embeddings (model retrained?): building a "
                          f"fresh index; rebuild it with: seqrec index build {self.path_} --backend {backend}",
                          RuntimeWarning, stacklevel=3)
            return None
        retriever = load_retriever(where)
        search = {k: v for k, v in params.items() if k in retriever.search_time}
        if any(meta["params"].get(k) != v for k, v in params.items() if k not in search):
            return None  # other build-time parameters were asked for
        return retriever.set_params(**search) if search else retriever

    def item_embeddings(self) -> np.ndarray:
        """Scoring matrix of the catalog -> float32 [C, d] (row i = internal item i + 1)."""
        self._check_fitted()
        return self.model_.item_embeddings().detach().float().cpu().numpy()

    # ------------------------------------------------------------ recommend
    def recommend(self, users: Any = None, k: int = 10, filter_seen: bool = True,
                  histories: dict[Any, list] | None = None, items: Any = None, exclude_items: Any = None,
                  retrieval: str | None = None, retrieval_params: dict | None = None) -> pl.DataFrame:
        """Top-k items per user -> DataFrame(user, item, score, rank) with raw ids (rank 1 = best).

        users: raw user ids known at training time (None: all users). histories: a mapping from a
        user (possibly unseen in training) to their item list (raw ids, time order); unknown items
        are ignored. items: allow-list of raw item ids; exclude_items: deny-list.
        """
        self._check_fitted()
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise SeqrecError(f"k must be a positive integer, got {k!r}")
        d = self.data_
        if histories is not None:
            if users is not None:
                raise SeqrecError("pass either users or histories, not both")
            user_raw = list(histories)
            item_index = {raw: i for i, raw in enumerate(d.item_ids.tolist()) if i > 0}
            rows = [[item_index[x] for x in histories[u] if x in item_index] for u in user_raw]
            store = SequenceStore.from_lists(rows)
            user_col = pl.Series("user", user_raw)
        else:
            if users is None:
                idx = np.arange(d.n_users)
            else:
                user_index = {raw: i for i, raw in enumerate(d.user_ids.tolist())}
                want = list(users)
                missing = [u for u in want if u not in user_index]
                if missing:
                    raise SeqrecError(f"{len(missing)} unknown user(s), e.g. {missing[0]!r}; pass new users "
                                      "with histories={user: [items...]}")
                idx = np.array([user_index[u] for u in want], dtype=np.int64)
            store = d.full.subset(idx)
            user_col = pl.Series("user", d.user_ids[idx])
        from seqrec.evaluation import user_vectors

        queries = user_vectors(self.model_, store, self._max_len(), self.cfg_.eval.batch_size)
        retr = self._retriever(retrieval, retrieval_params)
        exclude = (store.offsets, store.items - 1) if filter_seen else None
        kw = {}
        if items is not None:
            kw["allow"] = self._catalog_ids(items, "items")
        if exclude_items is not None:
            kw["deny"] = self._catalog_ids(exclude_items, "exclude_items")
        scores, ids = retr.search(queries, int(k), exclude=exclude, **kw)
        scores, ids = np.asarray(scores), np.asarray(ids)
        m, kk = ids.shape
        valid = ids >= 0
        user_rep = np.repeat(np.arange(m), kk)[valid.ravel()]
        return pl.DataFrame({
            "user": user_col.gather(user_rep) if m else user_col,
            "item": pl.Series("item", d.item_ids[ids[valid] + 1]),
            "score": scores[valid].astype(np.float32),
            "rank": np.tile(np.arange(1, kk + 1), m)[valid.ravel()].astype(np.int32),
        })

    def _catalog_ids(self, raw: Any, what: str) -> np.ndarray:
        index = {r: i - 1 for i, r in enumerate(self.data_.item_ids.tolist()) if i > 0}
        ids = [index[x] for x in raw if x in index]
        if not ids and len(list(raw)):
            raise SeqrecError(f"none of the {what} are in the trained catalog")
        return np.array(ids, dtype=np.int64)

    # ------------------------------------------------------------ persistence
    def _save_model(self, path: Path) -> None:
        from seqrec import __version__

        state = {"meta": {"version": __version__, "fingerprint": self.data_.meta.get("fingerprint", ""),
                          "n_items": self.data_.n_items, "model": self.cfg_.model.name},
                 "model": self.model_.state_dict()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def save(self, path: str | os.PathLike) -> Path:
        """Write config.yaml, model.pt and data/ to ``path`` (a directory); ``SeqRec.load`` reads it."""
        from seqrec.data import save_prepared

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_text(path / "config.yaml", yaml.safe_dump(self.get_config(), sort_keys=False))
        self._save_model(path / "model.pt")
        if not (path / "data" / "meta.json").exists():
            save_prepared(self.data_, path / "data")
        if self.fit_info_:
            write_json(path / "train_info.json", self.fit_info_)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SeqRec:
        """Load a saved model or a finished ``seqrec fit`` run directory."""
        from seqrec.config import read_yaml
        from seqrec.data import load_dataset
        from seqrec.training.checkpoint import check_compatible, load_checkpoint

        path = Path(path)
        if not path.is_dir():
            raise SeqrecError(f"{path} is not a run or model directory")
        missing = [f for f in RUN_FILES if not (path / f).exists()]
        if missing:
            hint = " (training unfinished? resume it with: seqrec fit --resume DIR)" if "model.pt" in missing else ""
            raise SeqrecError(f"{path} is not a complete seqrec model directory: missing {', '.join(missing)}{hint}")
        obj = cls.from_config(read_yaml(path / "config.yaml"))
        obj.data_ = load_dataset(str(path / "data"))
        ck = load_checkpoint(path / "model.pt")
        check_compatible(ck, obj.data_.meta.get("fingerprint", ""), obj.data_.n_items, path / "model.pt")
        obj.model_ = obj._build_model(obj.data_.n_items)
        try:
            obj.model_.load_state_dict(ck["model"])
        except (RuntimeError, TypeError, AttributeError) as e:  # shapes/keys differ from config.yaml's model
            msg = str(e).replace("\n", " ").replace("\t", "")[:200]
            raise SeqrecError(f"{path / 'model.pt'} does not fit the model in {path / 'config.yaml'} ({msg})") from None
        obj.model_.eval()
        obj.path_ = path
        info = path / "train_info.json"
        obj.fit_info_ = json.loads(info.read_text()) if info.exists() else {}
        return obj


def _is_frame(x: Any) -> bool:
    return isinstance(x, pl.DataFrame) or type(x).__name__ == "DataFrame" and hasattr(x, "columns")


def _prepare_frame(frame: Any, d: Any) -> PreparedData:
    """A DataFrame of interactions (columns user, item[, timestamp][, rating]) -> PreparedData."""
    from seqrec.data import load_dataset

    if not isinstance(frame, pl.DataFrame):
        frame = pl.from_pandas(frame)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "interactions.parquet"
        frame.write_parquet(f)
        return load_dataset(str(f), fmt="parquet", split=d.split, **(d.options or {}))


def eval_set_for(data: PreparedData, split: str) -> EvalSet:
    return getattr(data, split)
