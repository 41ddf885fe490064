"""``export_bundle``: a trained run -> a self-contained serving bundle (``seqrec.serving.layout``).

Everything is written into a temporary directory beside ``out`` and renamed into place at the end,
so a failed export leaves nothing behind. The encoder is checked after it is written: its user
vectors for a sample of the run's users are compared with ``seqrec.evaluation.user_vectors``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from seqrec import __version__
from seqrec.errors import ConfigError, SeqrecError
from seqrec.export.encoder import check_encoder, write_encoder
from seqrec.io import temp_dir_next_to, write_json
from seqrec.serving import layout

FORMATS = tuple(layout.ENCODER_FILES)


def export_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, format: str = "onnx",
                  retrieval: str | None = None, retrieval_params: dict | None = None) -> Path:
    """Write the bundle of the fitted run (or saved model) ``run_dir`` to directory ``out`` -> ``out``.

    ``format``: "onnx" (served by onnxruntime, no torch) or "torchscript" (needs torch to serve).
    ``retrieval``: the retrieval backend to ship (default: the run's ``eval.retrieval``, "auto"
    resolved by catalog size) and ``retrieval_params`` its parameters (default: the run's
    ``eval.retrieval_params`` for its own backend, none for another). ``out`` must not exist or be
    empty.
    """
    from seqrec.api import SeqRec

    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if retrieval is not None:
        from seqrec.registry import RETRIEVERS

        RETRIEVERS.check_name(retrieval, "retrieval")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SeqrecError(f"{out} exists and is not an empty directory; remove it or choose another --out")
    rec = SeqRec.load(run_dir)
    if retrieval is not None and retrieval != rec.cfg_.eval.retrieval:  # another backend: not its params
        rec.set_config({"eval.retrieval": retrieval, "eval.retrieval_params": {}})
    if retrieval_params is not None:
        rec.set_config({"eval.retrieval_params": retrieval_params})
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, done = temp_dir_next_to(out), False
    try:
        manifest = _write_contents(rec, Path(run_dir), tmp, format)
        manifest["files"] = {name: layout.sha256_file(tmp / name) for name in layout.bundle_files(tmp)}
        write_json(tmp / layout.MANIFEST, manifest)
        if out.exists():
            out.rmdir()  # empty (checked above): rename needs the name free
        os.replace(tmp, out)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        for p in made if not done else ():
            with contextlib.suppress(OSError):
                p.rmdir()
    return out


def _write_contents(rec: Any, run_dir: Path, tmp: Path, format: str) -> dict[str, Any]:
    """Encoder, item table, ids, popularity and index into ``tmp`` -> the manifest (without files)."""
    model, data = rec.model_.eval(), rec.data_
    emb = np.ascontiguousarray(rec.item_embeddings(), dtype=np.float32)
    encoder_file = layout.ENCODER_FILES[format]
    info = write_encoder(model, tmp / encoder_file, format)
    info["check"] = check_encoder(model, data.full, tmp / encoder_file, format)
    np.save(tmp / layout.ITEM_EMB, emb)
    pl.DataFrame({"item": data.item_ids[1:]}).write_parquet(tmp / layout.ITEM_IDS)
    np.save(tmp / layout.POPULARITY, np.asarray(data.item_pop[1:], dtype=np.int64))
    retrieval = _write_index(rec, emb, tmp)
    return {
        "format": layout.FORMAT, "format_version": layout.FORMAT_VERSION,
        "versions": _versions(format),
        "model": {"name": rec.cfg_.model.name, "n_items": int(model.n_items), "d": int(emb.shape[1]),
                  "max_len": int(model.max_len), "causal": bool(model.causal),
                  "mask_token": None if model.causal else int(model.mask_token)},
        "encoder": {"format": format, "file": encoder_file, "input": layout.INPUT_NAME,
                    "output": layout.OUTPUT_NAME, **info},
        "catalog": {"fingerprint": data.meta.get("fingerprint"), "n_items": int(emb.shape[0]),
                    "dataset": data.name, "id_file": layout.ITEM_IDS,
                    "id_dtype": str(pl.Series(data.item_ids[1:2]).dtype)},
        "retrieval": retrieval,
        "metrics": _metrics(run_dir),
        "source": str(run_dir.resolve()),
    }


def _write_index(rec: Any, emb: np.ndarray, tmp: Path) -> dict:
    """The retrieval backend's files: none for an exact backend (the item table is searched as it
    is), ``index/`` for an approximate one, tuned as ``seqrec recommend`` tunes it."""
    from seqrec.evaluation.defaults import retrieval_backend
    from seqrec.indexing import model_retriever
    from seqrec.registry import RETRIEVERS
    from seqrec.retrieval.base import embedding_digest

    name = retrieval_backend(rec.cfg_.eval.retrieval, emb.shape[0], emb.shape[1])
    if RETRIEVERS.get(name).exact:
        return {"backend": name, "exact": True, "params": {}}
    retriever = model_retriever(rec.model_, emb, rec.cfg_, rec.path_, None, None, users=rec.data_.full)
    if retriever.exact:  # faiss missing: build_retriever fell back to exact search (with a warning)
        return {"backend": retriever.name, "exact": True, "params": {}}
    retriever.save(tmp / layout.INDEX_DIR, source=embedding_digest(emb))
    return {"backend": retriever.name, "exact": False, "params": retriever.params}


def _metrics(run_dir: Path) -> dict | None:
    """The run's results.json (metrics the run reached), or None for a run without one."""
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def _versions(format: str) -> dict[str, str]:
    import torch

    v = {"seqrec": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": np.__version__, "polars": pl.__version__}
    if format == "onnx":
        import onnx

        v["onnx"] = onnx.__version__
    return v
