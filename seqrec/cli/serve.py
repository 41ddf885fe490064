"""``seqrec serve``: a bundle behind HTTP JSON (``seqrec.serving.http``); never imports torch."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="Encoder threads (0: onnxruntime's default, every core).")
@click.option("--exact", is_flag=True, help="Search the item table exactly even if the bundle ships an index.")
@click.option("--quiet", is_flag=True, help="Do not log each request on stderr.")
def serve(bundle, port, host, threads, exact, quiet) -> int:
    """Answer GET /health, GET /metadata and POST /recommend for BUNDLE (written by seqrec export)."""
    from seqrec.serving import Recommender
    from seqrec.serving.http import make_server

    rec = Recommender.from_bundle(bundle, threads=threads, exact=exact)
    server = make_server(rec, host, port, quiet)
    h, p = server.server_address[:2]
    click.echo(f"serving {bundle} ({rec.n_items} items, {rec.backend} search) on http://{h}:{p}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.server_close()
    return 0
