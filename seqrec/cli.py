"""The ``seqrec`` command. Sub-commands live next to the code they drive and are imported only
when used (so ``seqrec --help`` and ``seqrec data stats`` don't pay for torch/faiss imports):

- ``seqrec data …``  -> seqrec/data/cli.py
- ``seqrec fit / evaluate / compare / recommend`` -> seqrec/commands.py
- ``seqrec bench …`` -> seqrec/bench/{data,losses,quality,retrieval}.py
- ``seqrec index …`` -> seqrec/retrieval/cli.py
- ``seqrec plan``    -> seqrec/plan.py

User-facing errors (``SeqrecError``) and OS errors print one line on stderr and exit 2.
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             lazy={"fit": "seqrec.commands:fit", "evaluate": "seqrec.commands:evaluate",
                   "recommend": "seqrec.commands:recommend",
                   "compare": "seqrec.commands:compare", "data": "seqrec.data.cli:data",
                   "bench": "seqrec.bench.cli:bench", "index": "seqrec.retrieval.cli:index",
                   "plan": "seqrec.plan:plan"})
@click.version_option(__version__, prog_name="seqrec")
def cli() -> None:
    """Train, evaluate and serve transformer sequential recommenders."""


def main(argv: list[str] | None = None) -> int:
    from seqrec.errors import SeqrecError

    try:
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
        click.echo(f"error: {e}", err=True)
        return 2
    except (OSError, UnicodeDecodeError, MemoryError) as e:
        click.echo(f"error: {type(e).__name__}: {e}".splitlines()[0], err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
