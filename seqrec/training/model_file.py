"""``model.pt``: the trained weights with what they were trained on (catalog size, data fingerprint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqrec.errors import SeqrecError, shorten
from seqrec.training.checkpoint import check_compatible, load_checkpoint, save_checkpoint


def save_model(path: Path, model: torch.nn.Module, data: Any, name: str) -> None:
    """Write ``model``'s state dict to ``path`` atomically with a checksum (``checkpoint.py``), tagged
    with ``data``'s catalog and fingerprint."""
    from seqrec import __version__

    state = {"meta": {"version": __version__, "fingerprint": data.meta.get("fingerprint", ""),
                      "n_items": data.n_items, "model": name},
             "model": model.state_dict()}
    save_checkpoint(state, path)


def load_model(path: Path, model: torch.nn.Module, data: Any, config_path: Path) -> torch.nn.Module:
    """Load ``path`` into ``model`` (built from ``config_path``'s model section) -> the model in eval mode.
    Refuses a damaged file, weights trained on other data or for another architecture (one line)."""
    ck = load_checkpoint(path)
    check_compatible(ck, data.meta.get("fingerprint", ""), data.n_items, path)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, TypeError, AttributeError) as e:  # shapes/keys differ from config.yaml's model
        msg = shorten(e)
        raise SeqrecError(f"{path} does not fit the model in {config_path} ({msg})") from None
    return model.eval()
