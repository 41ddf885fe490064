"""The run directory: one object owns its layout, its lock and its creation.

    RUN/
      config.yaml         resolved configuration (written first)
      data/               the run's prepared copy of the data (meta.json, CSR arrays)
      metrics.jsonl       one record per epoch
      checkpoints/        last.pt (full training state), prev.pt (the one before), best.pt
      model.pt            the trained weights (written when training ends)
      train_info.json     timings, best epoch, why training stopped
      results.json        valid/test metrics (``seqrec fit``)
      baseline_pop.json   the popularity baseline's test metrics
      index/<backend>/    retrieval indexes built by ``seqrec index build``
      .lock               held (flock) by the one process writing the run

Nothing here imports above ``seqrec.io``: the trainer, the API, the CLI and index building all use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from seqrec.errors import SeqrecError
from seqrec.io import atomic_path, run_lock, write_json, write_text

MIN_FREE_MB = 50


class RunDir:
    """Paths and life cycle of one run directory (nothing is created until ``create``/``lock``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------- layout
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def prev(self) -> Path:
        return self.checkpoints / "prev.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def train_info(self) -> Path:
        return self.path / "train_info.json"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def baseline(self) -> Path:
        return self.path / "baseline_pop.json"

    def index(self, backend: str) -> Path:
        return self.path / "index" / backend

    # ---------------------------------------------------------------- state
    def is_run(self) -> bool:
        """A seqrec run (finished or not): it has a config.yaml."""
        return self.config.is_file()

    def missing(self) -> list[str]:
        """What a loadable model directory lacks (config.yaml, model.pt, data/)."""
        return [p.name for p in (self.config, self.model, self.data) if not p.exists()]

    def has_data(self) -> bool:
        return (self.data / "meta.json").exists()

    def read_config(self) -> dict[str, Any]:
        """The run's config tree (keys renamed since it was written are read under their new names)."""
        from seqrec.config import read_yaml, upgrade_saved

        return upgrade_saved(read_yaml(self.config))

    def write_config(self, tree: dict[str, Any]) -> None:
        write_text(self.config, yaml.safe_dump(tree, sort_keys=False))

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    # ---------------------------------------------------------------- life cycle
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run's lock (one process per run; re-entrant within a process)."""
        with run_lock(self.path):
            yield self

    @contextlib.contextmanager
    def create(self, overwrite: bool = False) -> Iterator[RunDir]:
        """Create the directory (validated config in hand), lock it, and yield it.

        An existing non-empty directory is refused unless ``overwrite`` (then emptied). If the block
        fails before the first checkpoint exists, the directory is removed again (or emptied, when
        it existed before), so a failed setup leaves nothing behind.
        """
        existed = self.path.exists()
        if existed and not self.path.is_dir():
            raise SeqrecError(f"--out {self.path} exists and is not a directory")
        if existed and any(c.name != ".lock" for c in self.path.iterdir()) and not overwrite:
            raise SeqrecError(f"run directory {self.path} already exists and is not empty; pass --overwrite "
                              f"to replace it or --resume {self.path} to continue it")
        with self.lock():
            try:
                self._empty()
                self._check_writable()
                yield self
            except BaseException:
                if not self.last.exists():
                    self._empty()
                    if not existed:
                        with contextlib.suppress(OSError):
                            (self.path / ".lock").unlink()
                            self.path.rmdir()
                raise

    @contextlib.contextmanager
    def restored_on_failure(self, *files: Path) -> Iterator[None]:
        """Put ``files`` back as they are now if the block fails before a new ``last.pt`` is written
        (a resume refused in setup leaves the run exactly as it was)."""
        saved = {f: f.read_bytes() for f in files if f.exists()}
        before = self.last.stat().st_mtime_ns if self.last.exists() else None
        try:
            yield
        except BaseException:
            if (self.last.stat().st_mtime_ns if self.last.exists() else None) == before:
                for f, data in saved.items():
                    with atomic_path(f) as tmp:
                        tmp.write_bytes(data)
            raise

    def _empty(self) -> None:
        for child in self.path.iterdir():  # everything but the lock this process holds
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def _check_writable(self) -> None:
        try:
            probe = self.path / ".write-test"
            probe.write_bytes(b"x" * 4096)
            probe.unlink()
        except OSError as e:
            raise SeqrecError(f"run directory {self.path} is not writable: {e.strerror or e}") from None
        free_mb = shutil.disk_usage(self.path).free / 2**20
        if free_mb < MIN_FREE_MB:
            raise SeqrecError(f"only {free_mb:.0f} MB free on the disk of {self.path}; "
                              f"need at least {MIN_FREE_MB} MB for checkpoints")
