"""The ``seqrec`` command. Sub-command groups live next to the code they drive:

- ``seqrec data …``  -> seqrec/data/cli.py
- ``seqrec fit / evaluate / recommend`` -> seqrec/commands.py
- ``seqrec bench …`` -> seqrec/bench/cli.py
- ``seqrec index …`` -> seqrec/retrieval/cli.py
- ``seqrec plan``    -> seqrec/plan.py

User-facing errors (``SeqrecError``) and OS errors print one line on stderr and exit 2.
"""

from __future__ import annotations

import sys

import click

from seqrec import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="seqrec")
def cli() -> None:
    """Train, evaluate and serve transformer sequential recommenders."""


def _register() -> None:
    import importlib

    from seqrec import commands
    from seqrec.bench.cli import bench

    for cmd in commands.COMMANDS:
        cli.add_command(cmd)
    cli.add_command(bench)
    for mod, attr in (("seqrec.data.cli", "data"), ("seqrec.retrieval.cli", "index"), ("seqrec.plan", "plan")):
        try:  # TEMPORARY while modules are being written
            cli.add_command(getattr(importlib.import_module(mod), attr))
        except (ModuleNotFoundError, AttributeError):
            pass


_register()


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
