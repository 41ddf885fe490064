"""The ``seqrec`` command: one module per verb group, imported only when used (so ``seqrec --help``
and ``seqrec data stats`` don't pay for torch/faiss imports):

- ``seqrec fit``                    -> seqrec/cli/fit.py
- ``seqrec finetune``               -> seqrec/cli/finetune.py
- ``seqrec evaluate / compare``     -> seqrec/cli/evaluate.py
- ``seqrec recommend``              -> seqrec/cli/recommend.py
- ``seqrec data …``                 -> seqrec/cli/data.py
- ``seqrec index …``                -> seqrec/cli/index.py
- ``seqrec plan``                   -> seqrec/cli/plan.py
- ``seqrec bench …``                -> seqrec/cli/bench.py
- ``seqrec config show / keys``     -> seqrec/cli/config.py
- ``seqrec tune``                   -> seqrec/cli/tune.py
- ``seqrec export``                 -> seqrec/cli/export.py
- ``seqrec serve``                  -> seqrec/cli/serve.py (no torch import)

Nothing below this package imports it. User-facing errors (``SeqrecError``) and OS errors print one
line on stderr and exit 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from seqrec import __version__


class LazyGroup(click.Group):
    """A click group whose sub-commands are ``"module:attribute"`` strings imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


VERBS = {"fit": "fit:fit", "evaluate": "evaluate:evaluate", "compare": "evaluate:compare",
         "recommend": "recommend:recommend", "data": "data:data", "index": "index:index",
         "plan": "plan:plan", "bench": "bench:bench", "config": "config:config", "tune": "tune:tune",
         "export": "export:export", "serve": "serve:serve",
         "finetune": "finetune:finetune"}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             lazy={verb: f"seqrec.cli.{target}" for verb, target in VERBS.items()})
@click.version_option(__version__, prog_name="seqrec")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (drawn only when stderr is a terminal anyway).")
def cli(quiet: bool) -> None:
    """Train, evaluate and serve transformer sequential recommenders."""
    from seqrec.progress import set_quiet

    set_quiet(quiet)


def one_line(text: str) -> str:
    """``text`` as one line (lines joined; a very long one cut at a word boundary, never mid-word)."""
    from seqrec.errors import shorten

    return shorten(text, 1000)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"warning: {one_line(str(message))}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    from seqrec.errors import SeqrecError

    warnings.formatwarning = _one_line_warning  # a warning is one line on stderr, like an error
    try:
        from seqrec.registry import load_plugins

        load_plugins()  # $SEQREC_PLUGINS; --plugin options load theirs while parsing
        rv = cli.main(args=argv, prog_name="seqrec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return 2
    except SeqrecError as e:
        click.echo(f"error: {one_line(e)}", err=True)
        return 2
    except (OSError, UnicodeDecodeError, MemoryError) as e:
        click.echo(f"error: {one_line(f'{type(e).__name__}: {e}')}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
