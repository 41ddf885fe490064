"""One virtual environment per peer library, created on first use under a cache directory.

Each environment gets ``torch==2.13.0`` first (the CPU wheel; any other torch would pull a
multi-GB CUDA build) and every later install runs with a constraints file pinning it, so a peer
that demands another torch fails to install instead of replacing it. The peer's own pins are in
``PEERS``; the versions pip resolved are read back with ``versions(lib)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seqrec.errors import SeqrecError, shorten

TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Peer:
    """A peer library: its name in the results, the pip requirements, the runner script, and the
    distributions whose versions are recorded."""

    name: str
    requirements: tuple[str, ...]
    runner: str
    dists: tuple[str, ...]


PEERS: dict[str, Peer] = {
    # pyarrow reads the exported parquet files; pyarrow 26 needs numpy 2, rectools pins numpy 1.
    # recbole: pandas 3's copy-on-write turns its fillna(inplace=True) into a no-op.
    "recbole": Peer("recbole", ("recbole==1.2.1", "pandas<3", "pyarrow"), "run_recbole.py",
                    ("recbole", "torch", "numpy", "pandas")),
    "rectools": Peer("rectools", ("rectools[torch]==0.19.0", "pyarrow==21.0.0"), "run_rectools.py",
                     ("rectools", "torch", "pytorch-lightning", "numpy", "pandas")),
    "replay": Peer("replay", ("replay-rec[torch]==0.22.0", "pyarrow"), "run_replay.py",
                   ("replay-rec", "torch", "lightning", "numpy", "pandas")),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where peer environments live: ``cache_dir``, else ``$SEQREC_PEERS_CACHE``, else
    ``~/.cache/seqrec/peers``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SEQREC_PEERS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "seqrec" / "peers"


def env_python(lib: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The interpreter of ``lib``'s environment (it may not exist yet)."""
    return cache_root(cache_dir) / lib / "bin" / "python"


def is_ready(lib: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when ``lib``'s environment finished installing (its ``versions.json`` is written last)."""
    return (cache_root(cache_dir) / lib / "versions.json").exists()


def _pip(python: Path, args: list[str], log: Callable[[str], None], logfile: Path) -> None:
    cmd = [str(python), "-m", "pip", "install", "--no-input", *args]
    log(f"  {' '.join(cmd[3:])}")
    with open(logfile, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = logfile.read_text().strip().splitlines()[-1:] or ["?"]
        raise SeqrecError(f"pip install {' '.join(args)} failed (see {logfile}): {shorten(tail[0], 200)}")


def ensure_env(lib: str, cache_dir: str | os.PathLike | None = None,
               log: Callable[[str], None] = print) -> Path:
    """Create ``lib``'s environment if it is not ready -> its python. SeqrecError when pip fails
    (the half-made environment is left for inspection and rebuilt on the next call)."""
    peer = PEERS[lib]
    root = cache_root(cache_dir) / lib
    python = root / "bin" / "python"
    if is_ready(lib, cache_dir) and versions(lib, cache_dir).get("requirements") == list(peer.requirements):
        return python
    log(f"preparing the {lib} environment in {root} (first use or changed pins)")
    root.mkdir(parents=True, exist_ok=True)
    logfile = root / "install.log"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    constraints = root / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    _pip(python, [TORCH], log, logfile)
    _pip(python, ["-c", str(constraints), *peer.requirements], log, logfile)
    found = versions_of(python, peer.dists)
    if found.get("torch", "").split("+")[0] != TORCH.split("==")[1]:
        raise SeqrecError(f"{lib}: torch became {found.get('torch')} in {root}, not {TORCH}")
    found["requirements"] = list(peer.requirements)  # a changed pin reinstalls
    (root / "versions.json").write_text(json.dumps(found, indent=1) + "\n")
    return python


def versions_of(python: Path, dists: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``dists`` in the environment of ``python`` (missing ones left out)."""
    code = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor d in sys.argv[1:]:\n"
            "    try: out[d] = metadata.version(d)\n    except metadata.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    res = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def versions(lib: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """The versions recorded when ``lib``'s environment was made ({} when it is not ready)."""
    path = cache_root(cache_dir) / lib / "versions.json"
    return json.loads(path.read_text()) if path.exists() else {}
