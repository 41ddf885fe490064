"""``seqrec config``: ``show RUN|NAME`` prints a resolved config; ``keys`` prints the key reference.

The key reference (docs/cli.md, between the ``config-keys`` markers) is generated from the typed
config: every key of ``data``, ``train`` and ``eval`` with its type, default and the comment beside
it in ``seqrec/config.py``, then each registered model's and loss's parameters. ``update_doc``
rewrites the doc; ``tests/test_workflow.py`` fails while the doc is not current.
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path
from typing import Any

import click

from seqrec.cli.options import overrides, plugin_option, set_option

START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"


@click.group("config")
def config() -> None:
    """Print resolved configs and the config key reference."""


@config.command("show")
@click.argument("source", required=False, default=None, metavar="RUN|NAME|FILE")
@set_option()
@plugin_option
def show(source: str | None, sets: tuple[str, ...]) -> None:
    """Print the resolved config (every key, defaults filled in) of a run directory, a packaged config
    or a YAML file (default: the package default) as YAML that `seqrec fit --config FILE` takes."""
    click.echo(resolved_yaml(source, overrides(sets)), nl=False)


@config.command("keys")
def keys() -> None:
    """Print the config key reference (markdown; the table in docs/cli.md)."""
    click.echo(key_reference())


def resolved_yaml(source: str | None, ov: dict[str, Any] | None = None) -> str:
    """The resolved config of a run directory (its config.yaml), a packaged name or a YAML file, as YAML."""
    import yaml

    from seqrec.config import Config, load_config
    from seqrec.rundir import RunDir

    run = RunDir(source) if source else None
    if run is not None and run.path.is_dir():
        if not run.is_run():
            from seqrec.errors import SeqrecError

            raise SeqrecError(f"{run.path} is a directory without config.yaml (not a seqrec run)")
        cfg = Config.from_tree(run.read_config())
        cfg = cfg.with_overrides(ov) if ov else cfg
    else:
        cfg = load_config(source, ov or None)
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- the key reference
def _constraint(meta: Any) -> str:
    for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        if getattr(meta, attr, None) is not None:
            return f" {sign} {getattr(meta, attr)}"
    return ""


def type_text(tp: Any, metadata: list[Any] = ()) -> str:
    """A type hint as a reader writes it: ``int > 0``, ``adam | adamw``, ``list of int > 0``, ``null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        inner = [m for a in args[1:] for m in getattr(a, "metadata", [a])]
        return type_text(args[0], inner)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_text(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    name = getattr(tp, "__name__", str(tp).replace("typing.", ""))
    return name + "".join(_constraint(m) for m in metadata)


def field_comments(cls: type) -> dict[str, str]:
    """{field: its comment} from the class source: the comment at the end of the field's line, after
    the comment lines just above it."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        m = re.match(r"^\s{4}(\w+):.*?(?:#\s*(.*))?$", line)
        if m:
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return out


def _default(value: Any) -> str:
    import yaml

    return "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def key_reference() -> str:
    """The markdown key reference generated from ``seqrec.config`` and the registries."""
    from seqrec.config import FIXED
    from seqrec.registry import LOSSES, MODELS

    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for sec, cls in FIXED.items():
        notes = field_comments(cls)
        for name, f in cls.model_fields.items():
            lines.append(f"| `{sec}.{name}` | {_cell(type_text(f.annotation, f.metadata))} | {_default(f.default)} "
                         f"| {_cell(notes.get(name, ''))} |")
    for sec, registry in (("model", MODELS), ("loss", LOSSES)):
        lines += ["", f"`{sec}.name` picks a registered {registry.kind}; its parameters:", "",
                  f"| {sec} | parameters (default) |", "|---|---|"]
        for name in registry.names():
            fields = registry.schema(name).model_fields
            params = ", ".join(f"`{k}` ({_default(v.default) if not v.is_required() else 'required'})"
                               for k, v in fields.items())
            lines.append(f"| `{name}` | {_cell(params) or '(none)'} |")
    return "\n".join(lines)


def update_doc(path: str | Path = "docs/cli.md") -> bool:
    """Rewrite the key reference between the markers of ``path`` -> True when it changed."""
    from seqrec.io import write_text

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{key_reference()}\n{END}{tail}"
    if new != text:
        write_text(p, new)
    return new != text
