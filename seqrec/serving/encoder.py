"""The bundle's user encoder at serving time: model input rows and the encoder call, without torch.

``model_input`` builds what ``seqrec.evaluation.ranking.model_inputs`` builds: causal models read a
history's last ``max_len`` items, BERT4Rec its last ``max_len - 1`` items and then its mask token;
rows are left-padded with 0 to the batch's longest row (the encoders are padding-invariant).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from seqrec.errors import DataError, SeqrecError, shorten

EncodeFn = Callable[[np.ndarray], np.ndarray]


def model_input(seqs: Sequence[np.ndarray], max_len: int, mask_token: int | None = None) -> np.ndarray:
    """Histories as model ids (1..C, time order, each non-empty) -> int64 [B, W], W <= ``max_len``."""
    keep = max_len if mask_token is None else max_len - 1
    tails = [np.asarray(s, dtype=np.int64)[-keep:] if keep > 0 else np.zeros(0, np.int64) for s in seqs]
    width = max((len(t) for t in tails), default=0) + (mask_token is not None)
    out = np.zeros((len(tails), max(width, 1)), dtype=np.int64)
    end = width - (mask_token is not None)
    for row, t in enumerate(tails):
        out[row, end - len(t):end] = t
    if mask_token is not None:
        out[:, -1] = mask_token
    return out


def load_encoder(path: Path, format: str, threads: int = 0) -> EncodeFn:
    """The encoder at ``path`` as a function int64 [B, L] -> float32 [B, d]. "onnx" runs on
    onnxruntime's CPU provider (``threads`` intra-op threads, 0 = its default); "torchscript" needs
    torch, imported only here."""
    if format == "onnx":
        return _onnx(path, threads)
    if format == "torchscript":
        return _torchscript(path, threads)
    raise DataError(f"{path}: unknown encoder format {format!r}")


def _onnx(path: Path, threads: int) -> EncodeFn:
    try:
        import onnxruntime as ort
    except ImportError:
        raise SeqrecError("serving an ONNX bundle needs onnxruntime: pip install 'seqrec[serve]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # errors only: ORT's shape-inference notes are not the user's business
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for unreadable models
        raise DataError(f"{path}: cannot load the ONNX encoder ({shorten(e, 160)})") from None
    name = session.get_inputs()[0].name

    def encode(items: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(items, dtype=np.int64)})[0].astype(np.float32, copy=False)

    return encode


def _torchscript(path: Path, threads: int) -> EncodeFn:
    try:
        import torch
    except ImportError:
        raise SeqrecError("a TorchScript bundle needs torch to serve; export with --format onnx instead") from None
    if threads:
        torch.set_num_threads(int(threads))
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def encode(items: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))).float().numpy()

    return encode
