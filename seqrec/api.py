"""Python API: ``SeqRec(model="sasrec", loss="ce", **sections).fit(data)``.

Follows scikit-learn discipline (the constructor stores the configuration, ``fit`` returns self)
and RecTools' recommender shape (``recommend(users, k, filter_seen=True)`` returns a tidy table of
raw ids). The configuration is the typed tree of the YAML files (``get_config`` / ``from_config``
round-trip to identical YAML).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from seqrec.config import Config, load_config, merge, set_dotted
from seqrec.data.store import EvalSet, PreparedData, SequenceStore
from seqrec.errors import ConfigError, SeqrecError
from seqrec.evaluation.defaults import valid_subset
from seqrec.rundir import RunDir


class SeqRec:
    """A sequential recommender: model + training objective + training/evaluation settings.

    Parameters
    ----------
    model, loss: registry names (``sasrec``, ``bert4rec``, ``gru4rec``, ``pop``; ``ce``,
        ``ce_chunked``, ``sce``, ``rece``, ... or a plug-in's) or dicts ``{"name": ..., **params}``.
    config: where to start: a packaged config name, a YAML path, a config tree (dict) or a ``Config``
        (default: the package default).
    overrides: dotted keys (``{"train.lr": 1e-3}``) applied last.
    **sections: section dicts (``train={"epochs": 5}``, ``eval={...}``, ``data={...}``).
    """

    def __init__(self, model: str | dict | None = None, loss: str | dict | None = None,
                 config: str | os.PathLike | dict | Config | None = None,
                 overrides: dict[str, Any] | None = None, **sections: Any) -> None:
        self.model, self.loss, self.config, self.overrides, self.sections = model, loss, config, overrides, sections
        self.cfg_ = self._resolve()
        self.model_: torch.nn.Module | None = None
        self.data_: PreparedData | None = None
        self.fit_info_: dict[str, Any] = {}
        self.path_: Path | None = None  # directory loaded from / saved to: its index/ may be reused

    def _resolve(self) -> Config:
        base = self.config
        if isinstance(base, Config):
            tree = base.to_dict()
        elif isinstance(base, dict):
            tree = merge(Config.from_tree().to_dict(), base)
        else:
            tree = load_config(base).to_dict()
        update: dict[str, Any] = {}
        for sec, val in (("model", self.model), ("loss", self.loss)):
            if val is not None:
                if not isinstance(val, str | dict):
                    raise ConfigError(f"{sec} must be a name or a dict, got {type(val).__name__}")
                update[sec] = {"name": val} if isinstance(val, str) else val
        for sec, val in self.sections.items():
            if not isinstance(val, dict):
                raise ConfigError(f"keyword {sec!r} must be a dict of {sec} settings (or use overrides={{...}})")
            update[sec] = val
        tree = merge(tree, update)
        for key, value in (self.overrides or {}).items():
            set_dotted(tree, key, value)
        return Config.from_tree(tree)

    def get_config(self) -> dict[str, Any]:
        """The full resolved configuration tree (a plain dict; YAML-serialisable)."""
        return self.cfg_.to_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any] | Config) -> SeqRec:
        """An unfitted SeqRec of ``config`` (``from_config(r.get_config())`` configures ``r``'s twin)."""
        return cls(config=config)

    def set_config(self, overrides: dict[str, Any]) -> SeqRec:
        """Change evaluation settings (``{"eval.retrieval": "faiss-ivf"}``) of a fitted model -> self.
        Other sections describe what was trained and cannot change after ``fit``."""
        bad = [k for k in overrides if self.model_ is not None and not k.startswith("eval.")]
        if bad:
            raise ConfigError(f"{bad[0]}: only eval.* settings can change once a model is fitted")
        self.cfg_ = self.cfg_.with_overrides(overrides)
        return self

    # ------------------------------------------------------------ data and parts
    def _load_data(self, data: Any) -> PreparedData:
        from seqrec.data import load_dataset, load_frame

        if isinstance(data, PreparedData):
            return data
        d = self.cfg_.data
        if _is_frame(data):
            return load_frame(data, split=d.split, strict=d.strict, **d.options)
        return load_dataset(str(d.dataset if data is None else data), data_dir=d.data_dir, fmt=d.format,
                            split=d.split, strict=d.strict, **d.options)

    def _build_model(self, n_items: int) -> torch.nn.Module:
        from seqrec.registry import MODELS

        return MODELS.build(self.cfg_.model.name, n_items, **self.cfg_.model.params)

    def _check_fitted(self) -> None:
        if self.model_ is None or self.data_ is None:
            raise SeqrecError("this SeqRec is not fitted yet: call fit(data) or SeqRec.load(path) first")

    # ------------------------------------------------------------ fit
    def fit(self, data: Any = None, run_dir: str | os.PathLike | None = None, resume: bool = False,
            log: Callable[[str], None] = print, callbacks: Sequence[Any] = (), force: bool = False) -> SeqRec:
        """Train on ``data`` (dataset name, file path, prepared dir, DataFrame or PreparedData; default
        ``data.dataset``). With ``run_dir`` the run is checkpointed there (see ``seqrec.rundir``) and
        can be resumed with ``resume=True``. ``callbacks``: extra ``seqrec.training.Callback``s.
        A step predicted not to fit the free memory is refused before training unless ``force``."""
        from seqrec.registry import LOSSES
        from seqrec.training import ResumeNote, Trainer, seed_everything
        from seqrec.training.loggers import check_loggers

        check_loggers(self.cfg_.train.loggers)  # a missing tracker package: refused before anything is written
        run = RunDir(run_dir) if run_dir is not None else None
        with run.lock() if run is not None else contextlib.nullcontext(), \
                run.restored_on_failure(run.config) if resume and run is not None else contextlib.nullcontext():
            if resume and run is not None and run.has_data() and data is None:
                from seqrec.data import load_dataset

                self.data_ = load_dataset(str(run.data))  # the run's own prepared copy: no raw re-reading
            else:
                self.data_ = self._load_data(data)
            seed_everything(self.cfg_.train.seed)  # model initialisation is part of the seeded run
            self.model_ = self._build_model(self.data_.n_items)
            self.cfg_ = Config.from_tree({**self.get_config(),  # every model parameter, defaults too
                                          "model": {"name": self.cfg_.model.name, **self.model_.get_params()}})
            if run is not None:
                if not resume and run.path.is_dir() and any(c.name != ".lock" for c in run.path.iterdir()):
                    raise SeqrecError(f"run directory {run.path} is not empty: pass resume=True to continue it, "
                                      "or train into a new directory")
                if resume and run.is_run():  # what the resume changes goes to the log and metrics.jsonl
                    callbacks = [*callbacks, *ResumeNote.between(run.read_config(), self.get_config())]
                run.write_config(self.get_config())
                if not (resume and run.has_data()):
                    self._save_data(run)
            loss = LOSSES.build(self.cfg_.loss.name, **self.cfg_.loss.params)
            trainer = Trainer(self.cfg_, self.model_, loss, self.data_, run, log=log, callbacks=list(callbacks),
                              force=force)
            self.fit_info_ = trainer.fit(resume=resume)
            self.model_.cpu().eval()
            if run is not None:
                self._save_model(run)
                run.write_json(run.train_info.name, self.fit_info_)
        return self

    # ------------------------------------------------------------ evaluate
    def evaluate(self, data: Any = None, split: str = "test", retrieval: str | None = None,
                 retrieval_params: dict | None = None, metrics_only: bool = False) -> dict[str, float]:
        """HR/NDCG/MRR/coverage@k on ``split`` ('valid' or 'test') of ``data`` (default: the fitted data).
        With an approximate backend the result also holds its recall vs exact search, unless ``metrics_only``."""
        from seqrec.evaluation import evaluate

        e, evalset = self.cfg_.eval, self._evalset(data, split)
        m = evaluate(self.model_, evalset, max_len=self.model_.max_len, ks=list(e.ks),
                     retriever=self._retriever(retrieval, retrieval_params, evalset.history),
                     filter_seen=e.filter_seen,
                     batch_size=e.batch_size, recall_sample=0 if metrics_only else e.recall_sample,
                     seed=self.cfg_.train.seed, encode_dtype=e.encode_dtype)
        return {k: v for k, v in m.items() if "@" in k and not k.startswith("retrieval")} if metrics_only else m

    def _evalset(self, data: Any, split: str) -> EvalSet:
        self._check_fitted()
        if split not in ("valid", "test"):
            raise SeqrecError(f"split must be 'valid' or 'test', got {split!r}")
        prepared = self.data_ if data is None else self._load_data(data)
        if prepared.n_items != self.data_.n_items:
            raise SeqrecError(f"data has {prepared.n_items} items but the model was trained on {self.data_.n_items}")
        if split == "test":
            return prepared.test
        # the users training validated on (all up to VALID_USERS_AUTO, a fixed sample above it), so
        # the valid row of results.json is the metric early stopping saw
        return valid_subset(prepared.valid, self.cfg_.train.valid_users, int(self.cfg_.train.seed))

    def evaluation_ranks(self, data: Any = None, split: str = "test", k: int | None = None) -> np.ndarray:
        """0-based rank of each evaluated user's target among the top ``k`` (default: the largest
        ``eval.ks``) of the whole catalog, seen items filtered as in ``evaluate`` -> int [M]; -1 = not in the top k."""
        from seqrec.evaluation import evaluation_ranks

        e, evalset = self.cfg_.eval, self._evalset(data, split)
        return evaluation_ranks(self.model_, evalset, max_len=self.model_.max_len,
                                k=int(k or max(e.ks)), retriever=self._retriever(None, None, evalset.history),
                                filter_seen=e.filter_seen, batch_size=e.batch_size, encode_dtype=e.encode_dtype)

    def compare(self, *others: SeqRec, data: Any = None, split: str = "test",
                metrics: tuple[str, ...] = ("ndcg@10", "hr@10"), resamples: int = 2000, level: float = 0.95,
                seed: int = 0) -> pl.DataFrame:
        """Each of ``others`` against this model on the same users (see ``seqrec.evaluation.compare_models``):
        one row per (other, metric) with ``run``, ``metric``, ``base``, ``value``, ``ratio`` [lo, hi],
        ``diff`` [lo, hi], ``p_value``, ``users``. All models must have been fitted on the same data."""
        from seqrec.evaluation.compare import compare_models

        if not others:
            raise SeqrecError("compare needs at least one other model")
        for m in (self, *others):
            m._check_fitted()
        ranks = lambda m, k: m.evaluation_ranks(data, split, k)  # noqa: E731
        named = [(str(o.path_) if o.path_ is not None else str(i), o) for i, o in enumerate(others)]
        rows = compare_models(self, named, ranks, lambda m: (m.data_.meta.get("fingerprint"),
                                                             m._evalset(data, split).targets),
                              metrics, resamples, level, seed)
        return pl.DataFrame(rows)

    # ------------------------------------------------------------ retrieval
    def item_embeddings(self) -> np.ndarray:
        """Scoring matrix of the catalog -> float32 [C, d] (row i = internal item i + 1)."""
        self._check_fitted()
        return self.model_.item_embeddings().detach().float().cpu().numpy()

    def _retriever(self, backend: str | None, params: dict | None, users: SequenceStore | None = None) -> Any:
        """The index to search (``seqrec.indexing.model_retriever``)."""
        from seqrec.indexing import model_retriever

        return model_retriever(self.model_, self.item_embeddings(), self.cfg_, self.path_, backend, params, users)

    def build_index(self, retrieval: str = "faiss-hnsw", params: dict | None = None) -> tuple[Path, dict[str, Any]]:
        """Build a ``retrieval`` index over the item embeddings and save it in this model's directory
        (``RUN/index/<backend>/``, reused by ``evaluate``/``recommend``) -> (directory, summary)."""
        from seqrec.indexing import save_index

        if self.path_ is None:
            raise SeqrecError("build_index needs a saved model: save(path) or SeqRec.load(path) first")
        return save_index(self.item_embeddings(), self.path_, retrieval, params)

    # ------------------------------------------------------------ recommend
    def recommend(self, users: Any = None, k: int = 10, filter_seen: bool = True, histories: Any = None,
                  items: Any = None, exclude_items: Any = None, retrieval: str | None = None,
                  retrieval_params: dict | None = None, unknown: str = "error") -> pl.DataFrame:
        """Top-k items per user -> DataFrame(user, item, score, rank) with raw ids (rank 1 = best), users
        in input order, each once (a repeated id is answered at its first position, with a warning).

        users: raw user ids known at training time (None: all users); ``unknown`` says what to do with
        the others: ``"error"`` (a SeqrecError naming them), ``"skip"`` (left out, with a warning) or
        ``"popular"`` (the popularity fallback, with a warning; ids of another type than the catalog's
        then make the user column text). histories: new (or returning) users'
        items in time order, as a mapping user -> [raw item ids] or a DataFrame with columns user, item
        (one row per interaction); items outside the trained catalog are ignored (with a warning).
        items: allow-list of raw item ids; exclude_items: deny-list.

        Scores are the model's inner products, except for the **popularity fallback**: a user whose
        history is empty or holds no known item (or an unknown user with ``unknown="popular"``) gets
        the most popular training items, score = the item's training interaction count
        (``data_.item_pop``), allow/deny lists applied; a ``SeqrecWarning`` counts those users.
        """
        from seqrec.evaluation import user_vectors
        from seqrec.queries import assemble, build_queries, popularity_topk

        self._check_fitted()
        if not isinstance(k, int | np.integer) or k < 1:
            raise SeqrecError(f"k must be a positive integer, got {k!r}")
        q = build_queries(self.data_, users, histories, unknown)
        kw = {key: self._catalog_ids(raw, key) for key, raw in (("allow", items), ("deny", exclude_items))
              if raw is not None}
        model_hits = None
        if len(q.model_rows):  # an all-fallback batch needs no encoder pass and no index
            queries = user_vectors(self.model_, q.store, self.model_.max_len, self.cfg_.eval.batch_size)
            exclude = (q.store.offsets, q.store.items - 1) if filter_seen else None
            model_hits = self._retriever(retrieval, retrieval_params).search(queries, int(k), exclude=exclude,
                                                                             **kw)
        return assemble(q, int(k), model_hits, popularity_topk(self.data_.item_pop, int(k), **kw),
                        self.data_.item_ids)

    def _catalog_ids(self, raw: Any, what: str) -> np.ndarray:
        ids = self.data_.catalog_ids(raw)
        if not len(ids) and len(list(raw)):
            raise SeqrecError(f"none of the {'items' if what == 'allow' else 'exclude_items'} are in the "
                              "trained catalog")
        return ids

    def finetune(self, data: Any, peft: str = "sparsegrad", out: str | os.PathLike | None = None,
                 **options: Any) -> SeqRec:
        """Continue this fitted model on new interactions (same catalog) with a fine-tuning method:
        sparsegrad, lora, meprop, topk or full -> a new fitted SeqRec (``seqrec.peft.finetune``)."""
        from seqrec.peft.finetune import finetune

        return finetune(self, data, peft, out, **options)

    # ------------------------------------------------------------ persistence
    def _save_model(self, run: RunDir) -> None:
        from seqrec.training import save_model

        save_model(run.model, self.model_, self.data_, self.cfg_.model.name)

    def _save_data(self, run: RunDir) -> None:
        from seqrec.data import save_prepared

        save_prepared(self.data_, run.data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write config.yaml, model.pt and data/ to ``path`` (a directory); ``SeqRec.load`` reads it."""
        self._check_fitted()
        run = RunDir(path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(self.get_config())
        self._save_model(run)
        if not run.has_data():
            self._save_data(run)
        if self.fit_info_:
            run.write_json(run.train_info.name, self.fit_info_)
        self.path_ = run.path
        return run.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SeqRec:
        """Load a saved model or a finished ``seqrec fit`` run directory."""
        import json

        from seqrec.data import load_dataset
        from seqrec.training import load_model

        run = RunDir(path)
        if not run.path.is_dir():
            raise SeqrecError(f"{run.path} is not a run or model directory")
        missing = run.missing()
        if missing:
            hint = " (training unfinished? resume it with: seqrec fit --resume DIR)" if "model.pt" in missing else ""
            raise SeqrecError(f"{run.path} is not a complete seqrec model directory: "
                              f"missing {', '.join(missing)}{hint}")
        obj = cls(config=Config.from_tree(run.read_config()))
        obj.data_ = load_dataset(str(run.data))
        obj.model_ = load_model(run.model, obj._build_model(obj.data_.n_items), obj.data_, run.config)
        obj.path_ = run.path
        obj.fit_info_ = json.loads(run.train_info.read_text()) if run.train_info.exists() else {}
        return obj


def _is_frame(x: Any) -> bool:
    return isinstance(x, pl.DataFrame) or type(x).__name__ == "DataFrame" and hasattr(x, "columns")
