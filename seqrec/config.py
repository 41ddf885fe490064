"""Typed configuration (pydantic): sections data, model, loss, train, eval, loaded from YAML plus
``KEY=VALUE`` overrides, validated completely before any data loads or anything is written.

``data``, ``train`` and ``eval`` have fixed keys (unknown keys are errors with a did-you-mean).
``model`` and ``loss`` hold ``name`` plus the constructor parameters of the named class, checked
against that constructor's signature through ``seqrec.registry`` (so a plug-in's parameters are
checked too). ``eval.retrieval`` names a retrieval backend, ``eval.retrieval_params`` its parameters.
Renamed keys (``RENAMED``, and a registered class's ``renamed``) give a one-line error naming the new key.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from seqrec.errors import ConfigError, shorten
from seqrec.registry import LOSSES, MODELS, RETRIEVERS, describe_error, did_you_mean

PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosFloat = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Bool = Annotated[bool, Field(strict=True)]

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "mps")

# an old key is refused, naming the new one (a registered class lists its own in ``renamed``)
RENAMED = {"train.max_time": "train.max_time_s"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class DataConfig(_Section):
    dataset: str = "synthetic"   # name (card in datasets/), prepared dir, or file path
    data_dir: str | None = None  # where named datasets live (env SEQREC_DATA, else a user cache dir)
    format: str | None = None    # reader for a file path (see `seqrec data --help`)
    split: Literal["leave_one_out", "global_temporal"] | None = None  # None: the card's default
    strict: Bool = False         # data warnings (dropped rows, suspicious values) become errors
    # card preprocessing overrides (min_rating, dedup, min_user, min_item), reader options
    # (user_col, item_col, time_col, sep), synthetic generator params
    options: dict[str, Any] = {}


class TrainConfig(_Section):
    batch_size: PosInt = 128                  # sequences per step
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: PosFloat = 1e-3
    betas: Annotated[list[NonNegFloat], Field(min_length=2, max_length=2)] = [0.9, 0.98]
    weight_decay: NonNegFloat = 0.0
    grad_clip: PosFloat | None = None          # max gradient norm
    epochs: PosInt = 200
    patience: PosInt = 10                      # epochs without validation NDCG@10 gain before stopping
    group_by_length: Bool = True               # batches of similar-length sequences, loss weighted by tokens
    window_stride: PosInt | None = None        # sliding windows over histories longer than max_len
    autocast: Literal["bf16", "fp16"] | None = None  # fp16 on CUDA only
    seed: NonNegInt = 0
    max_time_s: PosFloat | None = None         # wall-clock budget for training, seconds
    device: str = "auto"                       # auto | cpu | cuda | cuda:N | mps
    num_threads: PosInt | None = None          # torch intra-op threads on CPU (None: torch default)
    checkpoint_every_s: PosFloat | None = 30.0  # mid-epoch checkpoint period (None: epoch ends only)
    checkpoint_every_steps: PosInt | None = None
    nan_policy: Literal["stop", "skip"] = "stop"  # skip: drop the step, at most max_nan_skips times
    max_nan_skips: NonNegInt = 10
    # validation users: "auto" = all up to 50,000, else a seeded sample of 50,000
    # (seqrec.evaluation.defaults.VALID_USERS_AUTO); N = a seeded sample of N; "all"/None = every user
    valid_users: PosInt | Literal["auto", "all"] | None = "auto"
    # experiment trackers (seqrec.training.loggers); each is an extra: pip install 'seqrec[tensorboard]'
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = []
    tracking_uri: str | None = None  # None: trackers write inside the run dir; a dir, or an MLflow URI

    @pydantic.field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE.match(v):
            hint = " (did you mean 'cuda'?)" if v.lower() in ("gpu", "nvidia") else did_you_mean(v, DEVICES)
            raise ValueError(f"{v!r} is not a device{hint}; use auto, cpu, cuda, cuda:N or mps")
        return v


class EvalConfig(_Section):
    ks: list[PosInt] = [1, 5, 10, 20, 50]
    batch_size: PosInt = 1024                  # users per scoring batch
    filter_seen: Bool = True
    # a retrieval backend (seqrec.registry.RETRIEVERS), or "auto": exact torch below 200,000 items,
    # faiss-ivf from there on (seqrec.evaluation.defaults.RETRIEVAL_AUTO_ITEMS)
    retrieval: str = "auto"
    retrieval_params: dict[str, Any] = {}      # the named backend's parameters (none with "auto")
    recall_sample: NonNegInt = 1000            # users sampled to report an approximate backend's recall
    encode_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: faster, metrics change slightly

    @pydantic.field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if 10 not in v:
            raise ValueError("must contain 10 (early stopping uses validation NDCG@10)")
        return v


class NamedConfig(BaseModel):
    """``name`` of a registered class plus its constructor parameters (extra keys)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class Config(BaseModel):
    """The resolved configuration. Build it with ``Config.from_tree`` / ``load_config``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    data: DataConfig = Field(default_factory=DataConfig)
    model: NamedConfig = Field(default_factory=lambda: NamedConfig(name="sasrec"))
    loss: NamedConfig = Field(default_factory=lambda: NamedConfig(name="ce"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @pydantic.model_validator(mode="after")
    def _registered(self) -> Config:
        e = self.eval
        named = (("model", MODELS, self.model), ("loss", LOSSES, self.loss))
        for sec, registry, section in named:  # every name first: a typo costs no import
            registry.check_name(section.name, where=f"{sec}.name")
        if e.retrieval == "auto":
            if e.retrieval_params:
                raise ConfigError("eval.retrieval_params need a named backend (eval.retrieval=auto picks "
                                  "torch or faiss-ivf by catalog size); set eval.retrieval too")
        else:
            RETRIEVERS.check_name(e.retrieval, where="eval.retrieval")
            e.retrieval_params = RETRIEVERS.check_params(e.retrieval, e.retrieval_params,
                                                         where="eval.retrieval_params")
        for sec, registry, section in named:
            for key, value in registry.check_params(section.name, section.params, where=sec).items():
                setattr(section, key, value)
            _probe(registry, section)
        return self

    @classmethod
    def from_tree(cls, tree: dict[str, Any] | None = None) -> Config:
        """Defaults, updated by ``tree`` (section -> key -> value); raises ConfigError (one line)."""
        merged = merge(DEFAULT_TREE, tree or {})
        try:
            return cls.model_validate(merged)
        except pydantic.ValidationError as e:
            raise ConfigError(describe_error(e, "")) from None

    def to_dict(self) -> dict[str, Any]:
        return {sec: getattr(self, sec).to_dict() for sec in SECTIONS}

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Config:
        """A new Config with ``KEY=VALUE`` strings (or a ``{"train.lr": 1e-3}`` dict) applied."""
        tree = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        for key, value in items:
            set_dotted(tree, key, value)
        return Config.from_tree(tree)


def _probe(registry: Any, named: NamedConfig) -> None:
    """Run the constructor's own value checks now (a model on the meta device: no memory)."""
    import torch

    with torch.device("meta"):
        registry.build(named.name, *((2,) if registry is MODELS else ()), **named.params)


