"""Write the user encoder (``graph.UserEncoder``) as ONNX or TorchScript, then check it.

ONNX: torch 2.13's TorchScript-based exporter (``dynamo=False``) needs nothing beyond ``onnx``; the
``torch.export``-based one (``dynamo=True``) needs ``onnxscript`` and is tried when the first fails.
Batch and length axes are dynamic (length 1..max_len). The check encodes up to ``CHECK_USERS`` of
the run's users both ways and refuses the export when they differ by more than ``CHECK_TOL``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.store import SequenceStore
from seqrec.errors import SeqrecError, shorten
from seqrec.export.graph import UserEncoder
from seqrec.models.base import Encoder
from seqrec.serving.layout import INPUT_NAME, OUTPUT_NAME

OPSET = 17
CHECK_USERS = 256
CHECK_TOL = 1e-4  # float32 encoders agree to ~1e-6; beyond this the graph is wrong, not rounded


def example_input(model: Encoder, batch: int = 2, width: int = 8) -> torch.Tensor:
    """A left-padded int64 [batch, width] input (BERT4Rec: mask token last) to trace with."""
    width = max(1, min(width, model.max_len))
    x = (torch.arange(batch * width).reshape(batch, width) % model.n_items) + 1
    x[0, : width // 2] = 0  # padding in the first row, so the traced graph sees it
    if not model.causal:
        x[:, -1] = model.mask_token
    return x


def write_encoder(model: Encoder, path: Path, format: str) -> dict[str, Any]:
    """Export ``UserEncoder(model)`` to ``path`` -> facts for the manifest (exporter, opset)."""
    module = UserEncoder(model).eval()
    x = example_input(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer notes: the check below is the judge
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(module, (x,), check_trace=False), str(path))
            return {"exporter": "torch.jit.trace"}
        errors = []
        for dynamo in (False, True):
            try:
                _onnx_export(module, x, path, dynamo, model.max_len)
                return {"exporter": "torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export",
                        "opset": OPSET}
            except Exception as e:  # each exporter fails in its own way; report both
                errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {shorten(e, 150)}")
    raise SeqrecError(f"cannot export the encoder to ONNX ({'; '.join(errors)})")


def _onnx_export(module: torch.nn.Module, x: torch.Tensor, path: Path, dynamo: bool, max_len: int) -> None:
    kw: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": OPSET}
    if dynamo:
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=max_len)
        torch.onnx.export(module, (x,), str(path), dynamo=True, dynamic_shapes={INPUT_NAME: {0: batch, 1: length}},
                          **kw)
    else:
        torch.onnx.export(module, (x,), str(path), dynamo=False, **kw,
                          dynamic_axes={INPUT_NAME: {0: "batch", 1: "length"}, OUTPUT_NAME: {0: "batch"}})


def check_encoder(model: Encoder, history: SequenceStore, path: Path, format: str) -> dict[str, Any]:
    """Encode up to ``CHECK_USERS`` users (evenly spread over ``history``'s non-empty rows) with the
    written encoder and with ``user_vectors`` -> {"users", "max_abs_diff"}; raise beyond ``CHECK_TOL``."""
    from seqrec.evaluation import user_vectors
    from seqrec.serving.encoder import load_encoder, model_input

    rows = np.flatnonzero(history.lengths > 0)
    rows = rows[np.linspace(0, len(rows) - 1, min(CHECK_USERS, len(rows))).astype(np.int64)] if len(rows) else rows
    if not len(rows):
        return {"users": 0, "max_abs_diff": None}
    sub = history.subset(rows)
    want = user_vectors(model, sub, model.max_len).numpy()
    encode = load_encoder(path, format, threads=1)
    seqs = [sub.items[sub.offsets[i]:sub.offsets[i + 1]] for i in range(len(sub))]
    mask = None if model.causal else int(model.mask_token)
    got = np.concatenate([encode(model_input(seqs[i:i + 64], model.max_len, mask)) for i in range(0, len(seqs), 64)])
    diff = float(np.abs(got - want).max())
    if not diff <= CHECK_TOL:
        raise SeqrecError(f"the exported encoder disagrees with the model (max |diff| {diff:.2e} > {CHECK_TOL:g} "
                          f"on {len(rows)} users); please report this model")
    return {"users": int(len(rows)), "max_abs_diff": diff}
