"""Benchmarks (`seqrec bench …`): each writes a Markdown table, a PNG and DIR/results.json."""
