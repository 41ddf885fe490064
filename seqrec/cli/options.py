"""Options shared by several commands: ``--set KEY=VALUE`` (one grammar) and ``--plugin MODULE``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def _load_plugins(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from seqrec.registry import load_plugins

    if value:
        load_plugins(value)
    return value


def plugin_option(f: Callable) -> Callable:
    """``--plugin MODULE`` (repeatable): import a module that registers losses, models or retrieval
    backends before anything is parsed or built (also ``$SEQREC_PLUGINS=mod1,mod2``)."""
    return click.option("--plugin", "plugins", multiple=True, metavar="MODULE", is_eager=True,
                        expose_value=False, callback=_load_plugins,
                        help="Import MODULE first (it registers losses, models or retrieval backends); "
                             "repeatable. Also $SEQREC_PLUGINS=mod1,mod2.")(f)


def set_option(help_text: str = "Config override, e.g. train.lr=1e-3 (repeatable).") -> Callable:
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=help_text)


def overrides(sets: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    """``--set`` strings -> {dotted key: value} (the config's parser); with ``allowed`` every key must
    start with one of those prefixes (e.g. ``("eval.",)`` for commands that only evaluate)."""
    from seqrec.config import parse_override
    from seqrec.errors import ConfigError

    out = dict(parse_override(s) for s in sets)
    bad = [k for k in out if allowed and not k.startswith(allowed)]
    if bad:
        hint = f" (a retrieval parameter is eval.retrieval_params.{bad[0]}=...)" if "." not in bad[0] else ""
        raise ConfigError(f"--set {bad[0]}: this command only takes {' / '.join(a + '*' for a in allowed)} "
                          f"keys{hint}")
    return out


def retrieval_option(f: Callable) -> Callable:
    """``--retrieval NAME``: a retrieval backend (names from the registry; the old ``--backend`` is refused)."""
    def names_help() -> str:
        from seqrec.registry import RETRIEVERS

        return " | ".join(RETRIEVERS.names())

    def renamed(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            raise click.UsageError("--backend was renamed to --retrieval")

    f = click.option("--backend", hidden=True, expose_value=False, callback=renamed)(f)
    return click.option("--retrieval", default=None, help=f"Retrieval backend: {names_help()}.")(f)
