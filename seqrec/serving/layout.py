"""A bundle's layout: file names, the manifest, checksums. Shared by ``seqrec.export`` (writes) and
``seqrec.serving`` (reads); imports neither torch nor anything that does.

A bundle is a directory:

- ``manifest.json``: format version, library versions, model facts (``max_len``, ``causal``,
  ``mask_token``, ``d``, ``n_items``), catalog fingerprint, retrieval backend, the run's metrics,
  the export check, and the sha256 of every other file;
- ``encoder.onnx`` (or ``encoder.pt``, TorchScript): items int64 [B, L] -> user float32 [B, d];
- ``item_emb.npy``: the item table float32 [C, d], row c = catalog item c;
- ``item_ids.parquet``: column ``item``, the raw item id of each catalog row (the id mapping);
- ``popularity.npy``: int64 [C], training interaction counts (the cold-user fallback);
- ``index/``: the approximate index (``retriever.json`` + ``index.faiss``) when the backend is one;
  exact backends search ``item_emb.npy`` itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "seqrec-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FILES = {"onnx": "encoder.onnx", "torchscript": "encoder.pt"}
ITEM_EMB = "item_emb.npy"
ITEM_IDS = "item_ids.parquet"
POPULARITY = "popularity.npy"
INDEX_DIR = "index"
INPUT_NAME, OUTPUT_NAME = "items", "user"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` but the manifest, as sorted POSIX paths relative to ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != MANIFEST)
