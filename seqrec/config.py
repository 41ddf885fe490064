"""Typed configuration tree (data, model, loss, train, eval) loaded from YAML with ``a.b=c`` overrides.

Sections ``data``, ``train`` and ``eval`` have fixed keys (unknown keys are errors with a
did-you-mean hint). ``model`` and ``loss`` hold ``name`` plus the constructor parameters of the
chosen model / loss, checked against that constructor's signature.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from seqrec.errors import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "synthetic",   # name (card in datasets/), prepared dir, or file path
        "data_dir": None,         # where named datasets live (env SEQREC_DATA, else a user cache dir)
        "format": None,           # reader for a file path (see `seqrec data --help`)
        "split": None,            # leave_one_out | global_temporal (None: the card's default)
        "options": {},            # card preprocessing overrides (min_rating, dedup, min_user, min_item), reader
                                  # options (user_col, item_col, time_col, sep), synthetic generator params
    },
    "model": {"name": "sasrec"},
    "loss": {"name": "ce"},
    "train": {
        "batch_size": 128,        # sequences per step
        "optimizer": "adam",      # adam | adamw
        "lr": 1e-3,
        "betas": [0.9, 0.98],
        "weight_decay": 0.0,
        "grad_clip": None,        # max gradient norm
        "epochs": 200,
        "patience": 10,           # epochs without validation NDCG@10 improvement before stopping
        "group_by_length": True,  # batches of similar-length sequences (less padding), loss weighted by tokens
        "window_stride": None,    # sliding windows over histories longer than max_len (None: last max_len only)
        "autocast": None,         # None | bf16 | fp16 (fp16 on CUDA only)
        "seed": 0,
        "max_time_s": None,       # wall-clock budget in seconds for training
        "device": "auto",         # auto | cpu | cuda | cuda:N
        "num_threads": None,      # torch intra-op threads on CPU (None: torch default)
        "checkpoint_every_s": 30.0,   # mid-epoch checkpoint period in seconds (None: epoch ends only)
        "checkpoint_every_steps": None,
        "nan_policy": "stop",     # stop | skip (skip the step, at most max_nan_skips times)
        "max_nan_skips": 10,
        "valid_users": None,      # evaluate validation on a seeded random subset of this many users
    },
    "eval": {
        "ks": [1, 5, 10, 20, 50],
        "batch_size": 1024,       # users per scoring batch
        "filter_seen": True,
        "retrieval": "torch",     # torch | faiss-flat | faiss-ivf | faiss-hnsw
        "retrieval_params": {},
        "recall_sample": 1000,    # users sampled to report an approximate backend's recall vs exact
    },
}
SECTIONS = tuple(DEFAULTS)
OPEN_SECTIONS = ("model", "loss")


class Section(dict):
    """A dict with attribute access (``cfg.train.lr``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self))