SECTIONS = ("data", "model", "loss", "train", "eval")
FIXED: dict[str, type[_Section]] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
DEFAULT_TREE: dict[str, Any] = {sec: (FIXED[sec]().to_dict() if sec in FIXED else {"name": n})
                                for sec, n in (("data", ""), ("model", "sasrec"), ("loss", "ce"),
                                               ("train", ""), ("eval", ""))}


def merge(base: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated section by section with ``tree``; unknown sections/keys and renamed keys are
    refused; naming another model/loss drops the old one's parameters."""
    import copy

    merged = copy.deepcopy(base)
    for sec, values in _fix_numbers(tree).items():
        if sec not in SECTIONS:
            raise ConfigError(f"unknown config section {sec!r}{did_you_mean(sec, SECTIONS)}; "
                              f"sections: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {sec!r} must be a mapping, got {type(values).__name__}")
        if sec in FIXED:
            fields = list(FIXED[sec].model_fields)
            for key in values:
                if f"{sec}.{key}" in RENAMED:
                    raise ConfigError(f"{sec}.{key} was renamed to {RENAMED[f'{sec}.{key}']}")
                if key not in fields:
                    raise ConfigError(f"unknown key {sec}.{key}{did_you_mean(key, fields)}")
        elif "name" in values and values["name"] != merged[sec].get("name"):
            merged[sec] = {}
        merged[sec].update(values)
    return merged


_SCI = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def upgrade_saved(tree: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml written by an older seqrec, in today's key names. Only for saved runs: a run
    directory must stay loadable and resumable, while a key a user types under an old name is refused."""
    import copy

    tree = copy.deepcopy(tree)
    for old, new in RENAMED.items():
        sec, key = old.split(".")
        if isinstance(tree.get(sec), dict) and key in tree[sec]:
            tree[sec][new.split(".")[1]] = tree[sec].pop(key)
    for sec, fields in (("train", ("loggers", "tracking_uri")),):  # keys added since: their defaults
        for key in fields if isinstance(tree.get(sec), dict) else ():
            tree[sec].setdefault(key, DEFAULT_TREE[sec][key])
    named = [(tree.get("model"), MODELS), (tree.get("loss"), LOSSES)]
    ev = tree.get("eval")
    if isinstance(ev, dict) and isinstance(ev.get("retrieval_params"), dict):
        named.append(({"name": ev.get("retrieval", "torch"), **ev["retrieval_params"]}, RETRIEVERS))
    for section, registry in named:
        if not isinstance(section, dict) or section.get("name") not in registry:
            continue
        for old, new in getattr(registry.get(section["name"]), "renamed", {}).items():
            if old in section:
                section[new] = section.pop(old)
        if registry is RETRIEVERS:
            ev["retrieval_params"] = {k: v for k, v in section.items() if k != "name"}
    return tree


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


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ("train.lr", 0.001): the one ``KEY=VALUE`` grammar of every command
    (the value is read as YAML: numbers, true/false, null, [lists], {maps}; else a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r} must look like section.key=value (e.g. train.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, _fix_numbers(value)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"`` (the section must exist)."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must look like section.key (e.g. train.lr)")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"unknown config section {parts[0]!r}{did_you_mean(parts[0], SECTIONS)}; "
                          f"sections: {', '.join(SECTIONS)}")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = nxt
    if parts[0] in ("model", "loss") and parts[1:] == ["name"] and node.get("name") != value:
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
        raise ConfigError(f"{path}: invalid YAML: {shorten(e)}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_tree(name_or_path: str | Path | None = None,
              overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration tree of a packaged config (by name) or a YAML file with ``overrides`` applied,
    unknown and renamed keys refused, values not yet validated (``Config.from_tree`` does that)."""
    name_or_path = str(name_or_path or "default")
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        packaged = resources.files("seqrec") / "configs" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            names = packaged_configs()
            raise ConfigError(f"no config file or packaged config named {name_or_path!r}"
                              f"{did_you_mean(name_or_path, names)}; packaged: {', '.join(names)}")
        path = Path(str(packaged))
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    tree = merge(DEFAULT_TREE, read_yaml(path))
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:  # applied to the tree, so an override may fix what the file alone gets wrong
        set_dotted(tree, key, value)
    return merge(DEFAULT_TREE, tree)


def load_config(name_or_path: str | Path | None = None,
                overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """A packaged config by name (``sasrec-ml-1m-ce``) or a YAML file, then ``overrides`` -> Config.

    ``None`` gives the package's ``default`` config (SASRec on the synthetic default data).
    """
    return Config.from_tree(load_tree(name_or_path, overrides))
