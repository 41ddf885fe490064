"""One registry kind for everything built by name: losses, models, retrieval backends.

    LOSSES.register("my_loss")(MyLoss)          # or @LOSSES.register("my_loss") on the class
    LOSSES.build("sce", n_buckets=256)          # parameters checked against the constructor
    LOSSES.names()                              # for CLI help and did-you-mean

Built-ins are registered lazily as ``"module:attribute"`` strings, so a name is known (and a typo is
refused with a did-you-mean) without importing torch. Installed packages add entries through the
entry-point groups ``seqrec.losses``, ``seqrec.models`` and ``seqrec.retrievers``; a module that is
importable but not installed is loaded with ``--plugin MODULE`` or ``SEQREC_PLUGINS=mod1,mod2``.

A constructor's parameters are validated by a pydantic model generated from its signature (type
hints and defaults), so ``build`` and the config loader give the same one-line errors.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import typing
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import pydantic

from seqrec.errors import ConfigError

PLUGIN_ENV = "SEQREC_PLUGINS"


def did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    word, choices = str(word), [str(c) for c in choices]
    close = difflib.get_close_matches(word, choices, n=1)
    if not close:  # 'sce_union' -> 'sce': a name with something appended
        close = sorted((c for c in choices if len(c) >= 2 and word.startswith(c)), key=len)[-1:]
    return f" (did you mean {close[0]!r}?)" if close else ""


_MEMBERS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _is_member(tag: Any) -> bool:
    return tag in _MEMBERS or (isinstance(tag, str) and tag.startswith("literal["))


def describe_error(e: pydantic.ValidationError, prefix: str) -> str:
    """The first error of a pydantic validation as one line: ``prefix.key: message, got value``."""
    errors = e.errors()
    err = errors[0]
    # a union (``int | Literal["auto"]``) fails once per member, each tagged with the member's type
    # ("int", "literal['auto']"); two bad keys of one section are tagged with their key names instead
    field = err["loc"][:-1]
    members = [x for x in errors if x["loc"][:-1] == field and _is_member(x["loc"][-1])] if field else []
    if len(members) > 1 and "input" in err:
        loc = ".".join(str(p) for p in (prefix, *field) if p != "")
        wanted = [x["ctx"]["expected"] if x["type"] == "literal_error" else _MEMBERS.get(x["loc"][-1], x["loc"][-1])
                  for x in members]
        choices = [c for x in members if x["type"] == "literal_error"
                   for c in re.findall(r"'([^']*)'", x["ctx"]["expected"])]
        return f"{loc}: expected {' or '.join(wanted)}, got {err['input']!r}{did_you_mean(err['input'], choices)}"
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc}"
    if err["type"] == "value_error":  # our own validators' messages are complete sentences
        return f"{loc}: {err['ctx']['error']}"
    msg = err["msg"][0].lower() + err["msg"][1:]
    got = f", got {err['input']!r}" if "input" in err else ""
    if err["type"] == "literal_error":
        got += did_you_mean(err.get("input"), re.findall(r"'([^']*)'", err["ctx"]["expected"]))
    return f"{loc}: {msg}{got}"


class Registry:
    """Named constructors of one kind (``kind`` = "loss", "model", "retrieval backend").

    ``skip``: constructor parameters that come from the data, not the config (``n_items``).
    ``builtins``: name -> ``"module:attribute"``, imported on first use.
    """

    def __init__(self, kind: str, group: str, skip: tuple[str, ...] = (),
                 builtins: dict[str, str] | None = None) -> None:
        self.kind, self.group, self.skip = kind, group, skip
        self._entries: dict[str, Any] = dict(builtins or {})   # name -> class, or "module:attribute" until used
        self._schemas: dict[str, type[pydantic.BaseModel]] = {}
        self._entry_points_read = False

    # ---------------------------------------------------------------- registration
    def register(self, name: str, obj: Any = None) -> Any:
        """``register(name, cls)``, or ``@register(name)`` as a class decorator. The class's ``name``
        attribute is set to ``name``. Registering a taken name replaces it (a plug-in may override)."""
        if obj is None:
            return lambda cls: self.register(name, cls)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if isinstance(obj, type):
            obj.name = name
        self._entries[name] = obj
        self._schemas.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plug-in's tests clean up with it); unknown names are ignored."""
        self._entries.pop(name, None)
        self._schemas.pop(name, None)

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for ep in metadata.entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep)

    # ---------------------------------------------------------------- lookup
    def names(self) -> list[str]:
        """Every registered name (built-ins, entry points, plug-ins), sorted."""
        self._read_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def check_name(self, name: Any, where: str | None = None) -> str:
        """``name`` if registered, else a ConfigError with a did-you-mean and the known names."""
        if not isinstance(name, str) or name not in self.names():
            where = f"{where}: " if where else ""
            raise ConfigError(f"{where}unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                              f"known: {', '.join(self.names())}")
        return name

    def get(self, name: str) -> Any:
        """The class registered as ``name`` (imported on first use)."""
        self.check_name(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attr = entry.split(":")
            entry = getattr(importlib.import_module(module), attr)
        elif isinstance(entry, metadata.EntryPoint):
            try:
                entry = entry.load()
            except Exception as e:  # a broken plug-in must not be confused with a typo
                raise ConfigError(f"{self.kind} {name!r} (entry point {entry.value}) failed to load: "
                                  f"{type(e).__name__}: {e}") from None
        if isinstance(entry, type):
            entry.name = name
        self._entries[name] = entry
        return entry

    # ---------------------------------------------------------------- parameters
    def schema(self, name: str) -> type[pydantic.BaseModel]:
        """A pydantic model of ``name``'s constructor parameters (extra keys forbidden)."""
        if name not in self._schemas:
            self._schemas[name] = _signature_model(self.get(name), self.skip, f"{name}_params")
        return self._schemas[name]

    def params(self, name: str) -> list[str]:
        return list(self.schema(name).model_fields)

    def check_params(self, name: str, params: dict[str, Any], where: str | None = None) -> dict[str, Any]:
        """``params`` validated against ``name``'s constructor -> the given keys with typed values.

        Unknown keys get a did-you-mean; values are checked against the type hints. Keys left out
        keep the constructor's default (they are not filled in here)."""
        where = where or self.kind
        schema = self.schema(name)
        fields = list(schema.model_fields)
        renamed = getattr(self.get(name), "renamed", {})  # old parameter name -> new one
        for key in params:
            if key in renamed:
                raise ConfigError(f"{where}.{key} was renamed to {where}.{renamed[key]}")
            if key not in fields and not schema.model_config.get("extra") == "allow":
                raise ConfigError(f"unknown key {where}.{key} for {self.kind} {name!r}{did_you_mean(key, fields)}; "
                                  f"valid: {', '.join(fields) or '(none)'}")
        try:
            typed = schema.model_validate(params)
        except pydantic.ValidationError as e:
            raise ConfigError(describe_error(e, where)) from None
        return {k: getattr(typed, k) if k in fields else v for k, v in params.items()}

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        """An instance of ``name``: ``cls(*args, **params)`` after the parameter check."""
        cls = self.get(name)
        return cls(*args, **self.check_params(name, params))


def _signature_model(cls: Any, skip: tuple[str, ...], title: str) -> type[pydantic.BaseModel]:
    """Fields from the constructor's signature; a class whose constructor takes only ``**params``
    declares them in a ``defaults`` dict instead (the retrieval backends)."""
    forbid = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    init = cls.__init__ if isinstance(cls, type) else cls
    if isinstance(getattr(cls, "defaults", None), dict):
        return pydantic.create_model(title, __config__=forbid, **{k: (Any, v) for k, v in cls.defaults.items()})
    sig = inspect.signature(init)
    try:
        hints = typing.get_type_hints(init, include_extras=True)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for p in list(sig.parameters.values()):
        if p.name in ("self", *skip) or p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    cfg = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True)
    return pydantic.create_model(title, __config__=cfg, **fields)


# ---------------------------------------------------------------- the three registries

LOSSES = Registry("loss", "seqrec.losses", builtins={
    "ce": "seqrec.losses.ce:FullCE",
    "ce_chunked": "seqrec.losses.ce_chunked:ChunkedCE",
    "bce": "seqrec.losses.sampled:BCE",
    "gbce": "seqrec.losses.sampled:GBCE",
    "sampled_softmax": "seqrec.losses.sampled:SampledSoftmax",
    "sce": "seqrec.losses.sce:SCE",
    "rece": "seqrec.losses.rece:RECE",
})
MODELS = Registry("model", "seqrec.models", skip=("n_items",), builtins={
    "sasrec": "seqrec.models.transformer:SASRec",
    "bert4rec": "seqrec.models.transformer:BERT4Rec",
    "gru4rec": "seqrec.models.gru:GRU4Rec",
    "pop": "seqrec.models.pop:Pop",
})
RETRIEVERS = Registry("retrieval backend", "seqrec.retrievers", builtins={
    "torch": "seqrec.retrieval.exact:TorchRetriever",
    "faiss-flat": "seqrec.retrieval.faiss_index:FaissFlatRetriever",
    "faiss-ivf": "seqrec.retrieval.faiss_ivf:FaissIVFRetriever",
    "faiss-hnsw": "seqrec.retrieval.faiss_index:FaissHNSWRetriever",
})


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import ``modules`` and those named in ``$SEQREC_PLUGINS`` (comma-separated); each registers
    what it defines. Returns the modules imported. An unimportable module is a one-line ConfigError."""
    env = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    done = []
    for mod in [*env, *modules]:
        try:
            importlib.import_module(mod)
        except Exception as e:
            raise ConfigError(f"plug-in {mod!r} failed to import: {type(e).__name__}: {e}") from None
        done.append(mod)
    return done

__all__ = ["LOSSES", "MODELS", "PLUGIN_ENV", "RETRIEVERS", "Registry", "did_you_mean", "load_plugins"]
