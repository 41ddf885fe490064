"""Named datasets: YAML cards in ``datasets/`` (shipped in the wheel as ``seqrec/datasets``).

A card lists candidate files under the data directory, tried in order; the first that exists is read
with its own format and default preprocessing. If none exists, the card's official file is downloaded
(progress bar, checksum check, zip member extraction). Data directory: ``data_dir`` argument, else env
``SEQREC_DATA``, else ``$XDG_CACHE_HOME/seqrec`` (``~/.cache/seqrec``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

from seqrec.errors import DataError
from seqrec.io import atomic_path


def cards_dir() -> Path:
    """Directory holding the cards: the packaged ``seqrec/datasets`` (a symlink to the top-level folder
    in a source checkout; a copy in a wheel)."""
    packaged = Path(__file__).resolve().parents[1] / "datasets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "datasets"


@functools.lru_cache(maxsize=1)
def all_cards() -> dict[str, dict[str, Any]]:
    """name -> card, for every ``*.yaml`` card."""
    out = {}
    for f in sorted(cards_dir().glob("*.yaml")):
        card = yaml.safe_load(f.read_text())
        out[card["name"]] = card
    return out


def get_card(name: str) -> dict[str, Any]:
    from seqrec.registry import did_you_mean

    cards = all_cards()
    if name not in cards:
        raise DataError(
            f"unknown dataset {name!r}{did_you_mean(name, cards)}: not a file, a prepared directory or a dataset name "
            f"(known: {', '.join(sorted(cards))})"
        )
    return cards[name]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where named datasets live: ``data_dir``, else $SEQREC_DATA, else the user cache dir."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("SEQREC_DATA"):
        return Path(os.environ["SEQREC_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "seqrec"


def resolve(
    card: dict[str, Any], data_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[Path, dict[str, Any]]:
    """First existing candidate file of ``card`` under the data root -> (path, entry); else download."""
    root = data_root(data_dir)
    for entry in card.get("files", []):
        p = root / entry["path"]
        if p.is_file():
            return p, entry
    official = next((e for e in card.get("files", []) if e.get("url")), None)
    if official is None:
        wanted = " or ".join(str(root / e["path"]) for e in card.get("files", []))
        raise DataError(f"{card['name']}: no data file found; put it at {wanted}")
    target = root / official["path"]
    if not download:
        raise DataError(f"{card['name']}: {target} is missing")
    fetch(official, target, card["name"])
    return target, official


def fetch(entry: dict[str, Any], target: Path, name: str) -> None:
    """Download ``entry['url']`` (checksum-checked; extract ``entry['member']`` from a zip) to ``target``."""
    url = entry["url"]
    hint = (
        f"download {url}"
        + (f", extract {entry['member']}" if entry.get("member") else "")
        + f" and put it at {target} (or pass --data-dir / set SEQREC_DATA)"
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{name}: cannot create {target.parent} ({e.strerror}); {hint}") from None
    archive = target.parent / ("." + url.rsplit("/", 1)[-1] + ".part")
    try:
        _download(url, archive)
        digest = entry.get("checksum")
        if digest:
            algo, want = digest.split(":", 1)
            got = _hash(archive, algo)
            if got != want:
                raise DataError(
                    f"{name}: checksum mismatch for {url} ({algo} {got}, expected {want}); {hint}"
                )
        with atomic_path(target) as tmp:
            if entry.get("member"):
                try:
                    with (
                        zipfile.ZipFile(archive) as z,
                        z.open(entry["member"]) as src,
                        open(tmp, "wb") as dst,
                    ):
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (zipfile.BadZipFile, KeyError) as e:
                    raise DataError(f"{name}: {url} is not the expected zip ({e}); {hint}") from None
            else:
                shutil.copyfile(archive, tmp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise DataError(f"{name}: cannot download {url} ({reason}); {hint}") from None
    finally:
        archive.unlink(missing_ok=True)


def _download(url: str, dest: Path) -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=30) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def _hash(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
