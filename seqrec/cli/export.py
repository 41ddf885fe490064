"""``seqrec export``: a trained run -> a serving bundle (``seqrec.export``)."""

from __future__ import annotations

import click

from seqrec.cli.options import overrides, plugin_option, retrieval_option, set_option


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="Encoder format: onnx (served without torch) or torchscript (needs torch to serve).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory (new or empty).")
@retrieval_option
@set_option("Retrieval parameter of the shipped index, e.g. eval.retrieval_params.nprobe=16 (repeatable).")
@plugin_option
def export(run_dir, fmt, out, retrieval, sets) -> int:
    """Write RUN_DIR's user encoder, item table (raw ids), retrieval index, popularity list and a
    manifest (versions, catalog fingerprint, checksums, the run's metrics) to a bundle for
    ``seqrec serve`` / ``seqrec.serving.Recommender``."""
    from seqrec.export import export_bundle

    ov = overrides(sets, allowed=("eval.retrieval_params",))
    params = {k.removeprefix("eval.retrieval_params."): v for k, v in ov.items()} or None
    path = export_bundle(run_dir, out, format=fmt, retrieval=retrieval, retrieval_params=params)
    click.echo(f"wrote the {fmt} bundle to {path}", err=True)
    return 0
