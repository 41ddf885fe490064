"""Continue a trained model on new interactions with a fine-tuning method (``seqrec finetune``).

    rec = SeqRec.load("runs/base")
    tuned = rec.finetune("new-data.csv", peft="sparsegrad", out="runs/tuned")

The new data is mapped into the trained catalog (``catalog.to_catalog``), the model rebuilt from the
base run's architecture with its trained weights, the method attached (SparseGrad first collects
the gradients of ``collect_steps`` batches), trained by the ordinary ``Trainer`` with the method's
optimiser, exported back to plain linears and saved as an ordinary run directory (config.yaml,
data/, model.pt, results.json, train_info.json with a "finetune" record) that ``evaluate`` /
``recommend`` load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from seqrec.errors import ConfigError, SeqrecError


def finetune(base: Any, data: Any, peft: str = "sparsegrad", out: str | os.PathLike | None = None,
             budget: float | None = None, train_embeddings: bool = False,
             overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print,
             callbacks: Sequence[Any] = (), force: bool = False) -> Any:
    """Fine-tune the fitted SeqRec ``base`` on ``data`` (a dataset name, path, DataFrame or
    PreparedData with items of ``base``'s catalog) with method ``peft`` -> a new fitted SeqRec.

    budget: share in (0, 1] of each feed-forward weight's entries updated per step (default: the
    method's, 0.01). train_embeddings: train the item table too; new items are then appended with
    fresh embeddings (without it they are refused). overrides: ``{"train.epochs": 2}`` etc.; the
    ``model.*`` section is the base's and cannot change. out: the run directory to write (must be
    new or empty; None keeps everything in memory).
    """
    from seqrec.api import SeqRec
    from seqrec.peft import PEFT
    from seqrec.rundir import RunDir
    from seqrec.training import resolve_device

    method = PEFT.build(PEFT.check_name(peft, "--peft"), **({} if budget is None else {"budget": budget}))
    base._check_fitted()
    cfg = _config(base.get_config(), data, overrides or {})
    resolve_device(cfg.train.device)
    if out is not None:
        _check_out(Path(out))
    rec = SeqRec(config=cfg)
    run = RunDir(out) if out is not None else None
    with _removed_on_failure(run), run.create() if run is not None else contextlib.nullcontext():
        rec.data_, appended = _new_data(rec, base, data, train_embeddings)
        rec.model_ = _base_model(base, rec.data_.n_items, int(cfg.train.seed))
        if run is not None:
            run.write_config(rec.get_config())
            rec._save_data(run)
        info = _train(rec, method, run, train_embeddings, log, callbacks, force)
        info["finetune"] = {"base": str(base.path_) if base.path_ else None, "peft": method.name,
                            "budget": method.budget, "train_embeddings": train_embeddings,
                            "appended_items": appended, **info.pop("peft_stats")}
        rec.fit_info_ = info
        if run is not None:
            rec._save_model(run)
            rec.path_ = run.path
            run.write_json(run.train_info.name, info)
            run.write_json(run.results.name, {s: rec.evaluate(split=s, metrics_only=True) for s in ("valid", "test")})
    return rec


def _config(tree: dict[str, Any], data: Any, overrides: dict[str, Any]) -> Any:
    from seqrec.config import Config


    bad = [k for k in overrides if k.startswith("model.") or k == "model"]
    if bad:
        raise ConfigError(f"--set {bad[0]}: the architecture is the base run's; fine-tuning cannot change model.*")
    if isinstance(data, str | os.PathLike):
        tree = {**tree, "data": {**tree["data"], "dataset": str(data)}}
    return Config.from_tree(tree).with_overrides(overrides) if overrides else Config.from_tree(tree)


@contextlib.contextmanager
def _removed_on_failure(run: Any) -> Iterator[None]:
    """A fine-tuning run does not resume (its checkpoints hold the method's modules): whatever stops
    it, an interrupt included, removes the directory it was writing (``_check_out``: new or empty)."""
    existed = run is not None and run.path.exists()
    try:
        yield
    except BaseException:
        if run is not None and run.path.exists():
            for child in run.path.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    run.path.rmdir()
        raise


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(c.name != ".lock" for c in out.iterdir())):
        raise SeqrecError(f"--out {out} already exists and is not empty; fine-tune into a new directory")


def _new_data(rec: Any, base: Any, data: Any, append: bool) -> tuple[Any, int]:
    from seqrec.peft.catalog import to_catalog

    new = rec._load_data(data)
    return to_catalog(new, base.data_.item_ids, append)


def _base_model(base: Any, n_items: int, seed: int) -> torch.nn.Module:
    """The base's architecture for ``n_items`` items, with its trained weights (grown if needed)."""
    from seqrec.peft.catalog import grow_items

    state = {k: v.detach().cpu().clone() for k, v in base.model_.state_dict().items()}
    ptr = base.model_.item_embeddings().untyped_storage().data_ptr()  # the table with the item rows
    keys = [k for k, v in base.model_.state_dict().items() if v.untyped_storage().data_ptr() == ptr]
    model = base._build_model(n_items)
    model.load_state_dict(grow_items(state, keys, base.data_.n_items, n_items, seed))
    return model


def _train(rec: Any, method: Any, run: Any, train_embeddings: bool, log: Callable[[str], None],
           callbacks: Sequence[Any], force: bool) -> dict[str, Any]:
    from seqrec.peft.base import state_bytes
    from seqrec.registry import LOSSES
    from seqrec.training import Trainer, seed_everything

    cfg, model = rec.cfg_, rec.model_
    loss = LOSSES.build(cfg.loss.name, **cfg.loss.params)
    seed_everything(int(cfg.train.seed))
    source = _gradient_source(cfg, model, loss, rec.data_, force) if method.needs_gradients else None
    method.attach(model, source, train_embeddings=train_embeddings)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = Trainer(cfg, model, loss, rec.data_, run, log=log, callbacks=list(callbacks), force=force,
                      optimizer=method.optimizer_factory(cfg.train))
    info = trainer.fit()
    info["peft_stats"] = {"trainable_values": trainable, "optimizer_state_bytes": state_bytes(trainer.optimizer)}
    method.export(model)
    model.cpu().eval()
    return info


def _gradient_source(cfg: Any, model: torch.nn.Module, loss: Any, data: Any,
                     force: bool) -> Callable[[int], Iterator[None]]:
    """``source(n)``: n training batches as the trainer builds them, each leaving its weight
    gradients in ``.grad`` (forward, loss, backward; no optimiser step)."""
    from seqrec.training import Trainer

    def batches(n: int) -> Iterator[None]:
        trainer = Trainer(cfg, model, loss, data, None, log=lambda s: None, force=force)
        model.train()
        for inputs, targets, has, ctx in trainer.sample_batches(n):
            with trainer.autocast:
                value = loss(model(inputs)[has], targets[has] - 1, model.item_embeddings(), ctx)
            value.backward()
            yield None
    return batches