_SCI = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _fix_numbers(x: Any, depth: int = 0) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; every such string is meant as a number."""
    if depth > 50:  # a recursive YAML alias (``a: &x [*x]``) would recurse forever
        raise ConfigError("config is nested too deeply (a recursive YAML alias?)")
    if isinstance(x, str) and _SCI.match(x):
        return float(x)
    if isinstance(x, dict):
        return {k: _fix_numbers(v, depth + 1) for k, v in x.items()}
    if isinstance(x, list):
        return [_fix_numbers(v, depth + 1) for v in x]
    return x


class Config:
    """The resolved configuration: one ``Section`` per name in ``SECTIONS``."""

    def __init__(self, tree: dict[str, Any] | None = None) -> None:
        merged = copy.deepcopy(DEFAULTS)
        for sec, values in _fix_numbers(tree or {}).items():
            if sec not in DEFAULTS:
                raise ConfigError(f"unknown config section {sec!r}{_hint(sec, SECTIONS)}; "
                                  f"sections: {', '.join(SECTIONS)}")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section {sec!r} must be a mapping, got {type(values).__name__}")
            if sec in OPEN_SECTIONS and "name" in values and values["name"] != merged[sec]["name"]:
                merged[sec] = {"name": values["name"]}  # another model/loss: drop the old one's params
            for key, v in values.items():
                if sec not in OPEN_SECTIONS and key not in DEFAULTS[sec]:
                    raise ConfigError(f"unknown key {sec}.{key}{_hint(key, DEFAULTS[sec])}")
                merged[sec][key] = v
        for sec in SECTIONS:
            setattr(self, sec, Section(merged[sec]))
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        return {sec: getattr(self, sec).to_dict() for sec in SECTIONS}

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Config:
        tree = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else map(_parse_override, overrides)
        for key, value in items:
            _set_dotted(tree, key, value)
        return Config(tree)

    def validate(self) -> None:
        from seqrec.losses.base import LOSSES, build_loss
        from seqrec.models import MODELS

        for sec in OPEN_SECTIONS:
            if not isinstance(getattr(self, sec).get("name"), str):
                raise ConfigError(f"{sec}.name must be a name (a string), got {getattr(self, sec).get('name')!r}")
        _check_params("model", self.model, MODELS)
        build_loss(self.loss.name)  # imports the registry; raises on unknown names
        _check_params("loss", self.loss, LOSSES)
        t = self.train
        for key in ("batch_size", "epochs"):
            if not isinstance(t[key], int) or t[key] < 1:
                raise ConfigError(f"train.{key} must be a positive integer, got {t[key]!r}")
        if not isinstance(t.lr, (int, float)) or isinstance(t.lr, bool) or not math.isfinite(t.lr) or t.lr <= 0:
            raise ConfigError(f"train.lr must be a positive number, got {t.lr!r}")
        if t.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"train.optimizer must be adam or adamw, got {t.optimizer!r}")
        if t.autocast not in (None, "bf16", "fp16"):
            raise ConfigError(f"train.autocast must be null, bf16 or fp16, got {t.autocast!r}")
        if t.nan_policy not in ("stop", "skip"):
            raise ConfigError(f"train.nan_policy must be stop or skip, got {t.nan_policy!r}")
        if not isinstance(self.eval.ks, list) or not all(isinstance(k, int) and k > 0 for k in self.eval.ks):
            raise ConfigError(f"eval.ks must be a list of positive integers, got {self.eval.ks!r}")
        if 10 not in self.eval.ks:
            raise ConfigError("eval.ks must contain 10 (early stopping uses validation NDCG@10)")


def _check_params(section: str, values: Section, registry: dict[str, Any]) -> None:
    name = values.get("name")
    if name not in registry:
        raise ConfigError(f"unknown {section} {name!r}{_hint(str(name), registry)}; "
                          f"known: {', '.join(sorted(registry))}")
    sig = inspect.signature(registry[name].__init__)
    accepted = [p for p in sig.parameters if p not in ("self", "n_items")]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key in values:
        if key != "name" and key not in accepted:
            raise ConfigError(f"unknown key {section}.{key} for {section} {name!r}{_hint(key, accepted)}; "
                              f"valid: {', '.join(accepted)}")


def _hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must look like section.key (e.g. train.lr)")
    if parts[0] not in DEFAULTS:
        raise ConfigError(f"unknown config section {parts[0]!r}{_hint(parts[0], SECTIONS)}")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = nxt
    if parts[0] in OPEN_SECTIONS and parts[1] == "name" and len(parts) == 2 and node.get("name") != value:
        node.clear()  # a new model/loss: the old one's parameters do not apply
    node[parts[-1]] = value


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (``seqrec fit --config NAME``)."""
    root = resources.files("seqrec") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(name_or_path: str | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a packaged config by name (``sasrec-ml-1m-ce``) or a YAML file, then apply overrides.

    ``None`` gives the package's ``default`` config (SASRec on the synthetic default data).
    """
    name_or_path = name_or_path or "default"
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        packaged = resources.files("seqrec") / "configs" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            names = packaged_configs()
            raise ConfigError(f"no config file or packaged config named {name_or_path!r}"
                              f"{_hint(name_or_path, names)}; packaged: {', '.join(names)}")
        path = Path(str(packaged))
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    cfg = Config(read_yaml(path))
    return cfg.with_overrides(overrides) if overrides else cfg
