"""Atomic file output: write to a temp file in the same directory, fsync, rename.

A crash while writing never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqrec.errors import SeqrecError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the mode open() would give
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def temp_dir_next_to(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden directory beside ``path`` (to be renamed over it) with the mode mkdir would give
    (mkdtemp makes 0700 directories, which would leave a finished output unreadable to others)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


_HELD: dict[Path, int] = {}  # run dirs this process holds the lock of -> nesting depth


@contextlib.contextmanager
def run_lock(run: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on run directory ``run`` (``RUN/.lock``, flock) while training it, so a
    second ``seqrec fit --resume/--overwrite`` of the same directory fails at once instead of two
    processes writing one run. Re-entrant within a process; released when the process dies."""
    run = Path(run).resolve()
    if run in _HELD:
        _HELD[run] += 1
        try:
            yield
        finally:
            _HELD[run] -= 1
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        run.mkdir(parents=True, exist_ok=True)
        f = open(run / ".lock", "a+")  # noqa: SIM115 - held for the whole block
    except OSError as e:
        raise SeqrecError(f"run directory {run} is not writable: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        who = f.read().strip()
        f.close()
        pid = f" (pid {who})" if who.isdigit() else ""
        raise SeqrecError(f"run directory {run} is in use by another seqrec process{pid}; "
                          "wait for it to finish or use another --out") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    _HELD[run] = 1
    try:
        yield
    finally:
        del _HELD[run]
        f.close()


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
