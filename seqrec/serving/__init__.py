"""Serving a bundle written by ``seqrec export``: ``Recommender.from_bundle(path).recommend(...)``.

Needs numpy, polars, onnxruntime (and faiss for an approximate index) -- never torch: nothing on
this package's import path imports it (``tests/test_serving.py`` checks in a subprocess where
``import torch`` fails). ``seqrec serve`` (``seqrec.serving.http``) puts it behind HTTP.
"""

from __future__ import annotations

from seqrec.serving.recommender import Recommender

__all__ = ["Recommender"]
